"""The episode journal (``episodes.jsonl``): what resume reads to know which episodes are done.

One JSON object per finished episode, appended and flushed as the episode
ends. A process killed mid-write leaves at most a partial last line, which
readers skip. A line names the episode's trajectory file, if one is to be
written; the file may still be queued when the line is written, so resume
counts an episode as done only when that file exists too. Cancelled episodes
are not journaled: resume plays them again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .._results import EpisodeResult, RolloutResult
from .._sinks import RunInfo, Sink
from .._types import OUTCOMES
from ._json import dumps
from ._trajectories import TRAJECTORIES_DIR, trajectory_name

__all__ = ["JOURNAL", "EpisodeJournal", "episode_from_record", "episode_record", "read_journal"]

logger = logging.getLogger("async_rollout")

#: The journal's file name in an output directory.
JOURNAL = "episodes.jsonl"


def episode_record(result: EpisodeResult, trajectory: str | None = None) -> dict[str, Any]:
    """An episode result as JSON-able data (the trajectory itself left out).

    Args:
        result: The episode.
        trajectory: The path of its trajectory file, relative to the output
            directory, if one was written.
    """
    return {
        "index": result.index,
        "env_seed": result.env_seed,
        "agent_seed": result.agent_seed,
        "return": result.total_reward,
        "length": result.length,
        "terminated": result.terminated,
        "truncated": result.truncated,
        "outcome": result.outcome,
        "error": result.error,
        "wall_time_s": result.wall_time_s,
        "env_time_s": result.env_time_s,
        "policy_time_s": result.policy_time_s,
        "metrics": dict(result.metrics),
        "trajectory": trajectory,
    }


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int or null; got {value!r}")
    return value


def episode_from_record(record: Mapping[str, Any]) -> EpisodeResult:
    """Rebuild an :class:`EpisodeResult` (without trajectory) from :func:`episode_record` data.

    Raises:
        ValueError: A field is missing or has the wrong type.
    """
    try:
        index = record["index"]
        outcome = record["outcome"]
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be an int >= 0; got {index!r}")
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        error = record.get("error")
        metrics = record.get("metrics") or {}
        if not isinstance(metrics, Mapping):
            raise ValueError(f"metrics must be an object; got {metrics!r}")
        return EpisodeResult(
            index=index,
            env_seed=_optional_int(record.get("env_seed"), "env_seed"),
            agent_seed=_optional_int(record.get("agent_seed"), "agent_seed"),
            total_reward=float(record["return"]),
            length=int(record["length"]),
            terminated=bool(record["terminated"]),
            truncated=bool(record["truncated"]),
            outcome=outcome,
            error=None if error is None else str(error),
            wall_time_s=float(record.get("wall_time_s", 0.0)),
            env_time_s=float(record.get("env_time_s", 0.0)),
            policy_time_s=float(record.get("policy_time_s", 0.0)),
            metrics={str(k): float(v) for k, v in metrics.items()},
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad episode record {dict(record)!r}: {exc!r}") from exc


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The parseable records of a journal, in file order; a missing file has none.

    Lines that do not parse (the partial last line of a killed process) are
    skipped with a warning.
    """
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d: skipping a partial or corrupt line", path, number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class EpisodeJournal(Sink):
    """Appends one line per finished (not cancelled) episode to ``episodes.jsonl``, flushed.

    Args:
        output_dir: The output directory.
        trajectories: Whether trajectory files are written for this run (the
            journal notes each episode's file, which resume checks).
    """

    def __init__(self, output_dir: str | os.PathLike[str], *, trajectories: bool) -> None:
        self.path = Path(output_dir) / JOURNAL
        self.trajectories = trajectories
        self._file: IO[str] | None = None

    def on_run_start(self, run: RunInfo) -> None:
        """Open the journal for appending."""
        self._open()

    def _open(self) -> IO[str]:
        if self._file is None or self._file.closed:
            self._file = open(self.path, "a", encoding="utf-8")
        return self._file

    def on_episode_end(self, result: EpisodeResult) -> None:
        """Append ``result`` and flush, unless it was cancelled."""
        if result.outcome == "cancelled":
            return
        trajectory = None
        if self.trajectories and result.trajectory is not None:
            trajectory = f"{TRAJECTORIES_DIR}/{trajectory_name(result.index)}"
        f = self._open()
        # A small append per episode: cheap enough to do on the loop, and flushed so
        # that a killed process loses at most this line.
        f.write(dumps(episode_record(result, trajectory)) + "\n")
        f.flush()

    def on_run_end(self, result: RolloutResult) -> None:
        """Close the journal."""
        self.close()

    def close(self) -> None:
        """Close the file (idempotent; the next episode opens it again)."""
        if self._file is not None:
            self._file.close()
