"""Per-episode seeds, derived so that every episode is reproducible on its own."""

from __future__ import annotations

import secrets

import numpy as np


def derive_seed(base_seed: int, stream: int, index: int) -> int:
    """Return the seed of episode ``index`` in ``stream`` (0: env, 1: agent).

    ``SeedSequence(base_seed, spawn_key=(stream, index))`` makes each episode's
    seed independent of how many episodes run and in what order.
    """
    return int(np.random.SeedSequence(base_seed, spawn_key=(stream, index)).generate_state(1)[0])


def episode_seeds(base_seed: int, indices: range) -> tuple[list[int], list[int]]:
    """Return the env seeds and the agent seeds of the episodes in ``indices``."""
    return (
        [derive_seed(base_seed, 0, i) for i in indices],
        [derive_seed(base_seed, 1, i) for i in indices],
    )


def fresh_base_seed() -> int:
    """Draw a base seed from the OS's entropy (for ``seed=None``)."""
    return secrets.randbits(63)
