"""What the driver and the Ray workers send each other: the job, replies, events and errors.

Everything here crosses a process boundary through Ray's serializer
(cloudpickle), so it holds plain data: no live envs, no event-loop objects.
"""

from __future__ import annotations

import copy
import traceback
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .._env import EnvFactory
from .._loop import LoopSettings, _Episode, describe
from .._policy import EpisodeContext
from .._results import EpisodeResult
from .._types import to_container
from ..errors import RolloutError
from ._shared import SharedDir

__all__ = [
    "Ended",
    "Event",
    "Job",
    "Reply",
    "Retried",
    "ShippedError",
    "Started",
    "describe_episode",
    "portable_factory",
]


@dataclass(frozen=True, slots=True)
class Job:
    """What every worker of one run needs; pickled once on the driver and shared."""

    make_env: Any
    """An env factory (``make_env(worker_index) -> AsyncEnv``) without live envs."""
    agent: Any
    """The policy object, or a ``_target_`` config, or None (a :class:`RandomPolicy`)."""
    settings: LoopSettings
    """How episodes are played: the runner's settings, unchanged."""
    concurrency: int
    """Episodes in flight at most on each worker."""
    n_workers: int
    """How many workers the run has (for worker indices and messages)."""
    forward_events: bool
    """Send episode starts and retries to the driver (its sinks listen to them)."""
    shared: SharedDir | None = None
    """Where the worker writes trajectory files itself (``shared_output_dir``); None: the
    results bring the trajectories to the driver."""


@dataclass(frozen=True, slots=True)
class Started:
    """An episode's env was reset (the driver calls its sinks' ``on_episode_start``)."""

    episode: EpisodeContext


@dataclass(frozen=True, slots=True)
class Retried:
    """A failed episode is about to be re-run (the driver calls ``on_retry``)."""

    failed: EpisodeResult
    attempt: int
    delay_s: float


@dataclass(frozen=True, slots=True)
class Ended:
    """An episode has its result (the driver calls the run's ``on_result``)."""

    result: EpisodeResult
    stored: bool = False
    """The worker wrote the episode's trajectory file itself (``Job.shared``); the result
    comes without the trajectory."""


Event: TypeAlias = Started | Retried | Ended


@dataclass(frozen=True, slots=True)
class Reply:
    """A worker's answer to a poll: what happened since the last one, and what it needs."""

    events: list[Event] = field(default_factory=list)
    """Starts, retries and results, in the order they happened."""
    wants: int = 0
    """How many more episodes the worker can take (queued work included)."""
    done: bool = False
    """The worker's loop has ended (finished, stopped, or failed: see ``error``)."""
    error: ShippedError | None = None
    """Why the worker's loop stopped the run, if it did."""


class ShippedError:
    """An exception made fit to cross to the driver, and raised there with its own type.

    Exceptions do not always survive pickling: one whose ``__init__`` has
    required keyword arguments (:class:`~async_rollout.RolloutTimeout`) fails
    to unpickle. This keeps the type, ``args`` and attributes (the notes
    included) and rebuilds the exception without calling ``__init__``; an
    exception that cannot be rebuilt that way becomes a
    :class:`~async_rollout.RolloutError` with the same text. The worker's
    traceback becomes the rebuilt exception's ``__cause__``.

    Args:
        exc: The exception to ship.
        dumps: The serializer the trip will use, to check the type survives it.
    """

    def __init__(self, exc: BaseException, dumps: Any = None) -> None:
        self.text = "; ".join([describe(exc), *getattr(exc, "__notes__", ())])
        self.traceback = "".join(traceback.format_exception(exc)).rstrip()
        self.error_type: type[BaseException] | None = type(exc)
        self.args: tuple[Any, ...] = tuple(exc.args)
        self.state: dict[str, Any] = dict(getattr(exc, "__dict__", {}))
        if dumps is not None:
            try:
                dumps((self.error_type, self.args, self.state))
            except Exception:
                self.error_type, self.args, self.state = None, (), {}

    def restore(self) -> BaseException:
        """The exception to raise on the driver."""
        exc: BaseException | None = None
        if self.error_type is not None:
            try:
                exc = self.error_type.__new__(self.error_type, *self.args)
                exc.args = self.args
                exc.__dict__.update(self.state)
            except Exception:
                exc = None
        if exc is None:
            exc = RolloutError(self.text)
        exc.__cause__ = RolloutError(f"the traceback on the Ray worker:\n{self.traceback}")
        return exc


def portable_factory(make_env: Any) -> Any:
    """``make_env`` fit to ship: an :class:`EnvFactory` without the env it may keep.

    A factory keeps the env made to read the spaces for its first worker: a live
    env stays on the driver. A ``DictConfig`` spec becomes plain dicts, resolved
    here, so interpolations mean on the workers what they mean on the driver.
    """
    if not isinstance(make_env, EnvFactory):
        return make_env
    shipped = copy.copy(make_env)
    shipped._spare = None
    spec = to_container(make_env.spec)
    if spec is not make_env.spec:
        from .._env import env_factory

        plain = env_factory(spec, offload=make_env.offload)
        shipped._make = plain._make
        shipped.spec = spec
    return shipped


def describe_episode(ep: _Episode) -> str:
    """``"episode 17 (env_seed=..., agent_seed=...)"``, as messages name an episode."""
    return f"episode {ep.index} (env_seed={ep.env_seed}, agent_seed={ep.agent_seed})"
