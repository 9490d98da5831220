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

Lines are flushed at every episode end (and run start and end, and retry),
so a killed process loses at most the start lines of the episodes in flight
and a partial last line; readers skip a line that does not parse. Resuming appends
to the same file.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .._policy import EpisodeContext
from .._results import EpisodeResult, RolloutResult
from .._sinks import RunInfo, Sink
from ._json import dumps
from ._stats import merge_results

__all__ = ["EVENTS", "EventLogSink"]

#: The event log's file name in an output directory.
EVENTS = "events.jsonl"


class EventLogSink(Sink):
    """Appends the run's events to ``events.jsonl``, one flushed line each.

    Args:
        output_dir: The output directory.
        n_episodes: Episodes in the whole rollout (None: this run's).
        env_seeds: The whole rollout's env seeds (None: this run's).
        agent_seeds: The whole rollout's agent seeds (None: this run's).
        done: Episodes finished by earlier runs (resume).
        config_hash: Hash of the resolved config, if any.
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
    ) -> None:
        self.path = Path(output_dir) / EVENTS
        self.n_episodes = n_episodes
        self.env_seeds = env_seeds
        self.agent_seeds = agent_seeds
        self.done = list(done or ())
        self.config_hash = config_hash
        self._file: IO[str] | None = None
        self._attempts: dict[int, int] = {}

    def write(self, event: str, *, flush: bool = True, **fields: Any) -> None:
        """Append one event line (``event``, ``time``, then ``fields``), flushed unless told not.

        Values JSON cannot hold are written as their ``repr``.
        """
        if self._file is None or self._file.closed:
            self._file = open(self.path, "a", encoding="utf-8")
        line = {"event": event, "time": datetime.now(UTC).isoformat(), **fields}
        self._file.write(dumps(line) + "\n")
        if flush:
            self._file.flush()

    def on_run_start(self, run: RunInfo) -> None:
        """Log the run's seeds, size and config hash."""
        self._attempts.clear()
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

    def on_episode_start(self, episode: EpisodeContext) -> None:
        """Log the start of an episode (after its reset) and which attempt it is."""
        attempt = self._attempts.get(episode.index, 0) + 1
        self._attempts[episode.index] = attempt
        # Flushed with the next episode end: one write per episode is enough to lose
        # at most the lines of the episodes in flight.
        self.write(
            "episode_start",
            flush=False,
            index=episode.index,
            env_seed=episode.env_seed,
            agent_seed=episode.agent_seed,
            attempt=attempt,
        )

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

    def on_episode_end(self, result: EpisodeResult) -> None:
        """Log the end of an episode with its outcome and error."""
        self._attempts.pop(result.index, None)
        fields: dict[str, Any] = {
            "index": result.index,
            "outcome": result.outcome,
            "error": result.error,
            "return": result.total_reward,
            "length": result.length,
            "terminated": result.terminated,
            "truncated": result.truncated,
            "wall_time_s": result.wall_time_s,
        }
        self.write("episode_end", **fields)

    def on_run_end(self, result: RolloutResult) -> None:
        """Log the summary of the whole rollout and close the file."""
        merged = merge_results(self.done, result)
        n_episodes = self.n_episodes if self.n_episodes is not None else len(merged.episodes)
        finished = sum(ep.outcome != "cancelled" for ep in merged.episodes)
        try:
            self.write("run_end", complete=finished == n_episodes, summary=merged.summary)
        finally:
            self.close()

    def close(self) -> None:
        """Close the file (idempotent; the next event opens it again)."""
        if self._file is not None:
            self._file.close()
