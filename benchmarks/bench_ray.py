"""R: the Ray backend against one local process.

1. Latency-bound (the issue's figure): 200 episodes of ``ScriptedEnv`` (50
   steps x 5 ms), 2 Ray workers x concurrency 64 against one local process at
   concurrency 128 -- the same 128 episodes in flight. Ray's extra time is
   split into the workers' start (from ``run_with`` to the first episode
   start on a worker: new actor processes importing the package) and the
   rest, per episode.
2. CPU-bound (where Ray pays off): 200 episodes of 20 steps that each burn
   ``CPU_MS`` of CPU, same layout. One event loop uses one core; each Ray
   worker brings its own.

The local cluster (``num_cpus`` = this machine's cores) is started once,
before timing. Run with ``python -m benchmarks.bench_ray [--reps N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from typing import Any

import anyio

from async_rollout import AsyncEnvWrapper, RolloutRunner, Sink
from async_rollout._policy import EpisodeContext
from async_rollout.testing import ScriptedEnv

from ._common import Row, Section, Settings, interleaved, median, spread

EPISODES, LENGTH, LATENCY = 200, 50, 0.005
WORKERS, PER_WORKER, LOCAL_CONCURRENCY = 2, 64, 128
CPU_LENGTH, CPU_MS = 20, 2.0


class BusyEnv(AsyncEnvWrapper):
    """A ScriptedEnv whose every step also burns ``cpu_ms`` of CPU (a simulator's work)."""

    def __init__(self, length: int, cpu_ms: float) -> None:
        super().__init__(ScriptedEnv(length))
        self.cpu_s = cpu_ms / 1000

    async def step(self, action: Any) -> Any:
        deadline = time.perf_counter() + self.cpu_s
        while time.perf_counter() < deadline:
            pass
        return await self.env.step(action)


class _FirstStart(Sink):
    """Notes when the first episode starts (on a Ray worker: after the actors are up)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_episode_start(self, episode: EpisodeContext) -> None:
        if self.at is None:
            self.at = time.perf_counter()


def _measure(env: Any, *, ray: bool, starts: list[float] | None = None) -> float:
    async def main() -> float:
        first = _FirstStart()
        if ray:
            runner = RolloutRunner(
                EPISODES,
                concurrency=PER_WORKER,
                backend="ray",
                n_workers=WORKERS,
                sinks=[first],
            )
        else:
            runner = RolloutRunner(EPISODES, concurrency=LOCAL_CONCURRENCY)
        t0 = time.perf_counter()
        result = await runner.run_with(env)
        elapsed = time.perf_counter() - t0
        assert result.summary["n_episodes"] == EPISODES
        if starts is not None and first.at is not None:
            starts.append(first.at - t0)
        return elapsed

    return anyio.run(main, backend="asyncio")


def _pair(
    name: str, env: Any, settings: Settings, section: Section, ideal: float | None
) -> tuple[float, float, float]:
    starts: list[float] = []
    got = interleaved(
        {
            "local": lambda: _measure(env, ray=False),
            "ray": lambda: _measure(env, ray=True, starts=starts),
        },
        settings.reps,
        log=settings.log,
        label=f"R {name}",
    )
    local, remote, start = median(got["local"]), median(got["ray"]), median(starts)
    per_episode_ms = (remote - start - local) / EPISODES * 1000
    layout = f"{WORKERS} workers x c={PER_WORKER} vs 1 process c={LOCAL_CONCURRENCY}"
    note = f"ideal {ideal:.2f} s" if ideal is not None else ""
    section.rows += [
        Row(
            "R",
            f"{name}: Ray {layout}",
            f"{remote:.3f} vs {local:.3f} s ({spread(got['ray'])}/{spread(got['local'])})",
            remote / local,
            note=note,
        ),
        Row(
            "R",
            f"{name}: Ray workers' start (run_with to first episode start)",
            f"{start:.3f} s",
            None,
        ),
        Row(
            "R",
            f"{name}: Ray minus local, per episode, start excluded",
            f"{per_episode_ms:+.2f} ms",
            None,
        ),
    ]
    return local, remote, start


def run(settings: Settings) -> Section:
    import os

    import ray

    section = Section("R", "Ray backend")
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    section.notes.append(f"local Ray cluster started in {time.perf_counter() - t0:.1f} s (untimed)")
    try:
        waves = -(-EPISODES // LOCAL_CONCURRENCY)
        _pair(
            f"{EPISODES} eps x {LENGTH} steps x 5 ms",
            partial(ScriptedEnv, LENGTH, step_latency=LATENCY),
            settings,
            section,
            ideal=waves * LENGTH * LATENCY,
        )
        _pair(
            f"{EPISODES} eps x {CPU_LENGTH} steps x {CPU_MS:g} ms CPU",
            partial(BusyEnv, CPU_LENGTH, CPU_MS),
            settings,
            section,
            ideal=None,
        )
    finally:
        ray.shutdown()
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    section = run(Settings(reps=args.reps))
    for note in section.notes:
        print(note)
    for row in section.rows:
        ratio = f"  ({row.ratio_str()})" if row.ratio is not None else ""
        extra = f"  [{row.note}]" if row.note else ""
        print(f"{row.name}: {row.measured}{ratio}{extra}")


if __name__ == "__main__":
    main()
