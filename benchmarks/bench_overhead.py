"""B1: per-step overhead of the runner on an env that does no work but yields once a step.

Candidates, on the same ``NullEnv`` objects and the same ``ConstantPolicy``
object, with the same per-episode seeds and generators:

- ``runner``: ``RolloutRunner(n, concurrency=c).run_with(factory, agent=policy)``
  (the factory hands worker ``k`` the env ``envs[k]``);
- ``anyio``: the minimal hand-written anyio loop (``_envs.anyio_loop``);
- ``asyncio``: the same loop on bare asyncio with ``asyncio.TaskGroup``
  (not on trio).

Peak RSS of 10,000 in-flight episodes is measured in fresh subprocesses.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from async_rollout import RolloutRunner

from ._common import (
    Row,
    Section,
    Settings,
    at_most,
    interleaved,
    median,
    mib,
    run_anyio,
    run_asyncio,
    run_child,
    spread,
)
from ._envs import ConstantPolicy, NullEnv, anyio_loop, asyncio_loop, contract_seeds

CONCURRENCY = (1, 100, 1_000, 10_000)
RSS_CONCURRENCY = 10_000


def plan(concurrency: int, quick: bool) -> tuple[int, int]:
    """(episode length, episodes) for one repetition: about 50k-100k steps, 0.2-2 s."""
    if quick:
        return {1: (50, 20), 100: (20, 200), 1_000: (5, 1_000), 10_000: (2, 10_000)}[concurrency]
    return {1: (50, 400), 100: (50, 1_000), 1_000: (50, 1_000), 10_000: (10, 10_000)}[concurrency]


class GcTimer:
    """Time spent in the garbage collector while active (``gc.callbacks``), per candidate."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self._started = 0.0
        self._total = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._total += time.perf_counter() - self._started

    def timed(self, name: str, run: Callable[[], float]) -> Callable[[], float]:
        """``run`` with the collector's time during it kept under ``name``."""

        def timed_run() -> float:
            self._total = 0.0
            gc.callbacks.append(self._callback)
            try:
                return run()
            finally:
                gc.callbacks.remove(self._callback)
                self.seconds.setdefault(name, []).append(self._total)

        return timed_run


def candidates(
    backend: str, concurrency: int, quick: bool, gc_timer: GcTimer | None = None
) -> dict[str, Callable[[], float]]:
    """Each candidate runs the whole rollout once and returns µs per step."""
    length, n = plan(concurrency, quick)
    steps = n * length
    envs = [NullEnv(length) for _ in range(concurrency)]
    policy = ConstantPolicy()
    env_seeds, agent_seeds = contract_seeds(n)

    def factory(worker_index: int) -> NullEnv:
        return envs[worker_index]

    async def runner() -> float:
        t0 = time.process_time()
        result = await RolloutRunner(n, concurrency=concurrency).run_with(factory, agent=policy)
        elapsed = time.process_time() - t0
        assert result.summary["total_steps"] == steps, result.summary
        assert [ep.env_seed for ep in result.episodes] == env_seeds
        return elapsed

    async def hand_anyio() -> float:
        t0 = time.process_time()
        returns = await anyio_loop(envs, policy, env_seeds, agent_seeds, concurrency)
        elapsed = time.process_time() - t0
        assert sum(returns) == steps
        return elapsed

    async def hand_asyncio() -> float:
        t0 = time.process_time()
        returns = await asyncio_loop(envs, policy, env_seeds, agent_seeds, concurrency)
        elapsed = time.process_time() - t0
        assert sum(returns) == steps
        return elapsed

    def per_step(seconds: float) -> float:
        return seconds / steps * 1e6

    out = {
        "runner": lambda: per_step(run_anyio(runner, backend)),
        "anyio": lambda: per_step(run_anyio(hand_anyio, backend)),
    }
    if backend != "trio":
        out["asyncio"] = lambda: per_step(run_asyncio(hand_asyncio, backend))
    if gc_timer is not None:
        out = {name: gc_timer.timed(name, run) for name, run in out.items()}
    return out


def _timing_rows(settings: Settings, section: Section) -> None:
    for backend in settings.backends:
        for concurrency in CONCURRENCY:
            length, n = plan(concurrency, settings.quick)
            label = f"B1 {backend} c={concurrency}"
            gc_timer = GcTimer()
            got = interleaved(
                candidates(backend, concurrency, settings.quick, gc_timer),
                settings.reps,
                warmup=1 if concurrency < 10_000 else 0,
                log=settings.log,
                label=label,
            )
            r, a = median(got["runner"]), median(got["anyio"])
            ratio = r / a
            met = at_most(ratio, 1.5)
            # The warm-up repetition is timed too; its collector time is dropped.
            gc_us = {
                name: median(times[-len(got[name]) :]) / (n * length) * 1e6
                for name, times in gc_timer.seconds.items()
            }
            what = f"{backend}, c={concurrency:,}, {n:,} eps x {length} steps"
            section.rows.append(
                Row(
                    "B1",
                    f"overhead {what}: runner vs anyio loop",
                    f"{r:.2f} vs {a:.2f} CPU us/step "
                    f"({spread(got['runner'])}/{spread(got['anyio'])}); "
                    f"garbage collector {gc_us['runner']:.2f} vs {gc_us['anyio']:.2f}",
                    ratio,
                    "<= 1.5x",
                    met,
                    ""
                    if met is not False
                    else f"cause: the runner's own work per step and per episode, {r - a:.2f} "
                    f"us/step more, {gc_us['runner'] - gc_us['anyio']:.2f} of it in the garbage "
                    "collector, which walks every live episode's state "
                    f"({(r - gc_us['runner']) / (a - gc_us['anyio']):.2f}x without it; "
                    "PROFILE.md has the breakdown)",
                )
            )
            if "asyncio" in got:
                b = median(got["asyncio"])
                section.rows.append(
                    Row(
                        "B1",
                        f"overhead {what}: runner vs bare asyncio loop",
                        f"{r:.2f} vs {b:.2f} CPU us/step (anyio loop/asyncio {a / b:.2f}x)",
                        r / b,
                    )
                )


def _rss_row(settings: Settings, backend: str) -> Row:
    length = 2
    args = {"backend": backend, "concurrency": RSS_CONCURRENCY, "episode_length": length}
    answers: dict[str, list[dict[str, float]]] = {"runner": [], "anyio": []}

    def child(name: str) -> Callable[[], float]:
        def run() -> float:
            answer = run_child("rss", {**args, "candidate": name})
            answers[name].append(answer)
            return float(answer["peak_kib"])

        return run

    got = interleaved(
        {name: child(name) for name in answers},
        settings.reps,
        warmup=0,
        log=settings.log,
        label=f"B1 RSS {backend}",
    )
    r, a = median(got["runner"]), median(got["anyio"])
    before = median(x["before_kib"] for x in answers["runner"] + answers["anyio"])
    per_episode = (r - before) / RSS_CONCURRENCY
    return Row(
        "B1",
        f"peak RSS, {backend}, {RSS_CONCURRENCY:,} eps in flight: runner vs anyio loop",
        f"{mib(r)} vs {mib(a)} (before the run {mib(before)}; "
        f"runner {per_episode:.1f} KiB/episode)",
        r / a,
        "runner < 1 GiB",
        r < 1024 * 1024,
    )


def run(settings: Settings) -> Section:
    section = Section("B1", "Overhead per step (env does no work, yields once a step)")
    _timing_rows(settings, section)
    section.rows += [_rss_row(settings, backend) for backend in settings.backends]
    section.notes.append(
        "Same NullEnv objects (constant observation, one anyio checkpoint per call), same "
        "ConstantPolicy object, same per-episode seeds and generators in every candidate. "
        "The runner derives its seeds itself (DESIGN.md's formula); the hand-written loops get "
        "the same seeds precomputed outside the timing. CPU us/step = CPU time of this "
        "process (time.process_time) over the whole rollout / env steps: every candidate is "
        "single-threaded and CPU-bound, and CPU time is what other load on this shared "
        "machine disturbs least (wall time swung +-50% between repetitions here). The bare "
        "asyncio loop sets sniffio's context variable as anyio.run does, so the env's anyio "
        "checkpoint costs the same in every loop. 'garbage collector': CPU us/step spent inside "
        "the collector's passes (timed with gc.callbacks; included in the total). Peak RSS: a "
        "fresh subprocess per repetition running 10,000 episodes of 2 steps at concurrency "
        "10,000; peak = VmHWM of "
        "/proc/self/status (getrusage's ru_maxrss is not clean in a child: Linux carries the "
        "forking parent's peak over exec), 'before the run' = after imports and after making "
        "the 10,000 NullEnvs."
    )
    return section
