"""Sinks: observers of a rollout (stats, trajectories, event log, progress, your own)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ._policy import EpisodeContext
from ._results import EpisodeResult, RolloutResult, summarize

__all__ = ["RunInfo", "Sink", "StatsSink"]


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a sink learns at the start of a run."""

    seed: int | None
    """The base seed (None when every seed was given explicitly)."""
    indices: list[int]
    """The episode indices this run will play (all of them, unless resuming)."""
    env_seeds: list[int]
    """The env seed of each of ``indices``."""
    agent_seeds: list[int]
    """The agent seed of each of ``indices``."""
    n_episodes: int
    """How many episodes the whole rollout has."""
    concurrency: int
    """How many episodes are in flight at most."""
    started_at: datetime
    """Wall-clock start of the run (UTC)."""
    config: Mapping[str, Any] | None = None
    """The resolved config, for config-driven runs."""
    output_dir: str | None = None
    """Where file sinks write, if anywhere."""


class Sink:
    """Base class of rollout observers: every hook is optional and a no-op here.

    Override only the hooks you need, as plain or ``async`` methods; the
    runner calls a sink's hook only when the sink's class overrides it (so an
    unused ``on_step`` costs nothing per step). A plain hook may also return
    an awaitable, which the runner awaits: a hook that only sometimes has to
    wait stays a cheap call the rest of the time. Hooks run on the event
    loop: hand slow work (large file writes) to a thread. A slow async hook
    slows the rollout rather than losing data.
    """

    def on_run_start(self, run: RunInfo) -> Awaitable[None] | None:
        """Called once before the first episode starts."""
        return None

    def on_episode_start(self, episode: EpisodeContext) -> Awaitable[None] | None:
        """Called after an episode's env was reset."""
        return None

    def on_step(
        self,
        episode: EpisodeContext,
        action: Any,
        observation: Any,
        reward: Any,
        terminated: bool,
        truncated: bool,
        info: dict[str, Any],
    ) -> Awaitable[None] | None:
        """Called after every step, with the step's action and outcome."""
        return None

    def on_episode_end(self, result: EpisodeResult) -> Awaitable[None] | None:
        """Called when an episode has a result, whatever its outcome."""
        return None

    def on_retry(
        self, failed: EpisodeResult, attempt: int, delay_s: float
    ) -> Awaitable[None] | None:
        """Called under ``on_env_error="retry"`` before a failed episode is re-run.

        ``failed`` is the failed attempt's result, ``attempt`` the number of
        the coming re-run (1 for the first), ``delay_s`` the backoff before it.
        """
        return None

    def on_run_end(self, result: RolloutResult) -> Awaitable[None] | None:
        """Called once at the end of the run, also after an error or a cancellation."""
        return None


class StatsSink(Sink):
    """Keeps every episode result in memory and summarizes them on demand.

    Args:
        keep_trajectories: Keep each result's trajectory; without it (when
            trajectories go to disk) the results are kept without them, so
            memory stays flat over long runs.
    """

    def __init__(self, *, keep_trajectories: bool = True) -> None:
        self.episodes: list[EpisodeResult] = []
        self.keep_trajectories = keep_trajectories

    def on_episode_end(self, result: EpisodeResult) -> None:
        """Keep ``result``."""
        if not self.keep_trajectories and result.trajectory is not None:
            result = replace(result, trajectory=None)
        self.episodes.append(result)

    def summary(self, wall_time_s: float) -> dict[str, Any]:
        """The summary of the episodes so far (see :func:`async_rollout._results.summarize`)."""
        return summarize(self.episodes, wall_time_s)


_HOOKS = (
    "on_run_start",
    "on_episode_start",
    "on_step",
    "on_episode_end",
    "on_retry",
    "on_run_end",
)


class SinkSet:
    """Calls one hook on every sink that overrides it, awaiting async ones."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)
        self._hooks: dict[str, list[tuple[Callable[..., Any], bool]]] = {}
        for name in _HOOKS:
            calls = []
            for sink in self.sinks:
                if getattr(type(sink), name, None) is getattr(Sink, name):
                    continue
                fn = getattr(sink, name)
                calls.append((fn, inspect.iscoroutinefunction(fn)))
            self._hooks[name] = calls
        self.has_step_hooks = bool(self._hooks["on_step"])
        self.has_start_hooks = bool(self._hooks["on_episode_start"])

    async def call(self, name: str, *args: Any) -> None:
        """Call hook ``name`` with ``args`` on each sink, in order.

        An ``async`` hook is awaited; so is an awaitable that a plain hook
        returns (a sink that only sometimes needs to wait, e.g. for the disk,
        can stay a cheap plain call the rest of the time).
        """
        for fn, is_async in self._hooks[name]:
            if is_async:
                await fn(*args)
            else:
                returned = fn(*args)
                if returned is not None and inspect.isawaitable(returned):
                    await returned
