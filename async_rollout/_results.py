"""Episode and rollout results, and their summary statistics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._types import FAILED_OUTCOMES, OUTCOMES, Outcome


@dataclass(frozen=True, slots=True)
class Trajectory:
    """What happened in one episode, step by step.

    ``observations`` has one more entry than the other lists: the observation
    after reset, then the one after each step.
    """

    observations: list[Any]
    """Observations, T+1 of them."""
    actions: list[Any]
    """The action taken at each step."""
    rewards: np.ndarray[Any, np.dtype[np.float64]]
    """The reward of each step."""
    terminated: np.ndarray[Any, np.dtype[np.bool_]]
    """The ``terminated`` flag of each step."""
    truncated: np.ndarray[Any, np.dtype[np.bool_]]
    """The ``truncated`` flag of each step."""
    infos: list[dict[str, Any]]
    """The info dict of the reset, then of each step (T+1 of them)."""

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True, slots=True)
class EpisodeResult:
    """The outcome of one episode."""

    index: int
    """Position of the episode in the rollout (0-based)."""
    env_seed: int | None
    """Seed passed to the env's ``reset``."""
    agent_seed: int | None
    """Seed of the episode's policy rng (``numpy.random.default_rng(agent_seed)``)."""
    total_reward: float
    """Sum of the rewards of every step taken."""
    length: int
    """Number of steps taken."""
    terminated: bool
    """The env reported a terminal state at the last step."""
    truncated: bool
    """The episode was cut: by the env, or by ``max_episode_steps``."""
    outcome: Outcome = "completed"
    """``"completed"``, ``"env_error"``, ``"policy_error"``, ``"timeout"`` or ``"cancelled"``."""
    error: str | None = None
    """What went wrong, for an episode that did not complete."""
    wall_time_s: float = 0.0
    """Time from the start of reset to the end of the episode."""
    env_time_s: float = 0.0
    """Time spent awaiting the env's reset and steps."""
    policy_time_s: float = 0.0
    """Time spent awaiting the policy."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Numbers the env put in ``info["metrics"]`` at its last step."""
    trajectory: Trajectory | None = None
    """The steps, when recorded in memory (``record_trajectory`` without ``output_dir``)."""

    @property
    def failed(self) -> bool:
        """True for an env error, a policy error or a timeout."""
        return self.outcome in FAILED_OUTCOMES


def _stats(name: str, values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {f"{k}_{name}": None for k in ("mean", "std", "median", "min", "max")}
    return {
        f"mean_{name}": statistics.fmean(values),
        f"std_{name}": statistics.pstdev(values) if len(values) > 1 else 0.0,
        f"median_{name}": float(statistics.median(values)),
        f"min_{name}": float(min(values)),
        f"max_{name}": float(max(values)),
    }


def summarize(episodes: Iterable[EpisodeResult], wall_time_s: float) -> dict[str, Any]:
    """Compute the summary of a rollout (the keys of :attr:`RolloutResult.summary`).

    Return and length statistics cover completed episodes only; with none they
    are None. ``std`` is the population deviation.
    """
    episodes = list(episodes)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for ep in episodes:
        outcomes[ep.outcome] += 1
    completed = [ep for ep in episodes if ep.outcome == "completed"]
    total_steps = sum(ep.length for ep in episodes)
    summary: dict[str, Any] = {
        "n_episodes": len(episodes),
        "n_failed": sum(outcomes[o] for o in FAILED_OUTCOMES),
        "outcomes": outcomes,
        "total_steps": total_steps,
    }
    summary |= _stats("return", [ep.total_reward for ep in completed])
    summary |= _stats("length", [ep.length for ep in completed])
    summary["wall_time_s"] = wall_time_s
    summary["steps_per_s"] = total_steps / wall_time_s if wall_time_s > 0 else None
    metric_values: dict[str, list[float]] = {}
    for ep in completed:
        for name, value in ep.metrics.items():
            metric_values.setdefault(name, []).append(value)
    summary["metrics"] = {
        name: statistics.fmean(values)
        for name, values in sorted(metric_values.items())
        if all(math.isfinite(v) for v in values)
    }
    return summary


@dataclass(frozen=True, slots=True)
class RolloutResult:
    """The result of a rollout: every episode with a result, and the summary."""

    seed: int | None
    """The base seed the episode seeds were derived from (None when explicit seeds were given)."""
    episodes: list[EpisodeResult]
    """Every episode with a result, sorted by index."""
    summary: dict[str, Any]
    """Summary statistics.

    ``n_episodes`` (episodes with a result, any outcome), ``n_failed``
    (env_error + policy_error + timeout), ``outcomes`` (a count for every
    outcome, zeros included), ``total_steps`` (every step taken),
    ``mean_return``, ``std_return``, ``median_return``, ``min_return``,
    ``max_return`` and the same five for ``length`` (over completed episodes;
    ``std`` is the population deviation; None when no episode completed),
    ``wall_time_s``, ``steps_per_s``, and ``metrics``: the mean of each number
    the envs put in ``info["metrics"]`` at the last step of completed episodes.
    """

    @classmethod
    def from_episodes(
        cls, seed: int | None, episodes: Iterable[EpisodeResult], wall_time_s: float
    ) -> RolloutResult:
        """Build a result from episodes in any order."""
        ordered = sorted(episodes, key=lambda ep: ep.index)
        return cls(seed=seed, episodes=ordered, summary=summarize(ordered, wall_time_s))

    @property
    def returns(self) -> list[float]:
        """The total reward of each episode, in index order."""
        return [ep.total_reward for ep in self.episodes]
