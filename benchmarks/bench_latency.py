"""B2: latency-bound envs, where overlapping episodes is the point.

1. ``ScriptedEnv(step_latency=5 ms)``, 64 episodes x 50 steps, concurrency 64:
   the runner against the hand-written anyio loop (in this process, same
   policy object, fresh envs made inside each timed run), and against the
   ideal 0.25 s (50 x 5 ms).
2. The same work on gymnasium's vector envs, with ``SleepEnv``
   (``time.sleep(5 ms)`` per step): ``AsyncVectorEnv(8)``,
   ``AsyncVectorEnv(32)`` and ``SyncVectorEnv(8)`` against the runner, each
   repetition in a fresh subprocess whose whole process tree's PSS is sampled.
3. Log-normal step latencies (medians 10 / 50 / 200 ms, sigma 0.5) at
   several concurrencies: steps/s and the observed p50/p99 step latency,
   runner against the hand-written loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from functools import partial

import numpy as np
from gymnasium import spaces

from async_rollout import RandomPolicy, RolloutRunner
from async_rollout.testing import ScriptedEnv

from ._common import (
    Row,
    Section,
    Settings,
    at_least,
    at_most,
    interleaved,
    median,
    mib,
    run_anyio,
    run_child,
    spread,
)
from ._envs import LognormalEnv, anyio_loop, contract_seeds

EPISODES, LENGTH, LATENCY, CONCURRENCY = 64, 50, 0.005, 64
IDEAL_S = LENGTH * LATENCY
SIGMA = 0.5


def _fixed_rows(settings: Settings, section: Section) -> None:
    env_seeds, agent_seeds = contract_seeds(EPISODES)
    policy = RandomPolicy(spaces.Discrete(2))
    make = partial(ScriptedEnv, LENGTH, step_latency=LATENCY)

    async def runner() -> float:
        t0 = time.perf_counter()
        result = await RolloutRunner(EPISODES, concurrency=CONCURRENCY).run_with(make, agent=policy)
        elapsed = time.perf_counter() - t0
        assert result.summary["total_steps"] == EPISODES * LENGTH
        return elapsed

    async def hand() -> float:
        t0 = time.perf_counter()
        await anyio_loop(make, policy, env_seeds, agent_seeds, CONCURRENCY)
        return time.perf_counter() - t0

    got = interleaved(
        {
            "runner": lambda: run_anyio(runner, "asyncio"),
            "anyio": lambda: run_anyio(hand, "asyncio"),
        },
        max(settings.reps, 7),
        log=settings.log,
        label="B2 5ms",
    )
    r, a = median(got["runner"]), median(got["anyio"])
    what = f"{EPISODES} eps x {LENGTH} steps x 5 ms, c={CONCURRENCY}"
    section.rows += [
        Row(
            "B2",
            f"latency {what}: runner vs anyio loop",
            f"{r:.3f} vs {a:.3f} s ({spread(got['runner'])}/{spread(got['anyio'])})",
            r / a,
            "<= 1.2x",
            at_most(r / a, 1.2),
        ),
        Row(
            "B2",
            f"latency {what}: runner vs ideal {IDEAL_S:.2f} s",
            f"{r:.3f} vs {IDEAL_S:.2f} s (anyio loop {a / IDEAL_S:.2f}x ideal)",
            r / IDEAL_S,
        ),
    ]


VECTOR_CANDIDATES = {
    "runner": {"kind": "runner", "concurrency": CONCURRENCY},
    "AsyncVectorEnv(8)": {"kind": "async", "num_envs": 8},
    "AsyncVectorEnv(32)": {"kind": "async", "num_envs": 32},
    "SyncVectorEnv(8)": {"kind": "sync", "num_envs": 8},
}


def _vector_rows(settings: Settings, section: Section) -> None:
    episodes = 16 if settings.quick else EPISODES
    base = {"episodes": episodes, "length": LENGTH, "latency": LATENCY}
    if settings.quick:
        cands = {k: {**v} for k, v in VECTOR_CANDIDATES.items() if k != "AsyncVectorEnv(32)"}
        cands["runner"]["concurrency"] = episodes
    else:
        cands = VECTOR_CANDIDATES
    pss: dict[str, list[int]] = {name: [] for name in cands}
    procs: dict[str, int] = {}

    def child(name: str) -> Callable[[], float]:
        def run() -> float:
            answer = run_child("vector", {**base, **cands[name]}, sample_pss=True)
            pss[name].append(int(answer["pss_kib"]))
            procs[name] = int(answer["pss_procs"])
            return float(answer["wall_s"])

        return run

    got = interleaved(
        {name: child(name) for name in cands},
        settings.reps,
        warmup=0,
        log=settings.log,
        label="B2 vector",
    )
    r = median(got["runner"])
    r_pss = median(pss["runner"])
    targets = {
        "AsyncVectorEnv(8)": ("runner >= 5x faster", 5.0),
        "AsyncVectorEnv(32)": ("runner >= 2.5x faster", 2.5),
    }
    for name in cands:
        if name == "runner":
            continue
        t, m = median(got[name]), median(pss[name])
        target, limit = targets.get(name, ("", 0.0))
        section.rows.append(
            Row(
                "B2",
                f"{episodes} eps x {LENGTH} steps x 5 ms: {name} time / runner time",
                f"{t:.3f} vs {r:.3f} s",
                t / r,
                target,
                at_least(t / r, limit) if target else None,
            )
        )
        mem_target = "<= 0.33x" if name == "AsyncVectorEnv(32)" else ""
        section.rows.append(
            Row(
                "B2",
                f"{episodes} eps x {LENGTH} steps x 5 ms: runner PSS / {name} PSS (process tree)",
                f"{mib(r_pss)} ({procs['runner']} proc) vs {mib(m)} ({procs[name]} procs)",
                r_pss / m,
                mem_target,
                at_most(r_pss / m, 1 / 3) if mem_target else None,
            )
        )


def _lognormal_plan(quick: bool) -> list[tuple[float, int, tuple[int, ...]]]:
    """(median latency, steps per episode, concurrencies); one episode per task."""
    if quick:
        return [(0.010, 5, (16, 256)), (0.050, 2, (64,)), (0.200, 1, (64,))]
    return [
        (0.010, 20, (16, 256, 2048)),
        (0.050, 6, (16, 256, 2048)),
        (0.200, 2, (16, 256, 2048)),
    ]


def _lognormal_row(settings: Settings, median_s: float, length: int, concurrency: int) -> Row:
    n = concurrency
    env_seeds, agent_seeds = contract_seeds(n)
    policy = RandomPolicy(spaces.Discrete(2))
    observed: dict[str, list[float]] = {"runner": [], "anyio": []}
    latencies: dict[str, list[np.ndarray]] = {"runner": [], "anyio": []}

    def factory(name: str) -> Callable[[], LognormalEnv]:
        return partial(LognormalEnv, length, median_s, SIGMA, observed[name])

    async def runner() -> float:
        t0 = time.perf_counter()
        result = await RolloutRunner(n, concurrency=concurrency).run_with(
            factory("runner"), agent=policy
        )
        elapsed = time.perf_counter() - t0
        assert result.summary["total_steps"] == n * length
        return elapsed

    async def hand() -> float:
        t0 = time.perf_counter()
        await anyio_loop(factory("anyio"), policy, env_seeds, agent_seeds, concurrency)
        return time.perf_counter() - t0

    cpu: dict[str, list[float]] = {"runner": [], "anyio": []}

    def keep(name: str, fn: Callable[[], Awaitable[float]]) -> Callable[[], float]:
        def run() -> float:
            observed[name].clear()
            cpu0 = time.process_time()
            elapsed: float = run_anyio(fn, "asyncio")
            cpu[name].append(time.process_time() - cpu0)
            latencies[name].append(np.asarray(observed[name]))
            return elapsed

        return run

    got = interleaved(
        {"runner": keep("runner", runner), "anyio": keep("anyio", hand)},
        settings.reps,
        warmup=0,
        log=settings.log,
        label=f"B2 lognormal {median_s * 1e3:.0f}ms c={concurrency}",
    )
    r, a = median(got["runner"]), median(got["anyio"])
    steps = n * length
    p50, p99 = np.percentile(np.concatenate(latencies["runner"]) * 1e3, [50, 99])
    h50, h99 = np.percentile(np.concatenate(latencies["anyio"]) * 1e3, [50, 99])
    met = at_most(r / a, 1.2)
    busy = {name: median(cpu[name]) / median(got[name]) for name in cpu}
    cpu_us = {name: median(cpu[name]) / steps * 1e6 for name in cpu}
    # What the envs alone would allow: every task waiting on its env all the time.
    demand = concurrency / (median_s * math.exp(SIGMA**2 / 2))
    return Row(
        "B2",
        f"log-normal median {median_s * 1e3:.0f} ms, c={concurrency}, "
        f"{n} eps x {length} steps: runner vs anyio loop",
        f"{steps / r:,.0f} vs {steps / a:,.0f} steps/s; p50/p99 "
        f"{p50:.1f}/{p99:.1f} vs {h50:.1f}/{h99:.1f} ms; CPU busy "
        f"{busy['runner']:.0%} vs {busy['anyio']:.0%} of the wall time",
        r / a,
        "<= 1.2x",
        met,
        ""
        if met is not False
        else f"cause: CPU-bound, not latency-bound, at this concurrency: the envs would allow "
        f"{demand:,.0f} steps/s, the anyio loop's one core delivers {steps / a:,.0f} "
        f"({busy['anyio']:.0%} busy), so the ratio is the CPU per step "
        f"({cpu_us['runner']:.1f} vs {cpu_us['anyio']:.1f} us, as in B1)",
    )


def _lognormal_rows(settings: Settings, section: Section) -> None:
    for median_s, length, concurrencies in _lognormal_plan(settings.quick):
        for concurrency in concurrencies:
            section.rows.append(_lognormal_row(settings, median_s, length, concurrency))


def run(settings: Settings) -> Section:
    section = Section("B2", "Latency-bound envs")
    _fixed_rows(settings, section)
    _vector_rows(settings, section)
    _lognormal_rows(settings, section)
    section.notes += [
        "5 ms rows: ScriptedEnv(50, step_latency=0.005) made by each loop inside its timed run, "
        "RandomPolicy, asyncio backend; ratio = median wall time runner / anyio loop.",
        "Vector-env rows: every repetition is a fresh subprocess (interleaved); wall time inside "
        "it: the runner's whole run_with (env creation included), the vector env's reset + "
        "steps (worker start-up and close excluded). Gymnasium side: SleepEnv, a gymnasium.Env "
        "that time.sleeps 5 ms per step (benchmarks/_envs.py), same episode count and length "
        "(autoreset calls are not counted as steps). PSS: sum over the child and its "
        "descendants of /proc/<pid>/smaps_rollup, sampled every 20 ms from the parent; peak "
        "kept (no psutil).",
        "Log-normal rows: LognormalEnv draws each step's latency from the episode's seed "
        f"(log-normal, sigma {SIGMA}), so both loops see the same latencies; one episode per "
        "task; p50/p99 are the step latencies observed inside the env (call to return, "
        "scheduling delay included), pooled over repetitions; ratio = median wall time.",
    ]
    return section
