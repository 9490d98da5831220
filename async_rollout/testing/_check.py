"""check_async_env: a conformance check for AsyncEnv implementations and adapters."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import numbers
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .._policy import make_sampler

__all__ = ["check_async_env"]

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = 6
_repr.maxdict = 6


async def check_async_env(env: Any, *, seed: int = 0, n_steps: int = 20) -> None:
    """Check that ``env`` follows the :class:`~async_rollout.AsyncEnv` contract.

    Written for users testing their own adapters (as gymnasium's
    ``check_env`` is for sync envs). It checks, in order:

    * ``reset``, ``step`` and ``close`` are coroutine functions;
    * ``observation_space`` and ``action_space`` are gymnasium spaces;
    * ``reset(seed=seed)`` returns ``(observation, info)`` with the
      observation in ``observation_space`` and ``info`` a dict;
    * ``step(action)`` returns ``(observation, reward, terminated, truncated,
      info)``: observation in the space, a real-number reward, bools for the
      two flags, a dict info. ``n_steps`` steps are taken with actions drawn
      from ``numpy.random.default_rng(seed)``; when an episode ends the env
      is reset with the next seed (``seed + 1``, ...) and stepping goes on;
    * determinism: a second ``reset(seed=seed)`` gives the same first
      observation, and replaying the same actions gives the same
      observations, rewards and flags;
    * ``close()`` succeeds, and a second ``close()`` does nothing.

    The env is closed at the end, also when a check fails. A hanging env
    hangs the check: put it under ``anyio.fail_after`` if that can happen.

    Args:
        env: The env to check (not a ``gymnasium.Env``: adapt one with
            :func:`~async_rollout.wrap_env` first).
        seed: The reset seed, also seeding the random actions.
        n_steps: Steps taken in each of the two passes.

    Raises:
        AssertionError: A check failed; the message says what was expected
            and what came. An exception raised by the env itself is chained
            as the cause.
        ValueError: ``seed`` or ``n_steps`` is invalid.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1; got {n_steps!r}")
    _check_methods(env)
    try:
        _check_spaces(env)
        first = await _play(env, seed, n_steps, _actions(env.action_space, seed))
        replay = await _play(env, seed, n_steps, iter(first.actions))
        _check_same_runs(first, replay, seed)
    except Exception:
        # Leave nothing open behind a failed check; its failure matters more than the close's.
        with contextlib.suppress(Exception):
            await env.close()
        raise
    await _check_close(env)


def _fail(message: str) -> AssertionError:
    # Raised explicitly rather than with `assert`, which `python -O` strips.
    return AssertionError(message)


def _check_methods(env: Any) -> None:
    for name in ("reset", "step", "close"):
        method = getattr(env, name, None)
        if method is None:
            raise _fail(
                f"expected {type(env).__name__} to have an async {name}() method; it has none"
            )
        if not inspect.iscoroutinefunction(method):
            kind = "callable" if callable(method) else type(method).__name__
            raise _fail(
                f"expected {type(env).__name__}.{name} to be a coroutine function (async def); "
                f"got a sync {kind} {method!r}. A gymnasium env must be adapted first: "
                "async_rollout.wrap_env(env)"
            )


def _check_spaces(env: Any) -> None:
    for name in ("observation_space", "action_space"):
        try:
            space = getattr(env, name)
        except Exception as exc:
            raise _fail(
                f"expected {type(env).__name__}.{name} to be a gymnasium space; "
                f"reading it raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(space, gym.spaces.Space):
            raise _fail(
                f"expected {type(env).__name__}.{name} to be a gymnasium.spaces.Space; "
                f"got {_describe(space)}"
            )


@dataclass
class _Step:
    """One step as the check saw it; the replay must see the same."""

    observation: Any
    reward: Any
    terminated: bool
    truncated: bool
    reset_observation: Any = None
    """The first observation of the next episode, when this step ended one."""


@dataclass
class _Run:
    """What one pass of the check saw."""

    first_observation: Any
    actions: list[Any] = field(default_factory=list)
    steps: list[_Step] = field(default_factory=list)


def _actions(space: gym.Space[Any], seed: int) -> Iterator[Any]:
    """Endless actions drawn with a generator seeded by ``seed``."""
    try:
        sample: Callable[[np.random.Generator], Any] = make_sampler(space)
    except TypeError:
        # A space RandomPolicy cannot sample (Text, Graph, ...): its own seeded sampler will do.
        space.seed(seed)
        return (space.sample() for _ in itertools.count())
    rng = np.random.default_rng(seed)
    return (sample(rng) for _ in itertools.count())


async def _play(env: Any, seed: int, n_steps: int, actions: Iterator[Any]) -> _Run:
    run = _Run(await _reset(env, seed))
    episodes = 0
    for t in range(1, n_steps + 1):
        action = next(actions)
        try:
            result = await env.step(action)
        except Exception as exc:
            raise _fail(
                f"expected step({_repr.repr(action)}) (step {t} after reset(seed={seed})) to "
                f"return; it raised {type(exc).__name__}: {exc}"
            ) from exc
        step = _check_step(env, result, t)
        if step.terminated or step.truncated:
            # Seeded, as the runner resets every episode: what is checked is what it relies on.
            episodes += 1
            step.reset_observation = await _reset(env, seed + episodes)
        run.actions.append(action)
        run.steps.append(step)
    return run


async def _reset(env: Any, seed: int | None) -> Any:
    call = f"reset(seed={seed})"
    try:
        result = await env.reset(seed=seed)
    except Exception as exc:
        raise _fail(
            f"expected {call} to return (observation, info); it raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, tuple) or len(result) != 2:
        raise _fail(f"expected {call} to return a tuple (observation, info); got {_shape(result)}")
    obs, info = result
    _check_obs(env.observation_space, obs, f"the observation from {call}")
    if not isinstance(info, dict):
        raise _fail(f"expected the info from {call} to be a dict; got {_describe(info)}")
    return obs


def _check_step(env: Any, result: Any, t: int) -> _Step:
    where = f"step {t}"
    if not isinstance(result, tuple) or len(result) != 5:
        hint = (
            " (the old gym API returned 4 values; gymnasium splits done into terminated "
            "and truncated)"
            if isinstance(result, tuple) and len(result) == 4
            else ""
        )
        raise _fail(
            "expected step() to return a 5-tuple (observation, reward, terminated, truncated, "
            f"info); got {_shape(result)} at {where}{hint}"
        )
    obs, reward, terminated, truncated, info = result
    _check_obs(env.observation_space, obs, f"the observation from {where}")
    if (
        not isinstance(reward, numbers.Real)
        or isinstance(reward, bool | np.bool_)
        or math.isnan(float(reward))
    ):
        raise _fail(
            f"expected the reward at {where} to be a real number (int or float, not NaN); "
            f"got {_describe(reward)}"
        )
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(flag, bool | np.bool_):
            raise _fail(f"expected {name} at {where} to be a bool; got {_describe(flag)}")
    if not isinstance(info, dict):
        raise _fail(f"expected the info at {where} to be a dict; got {_describe(info)}")
    return _Step(obs, reward, bool(terminated), bool(truncated))


def _check_obs(space: gym.Space[Any], obs: Any, what: str) -> None:
    try:
        inside = bool(space.contains(obs))
    except Exception:
        # Some spaces raise on values of the wrong kind instead of answering False.
        inside = False
    if not inside:
        reason = _why_outside(space, obs)
        raise _fail(
            f"expected {what} to be in observation_space {space}; got {_describe(obs)}"
            + (f" ({reason})" if reason else "")
        )


def _why_outside(space: gym.Space[Any], obs: Any) -> str:
    """The first reason ``obs`` is not in ``space``, where it can be told; else ''."""
    if isinstance(space, spaces.Box):
        if not isinstance(obs, np.ndarray):
            return f"a Box observation must be a numpy array, not {type(obs).__name__}"
        if obs.shape != space.shape:
            return f"shape {obs.shape} instead of {space.shape}"
        if not np.can_cast(obs.dtype, space.dtype):
            return f"dtype {obs.dtype} does not cast safely to {space.dtype}"
        below = obs < space.low
        above = obs > space.high
        if below.any() or above.any():
            return f"{int(below.sum() + above.sum())} value(s) outside the bounds"
        if np.isnan(obs).any():
            return "NaN values"
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, Mapping):
            return f"a Dict observation must be a dict, not {type(obs).__name__}"
        if set(obs) != set(space.spaces):
            return f"keys {sorted(map(str, obs))} instead of {sorted(space.spaces)}"
        for key, sub in space.spaces.items():
            if not sub.contains(obs[key]):
                inner = _why_outside(sub, obs[key])
                return f"key {key!r}: " + (inner or f"{_describe(obs[key])} not in {sub}")
    return ""


def _check_same_runs(first: _Run, replay: _Run, seed: int) -> None:
    if not _same(first.first_observation, replay.first_observation):
        raise _fail(
            f"expected reset(seed={seed}) to give the same first observation every time "
            f"(determinism); got {_describe(first.first_observation)} then "
            f"{_describe(replay.first_observation)}. Seed every random generator of the env "
            "from the reset seed"
        )
    for t, (a, b) in enumerate(zip(first.steps, replay.steps, strict=True), start=1):
        for what in ("observation", "reward", "terminated", "truncated", "reset_observation"):
            x, y = getattr(a, what), getattr(b, what)
            if not _same(x, y):
                name = "first observation after the reset" if what == "reset_observation" else what
                raise _fail(
                    f"expected the same trajectory when replaying the same actions after "
                    f"reset(seed={seed}) (determinism); the {name} at step {t} differs: "
                    f"{_describe(x)} then {_describe(y)}. Draw every random number of the env "
                    "from generators seeded at reset"
                )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_same(a[k], b[k]) for k in a)
        )
    if isinstance(a, tuple | list) or isinstance(b, tuple | list):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, np.ndarray | np.generic) or isinstance(b, np.ndarray | np.generic):
        x, y = np.asarray(a), np.asarray(b)
        try:
            return bool(np.array_equal(x, y, equal_nan=True))
        except TypeError:
            # equal_nan is only defined for numeric dtypes.
            return bool(np.array_equal(x, y))
    return bool(a == b)


async def _check_close(env: Any) -> None:
    for attempt in ("close()", "a second close() (closing must be idempotent)"):
        try:
            await env.close()
        except Exception as exc:
            raise _fail(
                f"expected {attempt} to return None; it raised {type(exc).__name__}: {exc}"
            ) from exc


def _shape(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of length {len(value)}"
    return _describe(value)


def _describe(value: Any) -> str:
    """A short description of a value: its type, and shape and dtype for arrays."""
    if isinstance(value, np.ndarray):
        return f"ndarray(shape={value.shape}, dtype={value.dtype}) {_repr.repr(value.tolist())}"
    if isinstance(value, Mapping):
        parts = ", ".join(f"{k!r}: {_describe(v)}" for k, v in list(value.items())[:6])
        return f"{type(value).__name__} {{{parts}}}"
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return f"{type(value).__name__} of length {len(value)} {_repr.repr(value)}"
    return f"{type(value).__name__} {_repr.repr(value)}"
