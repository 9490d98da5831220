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


# numpy.random.SeedSequence's constants (numpy/random/bit_generator.pyx); its output is
# stream-stable, so these never change.
_M32 = 0xFFFFFFFF
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_POOL = 4


def _words(n: int) -> list[int]:
    """``n`` as little-endian uint32 words, as SeedSequence coerces an int."""
    if n == 0:
        return [0]
    out = []
    while n > 0:
        out.append(n & _M32)
        n >>= 32
    return out


def _mix(x: int, y: int) -> int:
    r = (_MIX_L * x - _MIX_R * y) & _M32
    return r ^ (r >> 16)


def _hashmix(value: int, const: int) -> tuple[int, int]:
    """SeedSequence's hashmix: the mixed value and the next hash constant."""
    value ^= const
    const = (const * _MULT_A) & _M32
    value = (value * const) & _M32
    return value ^ (value >> 16), const


def derive_seeds(base_seed: int, stream: int, indices: range) -> list[int]:
    """``[derive_seed(base_seed, stream, i) for i in indices]``, without a SeedSequence each.

    The entropy words before the index (base seed padded to the pool size, then
    the stream) are the same for every episode: they are mixed once here, and
    only the index word is mixed per episode, vectorized with numpy for
    indices below 2**32. Equal to :func:`derive_seed` for every input.
    """
    run = _words(base_seed)
    run += [0] * (_POOL - len(run))  # a spawn key is given: entropy padded to the pool size
    prefix = run + _words(stream)
    const = _INIT_A
    pool = []
    for i in range(_POOL):
        word, const = _hashmix(prefix[i], const)
        pool.append(word)
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                word, const = _hashmix(pool[src], const)
                pool[dst] = _mix(pool[dst], word)
    for extra in prefix[_POOL:]:
        for dst in range(_POOL):
            word, const = _hashmix(extra, const)
            pool[dst] = _mix(pool[dst], word)
    out_const = (_INIT_B * _MULT_B) & _M32
    if indices.start >= 0 and indices.stop <= 2**32 and len(indices) > 0:
        # One index word: only pool[0]'s first mix reaches generate_state(1)[0].
        next_const = (const * _MULT_A) & _M32
        u = np.uint64
        v = np.arange(indices.start, indices.stop, indices.step, dtype=np.uint64)
        v = ((v ^ u(const)) * u(next_const)) & u(_M32)
        v ^= v >> u(16)
        r = (u(_MIX_L * pool[0] & _M32) + u(2**32) * u(_MIX_R) - u(_MIX_R) * v) & u(_M32)
        r ^= r >> u(16)
        d = ((r ^ u(_INIT_B)) * u(out_const)) & u(_M32)
        d ^= d >> u(16)
        return [int(x) for x in d.tolist()]
    seeds: list[int] = []
    for index in indices:
        p0, c = pool[0], const
        for extra in _words(index):
            word, c = _hashmix(extra, c)
            p0 = _mix(p0, word)
            for _ in range(_POOL - 1):  # the other pool words do not reach the first output
                c = (c * _MULT_A) & _M32
        state = ((p0 ^ _INIT_B) * out_const) & _M32
        seeds.append(state ^ (state >> 16))
    return seeds


def episode_seeds(base_seed: int, indices: range) -> tuple[list[int], list[int]]:
    """Return the env seeds and the agent seeds of the episodes in ``indices``."""
    return derive_seeds(base_seed, 0, indices), derive_seeds(base_seed, 1, indices)


def fresh_base_seed() -> int:
    """Draw a base seed from the OS's entropy (for ``seed=None``)."""
    return secrets.randbits(63)
