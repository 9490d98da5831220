"""The event log (``events.jsonl``): one JSON object per line, for people and tools tailing a run.

Every line has ``event`` and ``time`` (ISO 8601, UTC). The events:

- ``run_start``: ``seed`` (the base seed), ``n_episodes``, ``env_seeds`` and
  ``agent_seeds`` (the whole rollout's), ``indices`` (the episodes this run
  plays), ``concurrency``, ``config_hash`` (SHA-256 of the resolved config's
  canonical JSON, or null), ``resumed`` and ``n_done`` (episodes finished by
  earlier runs);
- ``episode_start``: ``index``, ``env_seed``, ``agent_seed``, ``attempt``
  (1, or more when the episode is played again under ``on_env_error="retry"``
  after an attempt that got past its reset);
- ``retry``: ``index``, ``attempt`` (the number of the coming re-run, 1 for
  the first), ``outcome`` and ``error`` of the failed attempt, ``delay_s``;
- ``episode_end``: ``index``, ``outcome`` (``"completed"``, ``"env_error"``,
  ``"policy_error"``, ``"timeout"``, ``"cancelled"``), ``error`` (the env
  error or the deadline that fired), ``return``, ``length``, ``terminated``,
  ``truncated``, ``wall_time_s``;
- ``run_end``: ``complete`` (every episode of the rollout has a result other
  than cancelled) and ``summary`` (over the whole rollout, as in ``stats.json``).

Lines leave the rollout's process at every episode end (an episode's start
line goes with its end line, one write per episode), at run start and end
and at a retry: they are handed to the output directory's writer process
(:mod:`._writer`), which appends them within milliseconds, also when the
rollout's process was killed right after. So a killed process loses at most
the start lines of the episodes in flight, and a killed writer at most its
last few milliseconds and a partial last line; readers skip a line that does
not parse. Resuming appends to the same file.

Flushing is per episode, not per line: the contract's "flushed at least
once per episode" read as "every finished episode's lines are out of the
process before the next one is handled", which a tailing reader and a
killed run both see, without one system call per line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from .._policy import EpisodeContext
from .._results import EpisodeResult, RolloutResult
from .._sinks import RunInfo, Sink
from ._json import dumps, iso_time
from ._stats import merge_results
from ._writer import FileWriter
from ._writer_child import EPISODE_END, EPISODE_END_FIELDS, EPISODE_START, EPISODE_START_FIELDS

__all__ = ["EVENTS", "EventLogSink"]

#: The event log's file name in an output directory.
EVENTS = "events.jsonl"


def _line(event: str, when: float, fields: dict[str, Any]) -> str:
    return dumps({"event": event, "time": iso_time(when), **fields}) + "\n"


def _format(record: tuple[Any, ...]) -> str:
    """A record's line, formatted here (values that the writer process cannot take)."""
    if record[0] == EPISODE_START:
        fields = dict(zip(EPISODE_START_FIELDS, record[2:], strict=True))
        return _line("episode_start", record[1], fields)
    return _line("episode_end", record[1], dict(zip(EPISODE_END_FIELDS, record[2:], strict=True)))


class EventLogSink(Sink):
    """Appends the run's events to ``events.jsonl``, one line each.

    Each event's values and time are taken on the event loop when it
    happens; the output directory's writer process (see :mod:`._writer`)
    formats and appends the lines, in order. An episode's start goes with
    its end, in one write (see the module documentation).

    Args:
        output_dir: The output directory.
        n_episodes: Episodes in the whole rollout (None: this run's).
        env_seeds: The whole rollout's env seeds (None: this run's).
        agent_seeds: The whole rollout's agent seeds (None: this run's).
        done: Episodes finished by earlier runs (resume).
        config_hash: Hash of the resolved config, if any.
        writer: The writer to use (shared by the sinks of an output
            directory); None: a writer of its own.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        n_episodes: int | None = None,
        env_seeds: list[int] | None = None,
        agent_seeds: list[int] | None = None,
        done: list[EpisodeResult] | None = None,
        config_hash: str | None = None,
        writer: FileWriter | None = None,
    ) -> None:
        self.path = Path(output_dir) / EVENTS
        self.n_episodes = n_episodes
        self.env_seeds = env_seeds
        self.agent_seeds = agent_seeds
        self.done = list(done or ())
        self.config_hash = config_hash
        self._writer = writer if writer is not None else FileWriter()
        self._file = str(self.path)
        self._attempts: dict[int, int] = {}
        # Records of episode starts not sent yet (see _writer_child.format_record).
        self._starts: list[tuple[Any, ...]] = []

    def write(self, event: str, *, flush: bool = True, **fields: Any) -> None:
        """Queue one event line (``event``, ``time``, then ``fields``), after pending starts.

        Values JSON cannot hold are written as their ``repr``. The line goes
        to the writer at once (``flush`` is kept for compatibility).
        """
        self._writer.check()
        self._send_pending(flush=False)
        self._writer.append(self._file, _line(event, time.time(), fields))

    def _send_pending(self, end: tuple[Any, ...] | None = None, *, flush: bool = True) -> None:
        """Send the pending start records, then ``end`` (a record), to the writer."""
        records, self._starts = self._starts, []
        if end is not None:
            records.append(end)
        if not records:
            return
        try:
            # The writer process formats the lines (see _writer_child.format_record).
            self._writer.append_records(self._file, records, flush=flush)
        except ValueError:  # values that are not plain (numpy scalars, say)
            self._writer.append(self._file, "".join(map(_format, records)), flush=flush)

    async def on_run_start(self, run: RunInfo) -> None:
        """Start the writer; log the run's seeds, size and config hash."""
        self._attempts.clear()
        self._writer.acquire()
        self.write(
            "run_start",
            seed=run.seed,
            n_episodes=self.n_episodes if self.n_episodes is not None else run.n_episodes,
            env_seeds=self.env_seeds if self.env_seeds is not None else run.env_seeds,
            agent_seeds=self.agent_seeds if self.agent_seeds is not None else run.agent_seeds,
            indices=run.indices,
            concurrency=run.concurrency,
            config_hash=self.config_hash,
            resumed=bool(self.done),
            n_done=len(self.done),
        )
        await self._writer.start()

    def on_episode_start(self, episode: EpisodeContext) -> Awaitable[None] | None:
        """Log the start of an episode (after its reset) and which attempt it is."""
        index = episode.index
        attempt = self._attempts.get(index, 0) + 1
        self._attempts[index] = attempt
        # Sent with the next line (an episode's end, most often): one write per episode,
        # and a killed process loses at most the starts of the episodes in flight.
        self._starts.append(
            (EPISODE_START, time.time(), index, episode.env_seed, episode.agent_seed, attempt)
        )
        return None

    def on_retry(self, failed: EpisodeResult, attempt: int, delay_s: float) -> None:
        """Log that an episode failed and will be re-run (``attempt``: the re-run's number)."""
        self.write(
            "retry",
            index=failed.index,
            attempt=attempt,
            outcome=failed.outcome,
            error=failed.error,
            delay_s=delay_s,
        )

    def on_episode_end(self, result: EpisodeResult) -> Awaitable[None] | None:
        """Log the end of an episode with its outcome and error."""
        self._attempts.pop(result.index, None)
        writer = self._writer
        writer.check()
        r = result
        outcome = (r.outcome, r.error, r.total_reward, r.length, r.terminated, r.truncated)
        self._send_pending((EPISODE_END, time.time(), r.index, *outcome, r.wall_time_s))
        return writer.wait() if writer.waiting else None

    async def on_run_end(self, result: RolloutResult) -> None:
        """Log the summary of the whole rollout; wait until every line is written."""
        try:
            merged = merge_results(self.done, result)
            n_episodes = self.n_episodes if self.n_episodes is not None else len(merged.episodes)
            finished = sum(ep.outcome != "cancelled" for ep in merged.episodes)
            self.write("run_end", complete=finished == n_episodes, summary=merged.summary)
        finally:
            await self._writer.release()

    def close(self) -> None:
        """Write what is queued, blocking (the next run starts the writer again)."""
        self._send_pending()
        self._writer.close()
