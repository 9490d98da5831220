"""R: remote environments: what the wire costs, and what process offload buys.

Run by hand from the repository root: ``python -m benchmarks.bench_remote``
(``--quick`` for a smoke run). Prints one table; ``run(settings)`` returns the
same rows as a section of ``python -m benchmarks``.

1. Loopback round trip: a ``serve_env`` server in a subprocess serving
   ``ScriptedEnv`` (no latency), ``RemoteEnv`` clients in this process:
   steps/s of 1 session stepping alone, and of 64 sessions stepping at once.
2. Latency-bound: 64 episodes x 50 steps of ``ScriptedEnv(step_latency=5 ms)``
   at concurrency 64, served by a subprocess over TCP, against the same env
   in-process (the runner on both sides, interleaved repetitions).
3. CPU-bound: ``BurnEnv``, a gymnasium env burning ~1 ms of CPU per step
   (a calibrated pure-Python loop), on 2 cores: ``offload="process"`` at
   concurrency 2 and 4 against inline, and gymnasium's ``AsyncVectorEnv(2)``
   on the same env; each repetition in a fresh subprocess whose process tree's PSS is
   sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

import anyio
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from async_rollout import RandomPolicy, RolloutRunner, Sink
from async_rollout.remote import RemoteEnv, serve_env

from ._common import (
    ROOT,
    PssSampler,
    Row,
    Section,
    Settings,
    at_least,
    child_env,
    interleaved,
    median,
    mib,
    run_anyio,
    spread,
    table_lines,
)
from ._envs import WorkEnv

SCRIPTED = "async_rollout.testing.ScriptedEnv"
MODULE = "benchmarks.bench_remote"
EPISODES, LENGTH, LATENCY, CONCURRENCY = 64, 50, 0.005, 64


# --------------------------------------------------------------------------- the CPU-bound env


class BurnEnv(WorkEnv):
    """A gymnasium env whose step burns a fixed amount of CPU (``iterations`` of a Python loop).

    Observations and rewards come from the seeded generator, so inline and
    offloaded runs of the same seeds give the same episodes.
    """

    def __init__(self, iterations: int, episode_length: int = 200) -> None:
        super().__init__(episode_length)
        self.iterations = iterations

    def work(self) -> None:
        """Burn the CPU."""
        burn(self.iterations)


def burn(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i & 7
    return total


def calibrate(seconds: float = 0.001) -> int:
    """Iterations of ``burn`` that take ``seconds`` of CPU here (best of a few tries)."""
    n = 20_000
    best = float("inf")
    for _ in range(15):
        t0 = time.process_time()
        burn(n)
        best = min(best, time.process_time() - t0)
    return max(1, int(n * seconds / best))


# --------------------------------------------------------------------------- a server subprocess


async def _serve_forever(spec: dict[str, Any]) -> None:
    async with anyio.create_task_group() as tg:
        _, port = await tg.start(serve_env, spec)
        print(port, flush=True)


@contextmanager
def server_process(spec: dict[str, Any]) -> Iterator[int]:
    """A ``serve_env`` of ``spec`` in a subprocess on 127.0.0.1; yields its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULE, "--serve", json.dumps(spec)],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- 1. round trips


async def _step_loop(env: RemoteEnv, steps: int) -> None:
    for _ in range(steps):
        await env.step(0)


async def _sessions_rate(port: int, sessions: int, steps: int) -> float:
    envs = [RemoteEnv(port=port) for _ in range(sessions)]
    try:
        async with anyio.create_task_group() as tg:
            for env in envs:
                tg.start_soon(partial(env.reset, seed=0))
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for env in envs:
                tg.start_soon(_step_loop, env, steps)
        return sessions * steps / (time.perf_counter() - t0)
    finally:
        for env in envs:
            await env.close()


def _round_trip_rows(settings: Settings, section: Section) -> None:
    steps_one = 500 if settings.quick else 3000
    steps_many = 30 if settings.quick else 150
    spec = {"_target_": SCRIPTED, "episode_length": 10**9}
    with server_process(spec) as port:
        for backend in ("asyncio", "trio"):
            got = interleaved(
                {
                    "1": lambda b=backend: run_anyio(
                        partial(_sessions_rate, port, 1, steps_one), b
                    ),
                    "64": lambda b=backend: run_anyio(
                        partial(_sessions_rate, port, 64, steps_many), b
                    ),
                },
                settings.reps,
                log=settings.log,
                label=f"R round trip {backend}",
            )
            for sessions in ("1", "64"):
                rate = median(got[sessions])
                section.rows.append(
                    Row(
                        "R",
                        f"loopback TCP round trip, {sessions} session(s), {backend}",
                        f"{rate:,.0f} steps/s ({spread(got[sessions])}); {1e6 / rate:.0f} us/step",
                        None,
                    )
                )


# --------------------------------------------------------------------------- 2. latency-bound


def _latency_rows(settings: Settings, section: Section) -> None:
    episodes = 16 if settings.quick else EPISODES
    policy = RandomPolicy(spaces.Discrete(2))
    spec = {"_target_": SCRIPTED, "episode_length": LENGTH, "step_latency": LATENCY}

    with server_process(spec) as port:

        async def run(make: Any) -> float:
            t0 = time.perf_counter()
            runner = RolloutRunner(episodes, concurrency=min(CONCURRENCY, episodes))
            result = await runner.run_with(make, agent=policy)
            assert result.summary["total_steps"] == episodes * LENGTH, result.summary
            return time.perf_counter() - t0

        got = interleaved(
            {
                "remote": lambda: run_anyio(partial(run, lambda: RemoteEnv(port=port)), "asyncio"),
                "local": lambda: run_anyio(partial(run, spec), "asyncio"),
            },
            max(settings.reps, 5),
            log=settings.log,
            label="R latency",
        )
    r, loc = median(got["remote"]), median(got["local"])
    section.rows.append(
        Row(
            "R",
            f"{episodes} eps x {LENGTH} steps x 5 ms, c={min(CONCURRENCY, episodes)}: "
            "served remotely / in-process",
            f"{r:.3f} vs {loc:.3f} s ({spread(got['remote'])}/{spread(got['local'])})",
            r / loc,
        )
    )


# --------------------------------------------------------------------------- 3. CPU-bound


def _cpu_child(args: dict[str, Any]) -> dict[str, Any]:
    """One repetition of the CPU-bound comparison, in a fresh process."""
    spec = {"_target_": f"{MODULE}.BurnEnv", **args["env"]}
    episodes, length, kind = int(args["episodes"]), int(args["env"]["episode_length"]), args["kind"]
    concurrency = int(args.get("concurrency", 1))
    policy = RandomPolicy(spaces.Discrete(2))
    if kind == "vector":
        vec = gym.vector.AsyncVectorEnv([partial(BurnEnv, **args["env"])] * concurrency)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        vec.reset(seed=0)
        for _ in range(episodes * length // concurrency):
            vec.step(rng.integers(0, 2, size=concurrency))
        wall = time.perf_counter() - t0
        vec.close()
        return {"wall_s": wall, "startup_s": 0.0}

    async def main() -> dict[str, Any]:
        from async_rollout import env_factory

        startup = 0.0
        pids: list[int] = []
        if kind == "process":
            t0 = time.perf_counter()
            factory = env_factory(spec, offload="process")
            envs = [factory(k) for k in range(concurrency)]
            async with anyio.create_task_group() as tg:
                for env in envs:
                    tg.start_soon(env.connect)  # type: ignore[attr-defined]
            startup = time.perf_counter() - t0
            pids = [env.pid for env in envs]  # type: ignore[attr-defined]
            make: Any = lambda worker_index: envs[worker_index]  # noqa: E731
        else:
            make = spec
        children = _ChildrenCpu(pids)
        t0, cpu0 = time.perf_counter(), time.process_time()
        runner = RolloutRunner(episodes, concurrency=concurrency, sinks=[children])
        result = await runner.run_with(make, agent=policy)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        steps = episodes * length
        assert result.summary["total_steps"] == steps, result.summary
        returns = [e.total_reward for e in result.episodes]
        return {
            "wall_s": wall,
            "startup_s": startup,
            "returns": returns,
            "parent_us": cpu / steps * 1e6,
            "children_us": children.used() / steps * 1e6,
        }

    answer: dict[str, Any] = anyio.run(main)
    return answer


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _ChildrenCpu(Sink):
    """CPU time the env processes use during the run (read at each episode end, before close)."""

    def __init__(self, pids: list[int]) -> None:
        self.start = {pid: _cpu_seconds(pid) for pid in pids}
        self.last = dict(self.start)

    def on_episode_end(self, result: Any) -> None:
        for pid in self.last:
            with suppress(OSError):
                self.last[pid] = _cpu_seconds(pid)

    def used(self) -> float:
        return sum(self.last[pid] - self.start[pid] for pid in self.start)


def _run_cpu_child(args: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULE, "--child", json.dumps(args)],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    # Not every 20 ms as elsewhere: a sample of this process tree costs ~2 ms of CPU (smaps_rollup
    # of 3 processes), which at 20 ms took ~10% of a core from the candidates that use both
    # cores, and barely any from inline. PSS is flat after start-up: 4 samples a second find it.
    with PssSampler(proc.pid, interval=PSS_INTERVAL_S) as sampler:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the CPU benchmark child {args['kind']} failed")
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    answer["pss_kib"], answer["pss_procs"] = sampler.peak_kib, sampler.peak_procs
    return answer


def _parallel_ceiling(iterations: int, steps: int) -> float:
    """Wall time of 2 processes burning ``steps`` steps each, one after the other / at once.

    The best any offload can do on this machine right now: other load on a
    shared machine lowers it below 2.
    """
    code = f"from {MODULE} import burn\nfor _ in range({steps}): burn({iterations})"
    command = [sys.executable, "-c", code]
    t0 = time.perf_counter()
    for _ in range(2):
        subprocess.run(command, cwd=ROOT, env=child_env(), check=True)
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=ROOT, env=child_env()) for _ in range(2)]
    for proc in procs:
        proc.wait()
    return sequential / (time.perf_counter() - t0)


#: Seconds between PSS samples of a CPU-bound repetition's process tree.
PSS_INTERVAL_S = 0.25

CPU_CANDIDATES = {
    "inline": ("inline", 1),
    "process c=2": ("process", 2),
    "process c=4": ("process", 4),
    "AsyncVectorEnv(2)": ("vector", 2),
}


def _cpu_rows(settings: Settings, section: Section) -> None:
    iterations = calibrate()
    episodes = 8 if settings.quick else 16
    env = {"iterations": iterations, "episode_length": 200}
    extra: dict[str, list[dict[str, Any]]] = {name: [] for name in CPU_CANDIDATES}

    def candidate(name: str) -> Any:
        kind, concurrency = CPU_CANDIDATES[name]

        def run() -> float:
            answer = _run_cpu_child(
                {"kind": kind, "concurrency": concurrency, "episodes": episodes, "env": env}
            )
            extra[name].append(answer)
            return float(answer["wall_s"])

        return run

    got = interleaved(
        {name: candidate(name) for name in CPU_CANDIDATES},
        settings.reps,
        warmup=0,
        log=settings.log,
        label="R cpu",
    )
    wall = {name: median(got[name]) for name in CPU_CANDIDATES}
    pss = {name: median(a["pss_kib"] for a in extra[name]) for name in CPU_CANDIDATES}
    procs = {name: extra[name][-1]["pss_procs"] for name in CPU_CANDIDATES}
    inline = wall["inline"]
    reference = extra["inline"][0]["returns"]
    what = f"{episodes} eps x 200 steps x ~1 ms CPU, 2 cores"
    for name in ("process c=2", "process c=4"):
        startup = median(a["startup_s"] for a in extra[name])
        same = all(a["returns"] == reference for a in extra[name])
        section.rows += [
            Row(
                "R",
                f"{what}: inline / offload='process' {name[8:]}",
                f"{inline:.2f} vs {wall[name]:.2f} s ({spread(got['inline'])}/"
                f"{spread(got[name])}); start-up {startup:.2f} s apart; same returns: {same}",
                inline / wall[name],
                ">= 1.6x",
                at_least(inline / wall[name], 1.6),
            ),
            Row(
                "R",
                f"{what}: inline / offload='process' {name[8:]}, start-up included",
                f"{inline:.2f} vs {wall[name] + startup:.2f} s",
                inline / (wall[name] + startup),
            ),
        ]
    cpu_text = "; ".join(
        f"{name}: parent {median(a['parent_us'] for a in extra[name]):.0f}"
        + (
            f" + envs {median(a['children_us'] for a in extra[name]):.0f}"
            if kind != "inline"
            else ""
        )
        for name, (kind, _) in CPU_CANDIDATES.items()
        if kind != "vector"
    )
    section.rows.append(Row("R", f"{what}: CPU us per step", cpu_text, None))
    vector = wall["AsyncVectorEnv(2)"]
    ceiling = median(_parallel_ceiling(iterations, 800) for _ in range(settings.reps))
    section.rows += [
        Row(
            "R",
            "control: 2 burning processes one after the other / at once (the ceiling)",
            "how much of 2 cores this run could get",
            ceiling,
        ),
        Row(
            "R",
            f"{what}: inline / AsyncVectorEnv(2)",
            f"{inline:.2f} vs {vector:.2f} s (worker start-up excluded)",
            inline / vector,
        ),
        Row(
            "R",
            f"{what}: PSS offload='process' c=2 / AsyncVectorEnv(2) (process tree)",
            f"{mib(pss['process c=2'])} ({procs['process c=2']} procs) vs "
            f"{mib(pss['AsyncVectorEnv(2)'])} ({procs['AsyncVectorEnv(2)']} procs); "
            f"inline {mib(pss['inline'])}",
            pss["process c=2"] / pss["AsyncVectorEnv(2)"],
        ),
    ]


# --------------------------------------------------------------------------- the section


SECTIONS = {"round-trip": _round_trip_rows, "latency": _latency_rows, "cpu": _cpu_rows}


def run(settings: Settings, sections: tuple[str, ...] = tuple(SECTIONS)) -> Section:
    section = Section("R", "Remote environments and process offload")
    for name in sections:
        SECTIONS[name](settings, section)
    section.notes += [
        "Round trips: the server is a subprocess (serve_env of ScriptedEnv without latency); "
        "the clients are RemoteEnv in this process, connected and reset before the clock "
        "starts; rate = steps / wall time of the stepping alone, median of repetitions.",
        "Latency: the runner with RandomPolicy on both sides; remote = one RemoteEnv session per "
        "worker on a serve_env subprocess (connections included in the time), in-process = "
        "ScriptedEnv made by the runner; asyncio backend.",
        "CPU: BurnEnv burns a pure-Python loop calibrated to ~1 ms of CPU on this machine; each "
        "repetition is a fresh subprocess (interleaved), PSS sampled every 250 ms over its "
        "process tree (a sample costs ~2 ms of CPU there: every 20 ms it slowed the candidates "
        "that use both cores). offload='process': one child per worker (2 or 4), started and "
        "connected before the clock (their start-up is reported apart); at c=2 each child idles "
        "while its step's reply travels and the parent picks the next action, so c=4 keeps both "
        "cores busy. inline: the runner at concurrency 1. AsyncVectorEnv(2): reset + steps, "
        "random actions, autoreset. CPU us per step: CPU time (user + system) of the benchmark's "
        "process (the runner, and the env itself when inline) and of the env processes (read from"
        " /proc at each episode end, before they are closed), over the steps taken; wall-time "
        "ratios swing with other load on a shared machine, CPU per step much less.",
    ]
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 2 reps")
    parser.add_argument("--reps", type=int, help="repetitions per candidate (default 3)")
    parser.add_argument(
        "--section",
        action="append",
        choices=list(SECTIONS),
        help="measure only this part (repeatable; default: all)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        anyio.run(_serve_forever, json.loads(args.serve))
        return 0
    if args.child is not None:
        print(json.dumps(_cpu_child(json.loads(args.child))))
        return 0
    settings = Settings(quick=args.quick, reps=args.reps or (2 if args.quick else 3))
    t0 = time.perf_counter()
    section = run(settings, tuple(args.section or SECTIONS))
    print()
    print("\n".join(table_lines(section.rows)))
    print()
    for note in section.notes:
        print(f"- {note}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
