"""Thorough per-step checks of what an env and a policy hand over (``validate=True``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from ._env import AsyncEnv
from ._policy import EpisodeContext
from .errors import EnvError, PolicyError


def _mismatch(space: spaces.Space[Any], value: Any) -> str:
    """Say how ``value`` fails to belong to ``space`` (shape and dtype first, they say most)."""
    if isinstance(space, spaces.Box | spaces.MultiBinary | spaces.MultiDiscrete):
        arr = np.asarray(value)
        if arr.shape != space.shape:
            return f"shape {arr.shape}, expected {space.shape}"
        if space.dtype is not None and not np.can_cast(arr.dtype, space.dtype):
            return f"dtype {arr.dtype}, expected {space.dtype}"
        return "values outside the space's bounds"
    if isinstance(space, spaces.Dict) and isinstance(value, dict):
        if set(value) != set(space.spaces):
            return f"keys {sorted(value)}, expected {sorted(space.spaces)}"
        for key, sub in space.spaces.items():
            if not sub.contains(value[key]):
                return f"[{key!r}]: {_mismatch(sub, value[key])}"
    return f"{type(value).__name__} {value!r} not in {space}"


class Validator:
    """Checks actions against the action space and each step against the observation space."""

    __slots__ = ("action_space", "ctx", "observation_space")

    def __init__(self, env: AsyncEnv, ctx: EpisodeContext) -> None:
        self.action_space = env.action_space
        self.observation_space = env.observation_space
        self.ctx = ctx

    def _where(self, step: int) -> str:
        return f"episode {self.ctx.index} (env_seed={self.ctx.env_seed}), step {step}"

    def _seeds(self) -> dict[str, Any]:
        return {
            "episode_index": self.ctx.index,
            "env_seed": self.ctx.env_seed,
            "agent_seed": self.ctx.agent_seed,
        }

    def action(self, action: Any, step: int) -> None:
        """Raise PolicyError unless ``action`` belongs to the action space."""
        if not self.action_space.contains(action):
            raise PolicyError(
                f"{self._where(step + 1)}: the policy's action has "
                f"{_mismatch(self.action_space, action)} (action space {self.action_space})",
                **self._seeds(),
            )

    def reset(self, obs: Any) -> None:
        """Raise EnvError unless the reset's observation belongs to the observation space."""
        if not self.observation_space.contains(obs):
            raise EnvError(
                f"episode {self.ctx.index} (env_seed={self.ctx.env_seed}), reset: the "
                f"observation has {_mismatch(self.observation_space, obs)} "
                f"(observation space {self.observation_space})",
                **self._seeds(),
            )

    def step(self, obs: Any, terminated: Any, truncated: Any, info: Any, step: int) -> None:
        """Raise EnvError unless the step's observation, flags and info are well formed."""
        if not self.observation_space.contains(obs):
            raise EnvError(
                f"{self._where(step)}: the observation has "
                f"{_mismatch(self.observation_space, obs)} "
                f"(observation space {self.observation_space})",
                **self._seeds(),
            )
        for name, flag in (("terminated", terminated), ("truncated", truncated)):
            if not isinstance(flag, bool | np.bool_):
                raise EnvError(
                    f"{self._where(step)}: {name} is {type(flag).__name__} {flag!r}; "
                    "expected a bool",
                    **self._seeds(),
                )
        if not isinstance(info, dict):
            raise EnvError(
                f"{self._where(step)}: info is {type(info).__name__}; expected a dict",
                **self._seeds(),
            )
