"""Measurements that need a fresh process: ``python -m benchmarks._child TASK JSON``.

Prints one JSON object on its last line of stdout.

- ``rss``: peak RSS (``resource.getrusage``) of 10,000-odd in-flight episodes,
  on the runner or the hand-written anyio loop.
- ``vector``: wall time of 64 episodes x 50 steps of a 5 ms env, on the
  runner or a gymnasium vector env (the parent samples the PSS of this
  process tree meanwhile).
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from functools import partial
from typing import Any


def _maxrss_kib() -> int:
    """Peak RSS of this process, in KiB.

    ``VmHWM`` (the high-water mark of this process's own address space), not
    ``getrusage``'s ``ru_maxrss``: Linux carries the pre-exec address space's
    peak over into ``ru_maxrss``, so a child forked from a big parent would
    start at the parent's size.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def rss(args: dict[str, Any]) -> dict[str, Any]:
    from async_rollout import RolloutRunner

    from ._common import run_anyio
    from ._envs import ConstantPolicy, NullEnv, anyio_loop, contract_seeds

    concurrency = int(args["concurrency"])
    length = int(args["episode_length"])
    n = concurrency
    env_seeds, agent_seeds = contract_seeds(n)
    envs = [NullEnv(length) for _ in range(concurrency)]
    policy = ConstantPolicy()
    gc.collect()
    before = _maxrss_kib()

    def factory(worker_index: int) -> NullEnv:
        return envs[worker_index]

    async def main() -> float:
        t0 = time.perf_counter()
        if args["candidate"] == "runner":
            result = await RolloutRunner(n, concurrency=concurrency).run_with(factory, agent=policy)
            assert result.summary["total_steps"] == n * length, result.summary
        else:
            returns = await anyio_loop(envs, policy, env_seeds, agent_seeds, concurrency)
            assert sum(returns) == n * length
        return time.perf_counter() - t0

    wall = run_anyio(main, args["backend"])
    return {"before_kib": before, "peak_kib": _maxrss_kib(), "wall_s": wall}


def vector(args: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    episodes, length, latency = int(args["episodes"]), int(args["length"]), float(args["latency"])
    kind = args["kind"]
    if kind == "runner":
        import anyio

        from async_rollout import RandomPolicy, RolloutRunner
        from async_rollout.testing import ScriptedEnv

        concurrency = int(args["concurrency"])

        async def main() -> float:
            t0 = time.perf_counter()
            result = await RolloutRunner(episodes, concurrency=concurrency).run_with(
                partial(ScriptedEnv, length, step_latency=latency), agent=policy
            )
            assert result.summary["total_steps"] == episodes * length, result.summary
            return time.perf_counter() - t0

        from gymnasium import spaces

        policy = RandomPolicy(spaces.Discrete(2))
        wall = anyio.run(main)
        return {"wall_s": wall, "env_steps": episodes * length}

    import gymnasium as gym

    from ._envs import SleepEnv

    num_envs = int(args["num_envs"])
    assert episodes % num_envs == 0
    fns = [partial(SleepEnv, length, latency) for _ in range(num_envs)]
    vec: gym.vector.VectorEnv[Any, Any, Any] = (
        gym.vector.AsyncVectorEnv(fns) if kind == "async" else gym.vector.SyncVectorEnv(fns)
    )
    rng = np.random.default_rng(0)
    per_env = episodes // num_envs
    # gymnasium 1.x autoresets on the step after an episode ends (that call steps nothing).
    calls = per_env * (length + 1) - 1
    t0 = time.perf_counter()
    vec.reset(seed=0)
    env_steps = finished = 0
    resetting = np.zeros(num_envs, dtype=bool)
    for _ in range(calls):
        actions = rng.integers(2, size=num_envs)
        _, _, terminated, truncated, _ = vec.step(actions)
        env_steps += int((~resetting).sum())
        resetting = terminated | truncated
        finished += int(resetting.sum())
    wall = time.perf_counter() - t0
    vec.close()
    assert finished == episodes, finished
    assert env_steps == episodes * length, env_steps
    return {"wall_s": wall, "env_steps": env_steps}


TASKS = {"rss": rss, "vector": vector}


def main() -> None:
    task, raw = sys.argv[1], sys.argv[2]
    answer = TASKS[task](json.loads(raw))
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
