"""``python -m benchmarks --profile``: pyinstrument profiles of the hot loops.

Profiles B1 at concurrency 100 (runner and hand-written anyio loop, asyncio)
and B3 (CartPole-v1: runner c=1 and the plain loop), each run a few times
under one profiler, and writes them to ``benchmarks/profiles/*.txt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym

from async_rollout import RolloutRunner

from ._common import BENCH_DIR, Settings, run_anyio
from ._envs import ConstantPolicy, NullEnv, anyio_loop, contract_seeds, plain_gym_loop


def _profile_one(name: str, fn: Callable[[], object], repeat: int) -> str:
    from pyinstrument import Profiler

    fn()  # warm up outside the profile
    profiler = Profiler(interval=0.0005)
    t0 = time.process_time()
    profiler.start()
    for _ in range(repeat):
        fn()
    profiler.stop()
    cpu = time.process_time() - t0
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    path = BENCH_DIR / "profiles" / f"{name}.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return f"{name}: {cpu:.2f} s CPU under the profiler -> {path.relative_to(BENCH_DIR.parent)}"


def profile(settings: Settings) -> None:
    c, length, n = 100, 50, 1_000
    if settings.quick:
        n = 200
    envs = [NullEnv(length) for _ in range(c)]
    policy = ConstantPolicy()
    env_seeds, agent_seeds = contract_seeds(n)

    def factory(worker_index: int) -> NullEnv:
        return envs[worker_index]

    async def runner() -> None:
        await RolloutRunner(n, concurrency=c).run_with(factory, agent=policy)

    async def hand() -> None:
        await anyio_loop(envs, policy, env_seeds, agent_seeds, c)

    cartpole_n = 100 if settings.quick else 600
    cp_env_seeds, cp_agent_seeds = contract_seeds(cartpole_n)

    async def cartpole_runner() -> None:
        await RolloutRunner(cartpole_n, concurrency=1).run_with("CartPole-v1")

    def cartpole_plain() -> None:
        env = gym.make("CartPole-v1")
        plain_gym_loop(env, cp_env_seeds, cp_agent_seeds)
        env.close()

    jobs: list[tuple[str, Callable[[], object]]] = [
        ("b1_c100_runner", lambda: run_anyio(runner, "asyncio")),
        ("b1_c100_anyio_loop", lambda: run_anyio(hand, "asyncio")),
        ("b3_cartpole_runner_c1", lambda: run_anyio(cartpole_runner, "asyncio")),
        ("b3_cartpole_plain", cartpole_plain),
    ]
    for name, fn in jobs:
        print(_profile_one(name, fn, 2 if settings.quick else 5), flush=True)
