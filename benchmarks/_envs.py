"""Envs, policies and the hand-written loops the runner is measured against."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import gymnasium as gym
import numpy as np
import sniffio
from anyio.lowlevel import checkpoint
from gymnasium import spaces


def contract_seeds(n: int, base_seed: int = 0) -> tuple[list[int], list[int]]:
    """The per-episode env and agent seeds of DESIGN.md's formula (what the runner derives)."""

    def seed(stream: int, i: int) -> int:
        ss = np.random.SeedSequence(base_seed, spawn_key=(stream, i))
        return int(ss.generate_state(1)[0])

    return [seed(0, i) for i in range(n)], [seed(1, i) for i in range(n)]


# --------------------------------------------------------------------------- envs


class NullEnv:
    """An AsyncEnv that does no work: a constant observation, one yield per call.

    Each instance has spaces of its own, as a real env would.
    """

    def __init__(self, episode_length: int) -> None:
        self.episode_length = episode_length
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._obs = np.zeros(4, np.float32)
        self._info: dict[str, Any] = {}
        self._t = 0

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._t = 0
        await checkpoint()
        return self._obs, self._info

    async def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._t += 1
        await checkpoint()
        return self._obs, 1.0, self._t >= self.episode_length, False, self._info

    async def close(self) -> None:
        return None


class LognormalEnv:
    """An AsyncEnv whose steps await a log-normal latency drawn from the episode's seed.

    Latencies are a pure function of the reset seed, so every loop sees the
    same ones. Each step's observed latency (call to return, scheduling delay
    included) is appended to ``observed``.
    """

    def __init__(
        self, episode_length: int, median_s: float, sigma: float, observed: list[float]
    ) -> None:
        self.episode_length = episode_length
        self.mu = math.log(median_s)
        self.sigma = sigma
        self.observed = observed
        self.observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._obs = np.zeros(4, np.float32)
        self._rng = np.random.default_rng(0)
        self._t = 0

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._rng = np.random.default_rng(seed)
        self._t = 0
        await checkpoint()
        return self._obs, {}

    async def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        t0 = time.perf_counter()
        self._t += 1
        await anyio.sleep(float(self._rng.lognormal(self.mu, self.sigma)))
        self.observed.append(time.perf_counter() - t0)
        return self._obs, 1.0, self._t >= self.episode_length, False, {}

    async def close(self) -> None:
        return None


class WorkEnv(gym.Env[np.ndarray, np.int64]):
    """A gymnasium env whose step does ``work()`` and then draws from the seeded generator.

    Like ``ScriptedEnv``: a Box(4) observation and a reward drawn from the
    seeded generator, the Discrete(2) action added to the reward, ``terminated``
    after ``episode_length`` steps; subclasses say what a step costs.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, episode_length: int = 50) -> None:
        self.episode_length = episode_length
        self.observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def work(self) -> None:
        """What one step costs (nothing here)."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self.np_random.standard_normal(4).astype(np.float32), {"step": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.work()
        self._t += 1
        reward = float(self.np_random.random()) + float(np.sum(action))
        obs = self.np_random.standard_normal(4).astype(np.float32)
        return obs, reward, self._t >= self.episode_length, False, {"step": self._t}


class SleepEnv(WorkEnv):
    """A gymnasium env that ``time.sleep``s each step: ScriptedEnv's twin for vector envs."""

    def __init__(self, episode_length: int = 50, latency: float = 0.005) -> None:
        super().__init__(episode_length)
        self.latency = latency

    def work(self) -> None:
        """Sleep ``latency`` seconds."""
        time.sleep(self.latency)


# --------------------------------------------------------------------------- policies


class ConstantPolicy:
    """An AsyncPolicy returning action 0 (no work)."""

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> Any:
        return 0


# --------------------------------------------------------------------------- hand-written loops

EnvSource = Sequence[Any] | Callable[[], Any]


def _env_for(envs: EnvSource, k: int) -> Any:
    return envs() if callable(envs) else envs[k]


async def anyio_loop(
    envs: EnvSource,
    policy: Any,
    env_seeds: Sequence[int],
    agent_seeds: Sequence[int],
    concurrency: int,
) -> list[float]:
    """The minimal hand-written anyio loop: ``concurrency`` tasks, each with its own env.

    Each task takes the next episode index, makes the episode's generator,
    resets with the episode's seed, then acts/steps/sums until the episode
    ends; it closes its env when the episodes run out. ``envs`` is a list
    (task ``k`` uses ``envs[k]``) or a factory called once per task.
    """
    n = len(env_seeds)
    returns = [0.0] * n
    next_index = 0

    async def worker(k: int) -> None:
        nonlocal next_index
        env = _env_for(envs, k)
        compute = policy.compute_action
        while next_index < n:
            i = next_index
            next_index += 1
            rng = np.random.default_rng(agent_seeds[i])
            obs, _ = await env.reset(seed=env_seeds[i])
            total = 0.0
            while True:
                action = await compute(obs, deterministic=False, rng=rng)
                obs, reward, terminated, truncated, _ = await env.step(action)
                total += reward
                if terminated or truncated:
                    break
            returns[i] = total
        await env.close()

    async with anyio.create_task_group() as tg:
        for k in range(min(concurrency, n)):
            tg.start_soon(worker, k)
    return returns


async def asyncio_loop(
    envs: EnvSource,
    policy: Any,
    env_seeds: Sequence[int],
    agent_seeds: Sequence[int],
    concurrency: int,
) -> list[float]:
    """The same loop on bare asyncio (``asyncio.TaskGroup``), no anyio task group."""
    n = len(env_seeds)
    returns = [0.0] * n
    next_index = 0

    async def worker(k: int) -> None:
        nonlocal next_index
        env = _env_for(envs, k)
        compute = policy.compute_action
        while next_index < n:
            i = next_index
            next_index += 1
            rng = np.random.default_rng(agent_seeds[i])
            obs, _ = await env.reset(seed=env_seeds[i])
            total = 0.0
            while True:
                action = await compute(obs, deterministic=False, rng=rng)
                obs, reward, terminated, truncated, _ = await env.step(action)
                total += reward
                if terminated or truncated:
                    break
            returns[i] = total
        await env.close()

    # What anyio.run does: tell sniffio the library, so the env's anyio checkpoint
    # resolves the backend as fast as under anyio (its fallback detection is slower).
    token = sniffio.current_async_library_cvar.set("asyncio")
    try:
        async with asyncio.TaskGroup() as tg:
            for k in range(min(concurrency, n)):
                tg.create_task(worker(k))
    finally:
        sniffio.current_async_library_cvar.reset(token)
    return returns


def plain_gym_loop(
    env: gym.Env[Any, Any], env_seeds: Sequence[int], agent_seeds: Sequence[int]
) -> list[tuple[float, int]]:
    """A plain synchronous gymnasium loop: per-episode seed, generator-sampled Discrete actions.

    Actions are sampled as ``RandomPolicy`` does for a Discrete space
    (``np.int64(start + rng.integers(n))``), from the same per-episode generator.
    """
    space = env.action_space
    assert isinstance(space, spaces.Discrete)
    n_actions, start = int(space.n), int(space.start)
    as_dtype = space.dtype.type  # type: ignore[union-attr]
    out = []
    for env_seed, agent_seed in zip(env_seeds, agent_seeds, strict=True):
        rng = np.random.default_rng(agent_seed)
        env.reset(seed=env_seed)
        total, length = 0.0, 0
        while True:
            action = as_dtype(start + rng.integers(n_actions))
            _, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            if terminated or truncated:
                break
        out.append((total, length))
    return out
