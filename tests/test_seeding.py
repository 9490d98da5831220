"""The fast seed derivation equals numpy's SeedSequence, the contract's formula."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from async_rollout._seeding import derive_seed, derive_seeds


def contract(base: int, stream: int, index: int) -> int:
    return int(np.random.SeedSequence(base, spawn_key=(stream, index)).generate_state(1)[0])


@settings(deadline=None, max_examples=200)
@given(
    base=st.one_of(st.integers(0, 2**32 + 5), st.integers(0, 2**200)),
    stream=st.one_of(st.sampled_from([0, 1]), st.integers(0, 2**40)),
    start=st.one_of(st.integers(0, 5000), st.integers(2**32 - 3, 2**32 + 3), st.integers(0, 2**70)),
    length=st.integers(0, 6),
    step=st.integers(1, 3),
)
def test_derive_seeds_equals_seed_sequence(
    base: int, stream: int, start: int, length: int, step: int
) -> None:
    indices = range(start, start + length * step, step)
    assert derive_seeds(base, stream, indices) == [contract(base, stream, i) for i in indices]


def test_derive_seed_is_the_contract() -> None:
    for base, stream, index in [(0, 0, 0), (0, 1, 7), (12345, 0, 2999), (2**63 + 5, 1, 2**33)]:
        assert derive_seed(base, stream, index) == contract(base, stream, index)
    assert derive_seeds(0, 0, range(3000)) == [contract(0, 0, i) for i in range(3000)]
