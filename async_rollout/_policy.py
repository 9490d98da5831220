"""Async policies: the protocol, the adapter for plain functions and objects, RandomPolicy."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["AsyncPolicy", "EpisodeContext", "RandomPolicy", "wrap_policy"]


@dataclass(slots=True)
class EpisodeContext:
    """What a policy may know about the episode it acts in.

    Passed as ``episode=`` to a policy whose ``compute_action`` accepts it, and
    to the ``on_episode_start`` / ``on_episode_end`` hooks.
    """

    index: int
    """Position of the episode in the rollout."""
    env_seed: int | None
    """Seed of the env's reset."""
    agent_seed: int | None
    """Seed of the episode's policy rng."""
    step: int = 0
    """Steps taken so far."""
    state: dict[str, Any] = field(default_factory=dict)
    """Per-episode state kept by the policy (a recurrent hidden state, say)."""


@runtime_checkable
class AsyncPolicy(Protocol):
    """Computes actions; one instance may serve every concurrent episode.

    Randomness must come only from ``rng``, the episode's own generator, so
    that episodes replay exactly whatever the concurrency. ``compute_action``
    may also accept ``info`` (the last info dict) and ``episode`` (an
    :class:`EpisodeContext`); the runner passes them only where accepted.
    Optional hooks ``on_episode_start(ctx)`` and ``on_episode_end(ctx,
    result)`` may be sync or async.
    """

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> Any:
        """Return the action for ``observation``."""
        ...


def _keywords(fn: Callable[..., Any]) -> frozenset[str]:
    """The keyword arguments ``fn`` accepts by name (all of them after ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset({"deterministic", "rng", "info", "episode"})
    return frozenset(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def _is_async_policy(obj: object) -> bool:
    method = getattr(obj, "compute_action", None)
    return inspect.iscoroutinefunction(method) and {"deterministic", "rng"} <= _keywords(method)


class _AdaptedPolicy:
    """An :class:`AsyncPolicy` over a function or a Maze-style ``compute_action``."""

    def __init__(self, fn: Callable[..., Any], owner: object) -> None:
        self._fn = fn
        self._is_async = inspect.iscoroutinefunction(fn)
        self._keywords = _keywords(fn) & {"deterministic", "rng", "info", "episode"}
        self._owner = owner
        for hook in ("on_episode_start", "on_episode_end"):
            if callable(getattr(owner, hook, None)):
                setattr(self, hook, getattr(owner, hook))

    async def compute_action(
        self,
        observation: Any,
        *,
        deterministic: bool,
        rng: np.random.Generator,
        info: dict[str, Any] | None = None,
        episode: EpisodeContext | None = None,
    ) -> Any:
        given = {"deterministic": deterministic, "rng": rng, "info": info, "episode": episode}
        kwargs = {k: given[k] for k in self._keywords}
        result = self._fn(observation, **kwargs)
        if self._is_async:
            result = await result
        return result

    def __repr__(self) -> str:
        return f"wrap_policy({self._owner!r})"


def wrap_policy(obj: Any) -> AsyncPolicy:
    """Adapt ``obj`` to :class:`AsyncPolicy`.

    Args:
        obj: An :class:`AsyncPolicy` (returned unchanged); an object with a
            sync or async ``compute_action`` (Maze-style signatures without
            ``rng`` are called with the keywords they accept); or a function
            ``observation -> action``, sync or async, which may also accept
            ``deterministic``, ``rng``, ``info`` and ``episode``.

    Raises:
        TypeError: ``obj`` is none of these (a config mapping goes to the runner).
    """
    if _is_async_policy(obj):
        return obj  # type: ignore[no-any-return]
    method = getattr(obj, "compute_action", None)
    if callable(method):
        return _AdaptedPolicy(method, obj)
    if callable(obj) and not isinstance(obj, type | Mapping):
        return _AdaptedPolicy(obj, obj)
    raise TypeError(
        "expected a policy: an AsyncPolicy, an object with compute_action(), or a function "
        f"observation -> action; got {type(obj).__name__}: {obj!r}"
    )


Sampler = Callable[[np.random.Generator], Any]


def _box_sampler(space: spaces.Box) -> Sampler:
    low, high, shape, dtype = space.low, space.high, space.shape, space.dtype
    if np.issubdtype(dtype, np.integer):
        # Integer boxes are bounded by their dtype at worst; the upper bound is inclusive.
        info = np.iinfo(dtype.type)  # type: ignore[type-var]
        lo = np.where(np.isfinite(low), low, info.min).astype(np.int64)
        hi = np.where(np.isfinite(high), high, info.max).astype(np.int64)
        return lambda rng: rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    bounded_low, bounded_high = space.bounded_below, space.bounded_above
    if bounded_low.all() and bounded_high.all():
        return lambda rng: rng.uniform(low, high, size=shape).astype(dtype)

    def sample(rng: np.random.Generator) -> Any:
        # As gymnasium does: normal where unbounded, shifted exponential where half-bounded.
        out = rng.normal(size=shape)
        lower_only = bounded_low & ~bounded_high
        upper_only = ~bounded_low & bounded_high
        both = bounded_low & bounded_high
        out[lower_only] = low[lower_only] + rng.exponential(size=shape)[lower_only]
        out[upper_only] = high[upper_only] - rng.exponential(size=shape)[upper_only]
        out[both] = rng.uniform(low[both], high[both])
        return out.astype(dtype)

    return sample


def make_sampler(space: gym.Space[Any]) -> Sampler:
    """Return a function sampling ``space`` with a given generator."""
    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)
        dtype = space.dtype.type
        return lambda rng: dtype(start + rng.integers(n))
    if isinstance(space, spaces.Box):
        return _box_sampler(space)
    if isinstance(space, spaces.MultiDiscrete):
        nvec, mstart, mdtype = space.nvec, space.start, space.dtype
        return lambda rng: (mstart + rng.integers(nvec)).astype(mdtype)
    if isinstance(space, spaces.MultiBinary):
        shape = space.shape
        return lambda rng: rng.integers(0, 2, size=shape, dtype=np.int8)
    if isinstance(space, spaces.Dict):
        parts = {key: make_sampler(sub) for key, sub in space.spaces.items()}
        return lambda rng: {key: sample(rng) for key, sample in parts.items()}
    if isinstance(space, spaces.Tuple):
        items = [make_sampler(sub) for sub in space.spaces]
        return lambda rng: tuple(sample(rng) for sample in items)
    raise TypeError(
        "RandomPolicy samples Box, Discrete, MultiDiscrete, MultiBinary, Dict and Tuple "
        f"spaces; got {space!r}"
    )


class RandomPolicy:
    """Samples the action space with the episode's rng (``deterministic`` is ignored, as in Maze).

    gymnasium's own ``Space.sample()`` draws from the space's generator,
    shared by every episode; this policy draws from the episode's, so
    episodes replay exactly whatever the concurrency.
    """

    def __init__(self, action_space: gym.Space[Any]) -> None:
        self.action_space = action_space
        self._sample = make_sampler(action_space)

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> Any:
        """Return a random action drawn with ``rng``."""
        return self._sample(rng)

    def __repr__(self) -> str:
        return f"RandomPolicy({self.action_space!r})"


def hook(obj: object, name: str) -> Callable[..., Awaitable[Any] | Any] | None:
    """Return ``obj``'s callable attribute ``name``, or None."""
    fn = getattr(obj, name, None)
    return fn if callable(fn) else None
