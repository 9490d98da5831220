"""``stats.json``: the summary and every episode of a rollout, written atomically at run end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .._results import EpisodeResult, RolloutResult
from .._sinks import RunInfo, Sink
from ._journal import episode_record
from ._json import (
    atomic_write_text,
    config_hash,
    dumps,
    package_versions,
    plain_config,
    timestamp,
)
from ._trajectories import TRAJECTORIES_DIR, trajectory_name

__all__ = ["STATS", "StatsFileSink", "merge_results", "stats_text"]

#: The stats file's name in an output directory.
STATS = "stats.json"
_FORMAT = "async-rollout/stats"
_VERSION = 1


def merge_results(done: Iterable[EpisodeResult], result: RolloutResult) -> RolloutResult:
    """The whole rollout: episodes finished by earlier runs plus this run's ``result``.

    An index present in both keeps this run's episode. When there were earlier
    episodes, ``wall_time_s`` and ``steps_per_s`` of the summary describe this
    run alone: the steps it took over the time it ran, not the earlier runs'
    steps over this run's time.
    """
    by_index = {ep.index: ep for ep in done}
    if not by_index:
        return result
    new = list(result.episodes)
    by_index.update((ep.index, ep) for ep in new)
    wall = float(result.summary.get("wall_time_s") or 0.0)
    merged = RolloutResult.from_episodes(result.seed, by_index.values(), wall)
    new_steps = sum(ep.length for ep in new)
    merged.summary["steps_per_s"] = new_steps / wall if wall > 0 else None
    return merged


class StatsFileSink(Sink):
    """Writes ``stats.json`` at the end of the run, also after an error or a cancellation.

    The file holds:

    - ``summary``: as :attr:`RolloutResult.summary`, over every episode of the
      rollout (earlier runs' included on resume; see :func:`merge_results`);
    - ``complete``: every one of the rollout's ``n_episodes`` has a result
      other than ``"cancelled"``;
    - ``episodes``: one object per episode in index order (index, seeds,
      return, length, terminated, truncated, outcome, error, wall/env/policy
      times, metrics, and the trajectory file relative to the output
      directory, or null);
    - ``seed`` (the base seed), ``n_episodes``, ``config`` (the resolved
      config, or null) and ``config_hash``, ``versions`` (packages and
      Python), ``started_at`` / ``ended_at`` of this run and
      ``first_started_at`` of the first run into this directory (ISO 8601,
      UTC), and ``resumed`` / ``n_resumed`` (episodes taken from earlier runs).

    The file is written through a temporary name and renamed, in a worker thread.

    Args:
        output_dir: The output directory.
        n_episodes: Episodes in the whole rollout (None: this run's).
        done: Episodes finished by earlier runs (resume).
        config: The resolved config; None: the one the run announces, if any.
        trajectories: Whether this run writes trajectory files (for the
            ``trajectory`` field of each episode).
        done_files: The trajectory file of each episode in ``done`` that has
            one, relative to the output directory.
        first_started_at: Start of the first run into this directory.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        n_episodes: int | None = None,
        done: Iterable[EpisodeResult] = (),
        config: Mapping[str, Any] | None = None,
        trajectories: bool = False,
        done_files: Mapping[int, str] | None = None,
        first_started_at: str | None = None,
    ) -> None:
        self.path = Path(output_dir) / STATS
        self.n_episodes = n_episodes
        self.done = list(done)
        self.config = config
        self.trajectories = trajectories
        self.first_started_at = first_started_at
        self._run: RunInfo | None = None
        self._files: dict[int, str] = dict(done_files or {})

    def on_run_start(self, run: RunInfo) -> None:
        """Remember the run's seed, start time and config."""
        self._run = run

    def on_episode_end(self, result: EpisodeResult) -> None:
        """Note whether the episode has a trajectory file (the same rule as the writer's)."""
        if self.trajectories and result.outcome != "cancelled" and result.trajectory is not None:
            self._files[result.index] = f"{TRAJECTORIES_DIR}/{trajectory_name(result.index)}"
        else:
            self._files.pop(result.index, None)

    def document(self, result: RolloutResult) -> dict[str, Any]:
        """The content of ``stats.json`` for ``result`` (this run's episodes or all of them)."""
        run = self._run
        merged = merge_results(self.done, result)
        config = self.config if self.config is not None else (run.config if run else None)
        n_episodes = self.n_episodes if self.n_episodes is not None else len(merged.episodes)
        finished = sum(ep.outcome != "cancelled" for ep in merged.episodes)
        started_at = timestamp(run.started_at) if run is not None else None
        episodes = [episode_record(ep, self._files.get(ep.index)) for ep in merged.episodes]
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "summary": merged.summary,
            "complete": finished == n_episodes,
            "n_episodes": n_episodes,
            "seed": merged.seed if merged.seed is not None else (run.seed if run else None),
            "config": plain_config(config),
            "config_hash": config_hash(config),
            "versions": package_versions(),
            "started_at": started_at,
            "ended_at": timestamp(datetime.now(UTC)),
            "first_started_at": self.first_started_at or started_at,
            "resumed": bool(self.done),
            "n_resumed": len(self.done),
            "episodes": episodes,
        }

    async def on_run_end(self, result: RolloutResult) -> None:
        """Write ``stats.json`` (through a temporary name, in a worker thread)."""
        document = self.document(result)
        await anyio.to_thread.run_sync(atomic_write_text, self.path, stats_text(document))


def stats_text(document: Mapping[str, Any]) -> str:
    """The text of ``stats.json``: indented, with one line per episode.

    ``json.dumps(indent=2)`` takes Python's slow encoder (the C one does not
    indent) and writes each episode over sixteen lines: ~30 ms for 2000
    episodes, a tenth of what recording them costs. Here only the top level
    is indented and each episode is one line from the C encoder.
    """
    head = {key: value for key, value in document.items() if key != "episodes"}
    text = json.dumps(head, indent=2, default=repr)
    episodes = document.get("episodes")
    if episodes is None:
        return text + "\n"
    lines = ",\n".join(f"    {dumps(episode)}" for episode in episodes)
    listed = f"[\n{lines}\n  ]" if lines else "[]"
    # The head ends with "\n}": the episodes go in as its last key.
    return f'{text[:-2]},\n  "episodes": {listed}\n}}\n' if head else f'{{"episodes": {listed}}}\n'
