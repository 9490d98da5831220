"""ScriptedEnv: a deterministic async env with scripted latency and failures."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
from gymnasium import spaces

__all__ = ["EnvTracker", "ScriptedEnv"]


@dataclass
class EnvTracker:
    """Counts the envs made and closed, to check that none is left open."""

    created: list[ScriptedEnv] = field(default_factory=list)
    closed: list[ScriptedEnv] = field(default_factory=list)

    @property
    def open(self) -> list[ScriptedEnv]:
        """Envs made and not yet closed."""
        return [env for env in self.created if not env.closed]


class ScriptedEnv:
    """An :class:`~async_rollout.AsyncEnv` whose episodes are a pure function of the seed.

    Each step draws the observation and the reward from a generator seeded at
    reset, and adds the action to the reward, so the same env and agent seeds
    give the same episode whatever else runs concurrently. Latency is awaited
    with ``anyio.sleep`` (so trio's ``MockClock`` can skip it); with no
    latency each call still yields once to the event loop.

    Args:
        episode_length: Steps until ``terminated``.
        step_latency: Seconds each step awaits.
        reset_latency: Seconds each reset awaits.
        close_latency: Seconds ``close`` awaits.
        obs_shape: Shape of the Box observation.
        dict_obs: Observe a Dict space (``position`` Box, ``mask`` MultiBinary) instead.
        n_actions: Size of the Discrete action space.
        fail_at_step: Raise ``exception`` on this step (1-based) of every episode.
        fail_on_reset: Raise ``exception`` on every reset.
        fail_seeds: Only fail episodes reset with one of these seeds.
        hang_at_step: Await forever on this step (1-based), for deadline tests.
        exception: The exception class raised on a scripted failure.
        tracker: Told of every env made and closed.
        worker_index: Recorded on the env (factories may pass it).
    """

    def __init__(
        self,
        episode_length: int = 10,
        *,
        step_latency: float = 0.0,
        reset_latency: float = 0.0,
        close_latency: float = 0.0,
        obs_shape: tuple[int, ...] = (4,),
        dict_obs: bool = False,
        n_actions: int = 2,
        fail_at_step: int | None = None,
        fail_on_reset: bool = False,
        fail_seeds: Container[int] | None = None,
        hang_at_step: int | None = None,
        exception: type[Exception] = RuntimeError,
        tracker: EnvTracker | None = None,
        worker_index: int | None = None,
    ) -> None:
        self.episode_length = episode_length
        self.step_latency = step_latency
        self.reset_latency = reset_latency
        self.close_latency = close_latency
        self.obs_shape = tuple(obs_shape)
        self.dict_obs = dict_obs
        self.fail_at_step = fail_at_step
        self.fail_on_reset = fail_on_reset
        self.fail_seeds = fail_seeds
        self.hang_at_step = hang_at_step
        self.exception = exception
        self.worker_index = worker_index
        box = spaces.Box(-np.inf, np.inf, shape=self.obs_shape, dtype=np.float32)
        self.observation_space: spaces.Space[Any] = (
            spaces.Dict({"position": box, "mask": spaces.MultiBinary(n_actions)})
            if dict_obs
            else box
        )
        self.action_space: spaces.Space[Any] = spaces.Discrete(n_actions)
        self.closed = False
        self.resets = 0
        self.steps = 0
        self._t = 0
        self._seed: int | None = None
        self._rng = np.random.default_rng(0)
        self._tracker = tracker
        if tracker is not None:
            tracker.created.append(self)

    def _observe(self) -> Any:
        position = self._rng.standard_normal(self.obs_shape).astype(np.float32)
        if self.dict_obs:
            mask = (self._rng.random(int(self.action_space.n)) < 0.5).astype(np.int8)  # type: ignore[attr-defined]
            return {"position": position, "mask": mask}
        return position

    def _failing(self) -> bool:
        return self.fail_seeds is None or self._seed in self.fail_seeds

    async def _wait(self, latency: float) -> None:
        if latency > 0:
            await anyio.sleep(latency)
        else:
            await anyio.lowlevel.checkpoint()

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode; its observations and rewards follow from ``seed``."""
        if self.closed:
            raise RuntimeError("reset() on a closed ScriptedEnv")
        await self._wait(self.reset_latency)
        self._seed = seed
        if self.fail_on_reset and self._failing():
            raise self.exception(f"scripted failure on reset (seed={seed})")
        self.resets += 1
        self._t = 0
        self._rng = np.random.default_rng(seed)
        return self._observe(), {"step": 0}

    async def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Take one step; ``terminated`` after ``episode_length`` steps."""
        if self.closed:
            raise RuntimeError("step() on a closed ScriptedEnv")
        self._t += 1
        self.steps += 1
        if self.hang_at_step == self._t and self._failing():
            await anyio.sleep_forever()
        await self._wait(self.step_latency)
        if self.fail_at_step == self._t and self._failing():
            raise self.exception(f"scripted failure at step {self._t} (seed={self._seed})")
        reward = float(self._rng.random()) + float(np.sum(action))
        terminated = self._t >= self.episode_length
        info: dict[str, Any] = {"step": self._t}
        if terminated:
            info["metrics"] = {"final_step": float(self._t)}
        return self._observe(), reward, terminated, False, info

    async def close(self) -> None:
        """Close the env (idempotent)."""
        if self.closed:
            return
        try:
            await self._wait(self.close_latency)
        finally:
            self.closed = True
            if self._tracker is not None:
                self._tracker.closed.append(self)

    def render(self) -> str:
        """A one-line text picture of the episode's progress."""
        return f"step {self._t}/{self.episode_length}"

    def __repr__(self) -> str:
        return (
            f"ScriptedEnv(episode_length={self.episode_length}, worker_index={self.worker_index})"
        )
