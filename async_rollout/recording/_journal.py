"""The episode journal (``episodes.jsonl``): what resume reads to know which episodes are done.

One JSON object per finished episode, handed to the writer (see
:mod:`._writer`) as the episode ends, right after its trajectory file: the
writer process appends the line once the file is written. A process killed
mid-write leaves at most a partial last line, which readers skip. A line
names the episode's trajectory file, if it has one; resume counts an
episode as done only when that file exists too (a file written by a worker
thread, or by an older version, may lag its line). Cancelled episodes are
not journaled: resume plays them again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any

from .._results import EpisodeResult, RolloutResult
from .._sinks import RunInfo, Sink
from .._types import OUTCOMES
from ._json import dumps
from ._trajectories import TRAJECTORIES_DIR, trajectory_name
from ._writer import FileWriter
from ._writer_child import JOURNAL_LINE

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
    """Appends one line per finished (not cancelled) episode to ``episodes.jsonl``.

    The line is formatted on the event loop as the episode ends and handed
    to the output directory's :class:`~._writer.FileWriter` (after the
    episode's trajectory file, which is written first), whose helper process
    appends it.

    Args:
        output_dir: The output directory.
        trajectories: Whether trajectory files are written for this run (the
            journal notes each episode's file, which resume checks).
        writer: The writer to use (shared by the sinks of an output
            directory); None: a writer of its own.
        flush: Send each line to the writer at once; False: leave it for
            the next sink sharing the writer (which must flush).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        trajectories: bool,
        writer: FileWriter | None = None,
        flush: bool = True,
    ) -> None:
        self.path = Path(output_dir) / JOURNAL
        self.trajectories = trajectories
        self.flush = flush
        self._writer = writer if writer is not None else FileWriter()
        self._file = str(self.path)

    async def on_run_start(self, run: RunInfo) -> None:
        """Start the writer; create the journal if it does not exist yet."""
        self._writer.acquire()
        self._writer.append(self._file, "")
        await self._writer.start()

    def on_episode_end(self, result: EpisodeResult) -> Awaitable[None] | None:
        """Queue ``result``'s line, unless it was cancelled."""
        if result.outcome == "cancelled":
            return None
        trajectory = None
        if self.trajectories and result.trajectory is not None:
            trajectory = f"{TRAJECTORIES_DIR}/{trajectory_name(result.index)}"
        writer = self._writer
        writer.check()
        r = result
        outcome = (r.total_reward, r.length, r.terminated, r.truncated, r.outcome, r.error)
        times = (r.wall_time_s, r.env_time_s, r.policy_time_s)
        ids = (JOURNAL_LINE, r.index, r.env_seed, r.agent_seed)
        record = (*ids, *outcome, *times, r.metrics, trajectory)
        try:
            # The writer process formats the line (the same as episode_record's).
            writer.append_records(self._file, [record], flush=self.flush)
        except ValueError:  # values that are not plain (numpy scalars, say)
            line = dumps(episode_record(result, trajectory)) + "\n"
            writer.append(self._file, line, flush=self.flush)
        return writer.wait() if writer.waiting else None

    async def on_run_end(self, result: RolloutResult) -> None:
        """Release the writer: the last of its sinks waits for every line, raises a failure."""
        await self._writer.release()

    def close(self) -> None:
        """Write what is queued, blocking (the next run starts the writer again)."""
        self._writer.close()
