"""The command line's progress bar: a sink drawing episodes, steps/s and failures on stderr.

Only the CLI imports this module, so ``import async_rollout`` never pays for rich.
"""

from __future__ import annotations

import time
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ._results import EpisodeResult, RolloutResult
from ._sinks import RunInfo, Sink

__all__ = ["ProgressSink"]


class ProgressSink(Sink):
    """Shows a live progress bar of a rollout: episodes done of the total, steps/s, failures.

    Steps are counted when their episode ends: counting every step would put a
    hook call on the rollout's hot path for the sake of a display.

    Args:
        stream: Where the bar is drawn; stderr when None, so that stdout stays
            free for the summary.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.console = Console(file=stream, stderr=stream is None)
        self._progress = Progress(
            TextColumn("[bold]episodes"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9} steps/s"),
            TextColumn("{task.fields[failures]}"),
            TimeElapsedColumn(),
            console=self.console,
            # A rollout can end in well under a second: leave its last state on screen.
            transient=False,
            refresh_per_second=5,
        )
        self._task: TaskID | None = None
        self._steps = 0
        self._failed = 0
        self._cancelled = 0
        self._started = 0.0

    def on_run_start(self, run: RunInfo) -> None:
        """Start drawing; episodes finished by an earlier run (resume) count as done."""
        self._started = time.perf_counter()
        self._task = self._progress.add_task(
            "rollout",
            total=run.n_episodes,
            completed=run.n_episodes - len(run.indices),
            rate="-",
            failures=self._failures_text(),
        )
        self._progress.start()

    def on_episode_end(self, result: EpisodeResult) -> None:
        """Advance the bar by one episode and refresh the rates."""
        if self._task is None:
            return
        self._steps += result.length
        if result.failed:
            self._failed += 1
        if result.outcome == "cancelled":
            # A cancelled episode has not been done: it will be played again on resume.
            self._cancelled += 1
        elapsed = time.perf_counter() - self._started
        rate = f"{self._steps / elapsed:,.0f}" if elapsed > 0 else "-"
        self._progress.update(
            self._task,
            advance=0 if result.outcome == "cancelled" else 1,
            rate=rate,
            failures=self._failures_text(),
        )

    def on_run_end(self, result: RolloutResult) -> None:
        """Stop drawing, leaving the final state of the bar on screen."""
        self.close()

    def close(self) -> None:
        """Stop the live display; idempotent, and safe when the run never started."""
        self._progress.stop()

    def _failures_text(self) -> str:
        text = f"{self._failed} failed"
        if self._failed:
            text = f"[red]{text}[/red]"
        if self._cancelled:
            text += f", {self._cancelled} cancelled"
        return text
