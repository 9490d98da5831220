"""ChaosWrapper: seeded fault injection (latency, hangs, errors, slow closes) for any AsyncEnv."""

from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import anyio
import numpy as np

from .._env import AsyncEnv, AsyncEnvWrapper, StepResult

__all__ = ["ChaosSchedule", "ChaosWrapper", "Fault", "LatencySpec"]

#: A latency: seconds (a fixed delay), None (none), or a distribution such as
#: ``{"dist": "lognormal", "median": 0.01, "sigma": 0.5}``.
LatencySpec = float | Mapping[str, Any] | None

_Draw = Callable[[np.random.Generator], float]

# Each distribution's required and optional parameters ("max" caps any of them).
_DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fixed": (("value",), ()),
    "lognormal": (("median", "sigma"), ("max",)),
    "uniform": (("low", "high"), ()),
    "exponential": (("mean",), ("max",)),
}


class _Latency:
    """A latency distribution, validated once, drawing seconds from a given generator."""

    __slots__ = ("_draw", "description")

    def __init__(self, name: str, spec: LatencySpec) -> None:
        self.description = spec
        self._draw = self._parse(name, spec)

    def draw(self, rng: np.random.Generator) -> float:
        return 0.0 if self._draw is None else self._draw(rng)

    @staticmethod
    def _parse(name: str, spec: LatencySpec) -> _Draw | None:
        if spec is None:
            return None
        if isinstance(spec, int | float) and not isinstance(spec, bool):
            value = _nonnegative(name, spec)
            return (lambda rng: value) if value > 0 else None
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"{name} must be seconds, None, or a mapping such as "
                f"{{'dist': 'lognormal', 'median': 0.01, 'sigma': 0.5}}; got {spec!r}"
            )
        dist = spec.get("dist")
        if dist not in _DISTRIBUTIONS:
            choices = ", ".join(repr(d) for d in _DISTRIBUTIONS)
            raise ValueError(f"{name}['dist'] must be one of {choices}; got {dist!r}")
        required, optional = _DISTRIBUTIONS[dist]
        keys = set(spec) - {"dist"}
        missing = [k for k in required if k not in keys]
        unknown = sorted(map(str, keys - set(required) - set(optional)))
        if missing or unknown:
            raise ValueError(
                f"{name}: a {dist!r} latency takes {', '.join(required + optional)}"
                f"{' (optional: ' + ', '.join(optional) + ')' if optional else ''}; "
                + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}")
            )
        p = {k: _nonnegative(f"{name}[{k!r}]", spec[k]) for k in keys}
        cap = p.get("max", math.inf)
        if dist == "fixed":
            value = p["value"]
            return lambda rng: value
        if dist == "lognormal":
            if p["median"] <= 0:
                raise ValueError(f"{name}['median'] must be > 0; got {p['median']}")
            mu, sigma = math.log(p["median"]), p["sigma"]
            return lambda rng: min(float(rng.lognormal(mu, sigma)), cap)
        if dist == "uniform":
            low, high = p["low"], p["high"]
            if high < low:
                raise ValueError(f"{name}: 'high' ({high}) must be >= 'low' ({low})")
            return lambda rng: float(rng.uniform(low, high))
        mean = p["mean"]
        return lambda rng: min(float(rng.exponential(mean)), cap)


def _nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number (seconds for a latency); got {value!r}")
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 0; got {value}")
    return float(value)


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a probability (a number in [0, 1]); got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {value}")
    return float(value)


def _exception_class(value: Any) -> type[Exception]:
    if isinstance(value, str):
        # Configs name the class: "ConnectionError" (a builtin) or "package.module.MyError".
        module, _, attr = value.rpartition(".")
        try:
            value = getattr(importlib.import_module(module or "builtins"), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"exception: cannot import {value!r}: {exc}") from exc
    if not (isinstance(value, type) and issubclass(value, Exception)):
        raise TypeError(
            f"exception must be an Exception subclass or its dotted path; got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault, with what it takes to find it again."""

    kind: str
    """``"reset_error"``, ``"reset_hang"``, ``"step_error"``, ``"step_hang"``, ``"slow_close"``."""
    env_seed: int | None
    """The seed of the reset that started the episode (None for an unseeded reset)."""
    attempt: int
    """How many earlier resets with this seed the schedule had seen (0: first attempt)."""
    step: int
    """The step (1-based) the fault hit; 0 for a reset or a close."""


class ChaosSchedule:
    """Attempt counts per env seed, shared by every :class:`ChaosWrapper` of a run.

    A retried episode runs on a fresh env, hence a fresh wrapper; only state
    shared between wrappers can tell it is a retry. Pass one schedule to all
    the wrappers of a run (``{ChaosWrapper: {"schedule": schedule, ...}}``,
    or ``schedule: <name>`` in a config for :meth:`named`) and the n-th reset
    with a given env seed draws the faults of attempt n: a retry sees fresh
    faults and may succeed, and the run as a whole still replays exactly.

    Use a fresh schedule (or :meth:`clear` it) for each run that must replay:
    a schedule that has seen a seed counts the next reset with it as a retry.
    Counts live in one process (a Ray worker has its own), and are kept per
    env seed: episodes given the same env seed share them, and which of
    them is "attempt 0" then depends on the order they reset in.

    Attributes:
        faults: Every fault injected by the wrappers using this schedule.
    """

    _named: ClassVar[dict[str, ChaosSchedule]] = {}

    def __init__(self) -> None:
        self._attempts: dict[int, int] = {}
        self.faults: list[Fault] = []

    def __repr__(self) -> str:
        return f"<ChaosSchedule: {len(self._attempts)} env seeds, {len(self.faults)} faults>"

    @classmethod
    def named(cls, name: str) -> ChaosSchedule:
        """The process-wide schedule called ``name``, made on first use (for configs)."""
        if name not in cls._named:
            cls._named[name] = cls()
        return cls._named[name]

    def next_attempt(self, env_seed: int) -> int:
        """Count one more reset with ``env_seed`` and return its attempt number (0 first)."""
        attempt = self._attempts.get(env_seed, 0)
        self._attempts[env_seed] = attempt + 1
        return attempt

    def attempts(self, env_seed: int) -> int:
        """How many resets with ``env_seed`` this schedule has seen."""
        return self._attempts.get(env_seed, 0)

    def counts(self) -> Counter[str]:
        """How many faults of each kind were injected."""
        return Counter(fault.kind for fault in self.faults)

    def clear(self) -> None:
        """Forget every attempt and fault, so the next run replays from scratch."""
        self._attempts.clear()
        self.faults.clear()


class ChaosWrapper(AsyncEnvWrapper):
    """Injects latency, hangs, exceptions and slow closes into an :class:`~async_rollout.AsyncEnv`.

    Faults are drawn from generators of the wrapper's own, so a failure
    scenario replays exactly. Replay must not depend on which worker runs an
    episode, nor on what ran on that worker before: at each ``reset(seed=s)``
    the generators are reseeded from ``(seed, s, attempt)``, where ``attempt``
    counts the earlier resets with ``s`` in the :class:`ChaosSchedule`. Hence:

    * an episode sees the same faults on any worker, at any concurrency, on
      either backend;
    * with a schedule shared by all the run's wrappers, a retried episode
      (same seeds, fresh env) is attempt 1, 2, ... and sees fresh faults, so
      retries can succeed; the whole run still replays exactly;
    * without one (the default), each wrapper counts only its own resets: a
      retry on a fresh env is attempt 0 again and fails exactly as before.
      That is the choice for reproducing one failure; share a schedule to
      exercise retries.

    A reset without a seed draws its faults from the wrapper's own count of
    unseeded resets: reproducible on one env, not across workers.

    Latency and fault decisions come from separate generators, and every call
    draws its fault decisions whatever the probabilities, so adding latency
    or changing ``hang_prob`` does not move the injected errors. A hang
    awaits ``anyio.sleep_forever()`` (only a deadline or a cancellation ends
    it); an error is raised after the call's latency and before the wrapped
    env is called, whose state then does not advance.

    Args:
        env: The env to wrap.
        seed: Seed of the fault scenario (an int >= 0).
        step_latency: Delay before each step: seconds, None, or a
            distribution ``{"dist": "lognormal", "median": m, "sigma": s}``,
            ``{"dist": "uniform", "low": a, "high": b}``,
            ``{"dist": "exponential", "mean": m}`` or
            ``{"dist": "fixed", "value": v}`` (lognormal and exponential take
            an optional ``"max"`` cap).
        reset_latency: Delay before each reset, in the same forms.
        hang_prob: Probability that a step hangs.
        step_error_prob: Probability that a step raises ``exception``.
        reset_error_prob: Probability that a reset raises ``exception``.
        reset_hang_prob: Probability that a reset hangs.
        close_latency: Delay of ``close``, in the same forms; the wrapped env
            is closed after it, and also when the delay is interrupted (as a
            forceful close would).
        exception: The exception class raised (or its dotted path, for configs).
        schedule: A :class:`ChaosSchedule` shared by the run's wrappers, or the
            name of a process-wide one (:meth:`ChaosSchedule.named`); None
            keeps the counts in this wrapper.

    Attributes:
        faults: The faults this wrapper injected.
        schedule: The schedule counting attempts.
    """

    def __init__(
        self,
        env: AsyncEnv,
        *,
        seed: int = 0,
        step_latency: LatencySpec = None,
        reset_latency: LatencySpec = None,
        hang_prob: float = 0.0,
        step_error_prob: float = 0.0,
        reset_error_prob: float = 0.0,
        reset_hang_prob: float = 0.0,
        close_latency: LatencySpec = 0.0,
        exception: type[Exception] | str = RuntimeError,
        schedule: ChaosSchedule | str | None = None,
    ) -> None:
        super().__init__(env)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int >= 0; got {type(seed).__name__} {seed!r}")
        if seed < 0:
            raise ValueError(f"seed must be an int >= 0; got {seed!r}")
        self.seed = int(seed)
        self.step_latency = _Latency("step_latency", step_latency)
        self.reset_latency = _Latency("reset_latency", reset_latency)
        self.close_latency = _Latency("close_latency", close_latency)
        self.hang_prob = _probability("hang_prob", hang_prob)
        self.step_error_prob = _probability("step_error_prob", step_error_prob)
        self.reset_error_prob = _probability("reset_error_prob", reset_error_prob)
        self.reset_hang_prob = _probability("reset_hang_prob", reset_hang_prob)
        self.exception = _exception_class(exception)
        if isinstance(schedule, str):
            schedule = ChaosSchedule.named(schedule)
        elif schedule is not None and not isinstance(schedule, ChaosSchedule):
            raise TypeError(f"schedule must be a ChaosSchedule, a name or None; got {schedule!r}")
        self._shared = schedule is not None
        self.schedule = schedule if schedule is not None else ChaosSchedule()
        self.faults: list[Fault] = []
        self._env_seed: int | None = None
        self._attempt = 0
        self._step = 0
        self._unseeded_resets = 0
        self._closed = False
        self._fault_rng, self._latency_rng = self._generators((0, 0, 0))

    def _generators(self, key: tuple[int, int, int]) -> tuple[np.random.Generator, ...]:
        # A fixed-length spawn key: entropy lists that differ by trailing zeros would collide.
        root = np.random.SeedSequence(self.seed, spawn_key=key)
        return tuple(np.random.default_rng(child) for child in root.spawn(2))

    def _start_episode(self, env_seed: int | None) -> None:
        if env_seed is None:
            self._attempt = self._unseeded_resets
            self._unseeded_resets += 1
            key = (0, 0, self._attempt)
        else:
            self._attempt = self.schedule.next_attempt(int(env_seed))
            key = (1, int(env_seed), self._attempt)
        self._env_seed = env_seed
        self._step = 0
        self._fault_rng, self._latency_rng = self._generators(key)

    def _record(self, kind: str, step: int | None = None) -> None:
        fault = Fault(kind, self._env_seed, self._attempt, self._step if step is None else step)
        self.faults.append(fault)
        self.schedule.faults.append(fault)

    def _raise(self, kind: str, where: str) -> NoReturn:
        self._record(kind)
        raise self.exception(
            f"chaos: injected {where} error (chaos seed={self.seed}, env_seed={self._env_seed}, "
            f"attempt={self._attempt})"
        )

    async def _hang(self, kind: str) -> NoReturn:
        self._record(kind)
        await anyio.sleep_forever()
        raise AssertionError("unreachable: sleep_forever returned")  # pragma: no cover

    @property
    def attempt(self) -> int:
        """The current episode's attempt number (0: the first reset with its seed)."""
        return self._attempt

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reseed the fault generators for this episode, maybe inject a fault, then reset."""
        self._start_episode(seed)
        hang, error = self._fault_rng.random(2)
        if hang < self.reset_hang_prob:
            await self._hang("reset_hang")
        delay = self.reset_latency.draw(self._latency_rng)
        if delay > 0:
            await anyio.sleep(delay)
        if error < self.reset_error_prob:
            self._raise("reset_error", "reset")
        return await self.env.reset(seed=seed, options=options)

    async def step(self, action: Any) -> StepResult:
        """Maybe inject latency, a hang or an error, then step the wrapped env."""
        self._step += 1
        hang, error = self._fault_rng.random(2)
        if hang < self.hang_prob:
            await self._hang("step_hang")
        delay = self.step_latency.draw(self._latency_rng)
        if delay > 0:
            await anyio.sleep(delay)
        if error < self.step_error_prob:
            self._raise("step_error", f"step {self._step}")
        return await self.env.step(action)

    async def close(self) -> None:
        """Wait ``close_latency``, then close the wrapped env (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            delay = self.close_latency.draw(self._latency_rng)
            if delay > 0:
                self._record("slow_close", step=0)
                await anyio.sleep(delay)
        finally:
            # Interrupted or not, the wrapped env gets its close, as anyio's
            # aclose_forcefully gives a resource its aclose() in a cancelled scope.
            await self.env.close()

    def __repr__(self) -> str:
        shared = ", shared schedule" if self._shared else ""
        return f"<ChaosWrapper seed={self.seed}{shared} {self.env!r}>"
