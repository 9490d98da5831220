"""The exception hierarchy of async-rollout.

Every error the package raises on its own account derives from
:class:`RolloutError`::

    RolloutError
    ├── ConfigError      (also a ValueError)   bad config key, value or _target_
    ├── EnvError                               an environment misbehaved
    │   └── RemoteEnvError                     a remote env's connection or server failed
    ├── PolicyError                            a policy misbehaved
    └── RolloutTimeout   (also a TimeoutError) a deadline fired; ``.phase`` says where

Under ``on_env_error="raise"`` an exception raised by the user's own env or
policy reaches the caller with its own type and a note naming the episode;
these classes are for what the package itself detects.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ConfigError",
    "EnvError",
    "PolicyError",
    "RemoteEnvError",
    "RolloutError",
    "RolloutTimeout",
]

TimeoutPhase = Literal["reset", "step", "policy", "episode"]


class RolloutError(Exception):
    """Root of every error raised by async-rollout.

    Attributes:
        episode_index: The episode the error belongs to, or None.
        env_seed: That episode's env seed, or None.
        agent_seed: That episode's agent seed, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        episode_index: int | None = None,
        env_seed: int | None = None,
        agent_seed: int | None = None,
    ) -> None:
        super().__init__(message)
        self.episode_index = episode_index
        self.env_seed = env_seed
        self.agent_seed = agent_seed


class ConfigError(RolloutError, ValueError):
    """A config key, value or ``_target_`` is wrong.

    Attributes:
        key: The dotted config key at fault, or None when it is not a key.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class EnvError(RolloutError):
    """An environment broke its contract (bad step tuple, wrong observation, ...)."""


class RemoteEnvError(EnvError):
    """A remote environment's connection dropped or its server raised.

    Attributes:
        address: The server's address, as text.
        request: The request that failed (``"reset"``, ``"step"``, ...), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        address: str | None = None,
        request: str | None = None,
        episode_index: int | None = None,
        env_seed: int | None = None,
        agent_seed: int | None = None,
    ) -> None:
        super().__init__(
            message, episode_index=episode_index, env_seed=env_seed, agent_seed=agent_seed
        )
        self.address = address
        self.request = request


class PolicyError(RolloutError):
    """A policy broke its contract (for example, returned the wrong number of actions)."""


class RolloutTimeout(RolloutError, TimeoutError):
    """A deadline fired.

    Attributes:
        phase: ``"reset"``, ``"step"``, ``"policy"`` or ``"episode"``.
        limit: The deadline, in seconds.
        step: The step index at which it fired, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        phase: TimeoutPhase,
        limit: float,
        step: int | None = None,
        episode_index: int | None = None,
        env_seed: int | None = None,
        agent_seed: int | None = None,
    ) -> None:
        super().__init__(
            message, episode_index=episode_index, env_seed=env_seed, agent_seed=agent_seed
        )
        self.phase = phase
        self.limit = limit
        self.step = step
