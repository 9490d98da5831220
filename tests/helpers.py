"""Small shared pieces for the tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from async_rollout import EpisodeResult


def episode_key(ep: EpisodeResult) -> tuple[Any, ...]:
    """What must be equal between two runs of the same seeds (no timings)."""
    traj = ep.trajectory
    steps: tuple[Any, ...] = ()
    if traj is not None:
        steps = (
            tuple(np.asarray(a).tobytes() for a in traj.actions),
            tuple(_obs_bytes(o) for o in traj.observations),
            traj.rewards.tobytes(),
        )
    return (
        ep.index,
        ep.env_seed,
        ep.agent_seed,
        ep.total_reward,
        ep.length,
        ep.terminated,
        ep.truncated,
        ep.outcome,
        steps,
    )


def _obs_bytes(obs: Any) -> bytes:
    if isinstance(obs, dict):
        return b"".join(_obs_bytes(obs[k]) for k in sorted(obs))
    return np.asarray(obs).tobytes()


def cartpole_heuristic(obs: Any) -> int:
    """Push towards the pole's lean (deterministic)."""
    return int(obs[2] + 0.5 * obs[3] > 0)
