"""A picture of a recorded rollout: return and length distributions, episodes finished over time.

What ``async-rollout plot OUTPUT_DIR`` draws. It needs matplotlib (the
``plot`` extra), imported only when a plot is made, and draws with the Agg
canvas directly: no pyplot, so no global backend is switched and no window
opens.

Where the numbers come from:

- the episodes: ``stats.json`` (the whole rollout, earlier runs included on
  resume), else the journal ``episodes.jsonl`` (a run killed before it wrote
  ``stats.json``). The histograms cover completed episodes, as the summary's
  statistics do.
- the timeline: the ``episode_end`` lines of ``events.jsonl`` (written with
  ``record_event_logs``), which carry wall-clock times. Runs resumed into the
  same directory are joined end to end (the idle time between them left out),
  each resume marked by a dashed line. Without an event log there are no
  per-episode timestamps (``stats.json`` keeps each episode's duration, not its
  end), so the third panel shows the returns in the order the journal recorded
  the episodes finishing, and says so in its title.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ._events import EVENTS
from ._journal import JOURNAL, read_journal
from ._stats import STATS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["DEFAULT_PLOT_NAME", "PlotReport", "RolloutRecord", "plot_rollout", "read_rollout"]

#: The file ``plot_rollout`` writes into the output directory when given no path.
DEFAULT_PLOT_NAME = "rollout.png"
_INSTALL_HINT = 'pip install "async-rollout[plot]"'
#: Integer data spanning at most this many values gets one bar per value.
_MAX_INTEGER_BINS = 60
_MAX_BINS = 50


@dataclass
class RolloutRecord:
    """What a plot needs from an output directory, read by :func:`read_rollout`."""

    episodes: list[dict[str, Any]]
    """One record per episode with a result (``stats.json``'s or the journal's form)."""
    source: str
    """The file the episodes came from (``stats.json`` or ``episodes.jsonl``)."""
    n_episodes: int | None
    """Episodes in the whole rollout, if known."""
    finish_times: list[tuple[float, str]] = field(default_factory=list)
    """``(seconds of run time, outcome)`` of each finished episode, from the event log."""
    resumes: list[float] = field(default_factory=list)
    """Run time (seconds) at which each resumed run started."""


@dataclass(frozen=True)
class PlotReport:
    """What :func:`plot_rollout` drew."""

    path: Path
    """The PNG written."""
    n_episodes: int
    """Episodes with a result."""
    n_completed: int
    """Completed episodes (those in the histograms)."""
    timeline: str
    """``"events"`` (finish times from ``events.jsonl``) or ``"journal order"`` (none)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", key="output_dir") from exc


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _read_events(path: Path) -> tuple[list[tuple[float, str]], list[float]]:
    """Finish times (run time in seconds) and resume points from an event log.

    Each ``run_start`` opens a segment; a segment's time counts from its own
    start and is shifted by the length of the segments before it, so the idle
    time between a killed run and its resume does not stretch the picture.
    Lines that do not parse (a killed writer's last line) are skipped.
    """
    finishes: list[tuple[float, str]] = []
    resumes: list[float] = []
    offset = 0.0  # run time at the start of the current segment
    start: datetime | None = None
    last = 0.0  # run time of the latest event seen
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            when = _parse_time(event.get("time"))
            if when is None:
                continue
            if event.get("event") == "run_start" or start is None:
                if start is not None:
                    offset = last
                    resumes.append(offset)
                start = when
            now = offset + max(0.0, (when - start).total_seconds())
            last = max(last, now)
            if event.get("event") == "episode_end" and event.get("outcome") != "cancelled":
                finishes.append((now, str(event.get("outcome"))))
    return finishes, resumes


def read_rollout(output_dir: str | os.PathLike[str]) -> RolloutRecord:
    """Read the episodes (and their finish times, when logged) of an output directory.

    Args:
        output_dir: A rollout's output directory.

    Raises:
        ConfigError: The directory does not exist or holds neither
            ``stats.json`` nor ``episodes.jsonl``, or ``stats.json`` is unreadable.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise ConfigError(f"output_dir {str(folder)!r} is not a directory", key="output_dir")
    stats_path = folder / STATS
    if stats_path.is_file():
        stats = _read_json(stats_path)
        episodes = stats.get("episodes") if isinstance(stats, dict) else None
        if not isinstance(episodes, list):
            raise ConfigError(f"{stats_path} has no 'episodes' list", key="output_dir")
        n_episodes = stats.get("n_episodes")
        record = RolloutRecord(
            episodes=[ep for ep in episodes if isinstance(ep, dict)],
            source=STATS,
            n_episodes=n_episodes if isinstance(n_episodes, int) else None,
        )
    elif (folder / JOURNAL).is_file():
        record = RolloutRecord(
            episodes=read_journal(folder / JOURNAL), source=JOURNAL, n_episodes=None
        )
    else:
        raise ConfigError(
            f"output_dir {str(folder)!r} holds no {STATS} or {JOURNAL}: "
            "is it the output_dir of a rollout?",
            key="output_dir",
        )
    if (folder / EVENTS).is_file():
        record.finish_times, record.resumes = _read_events(folder / EVENTS)
    return record


def _numbers(episodes: Sequence[Mapping[str, Any]], key: str) -> np.ndarray[Any, Any]:
    values = [ep.get(key) for ep in episodes]
    finite = [
        float(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    return np.asarray(finite, dtype=np.float64)


def _bins(values: np.ndarray[Any, Any]) -> list[float] | int:
    """One bar per value for integer data over a short range, else numpy's automatic edges."""
    low, high = float(values.min()), float(values.max())
    if np.all(values == np.round(values)) and high - low < _MAX_INTEGER_BINS:
        return [float(x) for x in np.arange(low - 0.5, high + 1.5)]
    if low == high:
        return 1
    edges = np.histogram_bin_edges(values, bins="auto")
    return [float(x) for x in edges] if len(edges) <= _MAX_BINS + 1 else _MAX_BINS


def _histogram(ax: Axes, values: np.ndarray[Any, Any], what: str, color: str) -> None:
    ax.set_title(f"{what} of completed episodes")
    ax.set_xlabel(what)
    ax.set_ylabel("episodes")
    if values.size == 0:
        ax.text(0.5, 0.5, "no completed episode", ha="center", va="center", transform=ax.transAxes)
        return
    bins = _bins(values)
    ax.hist(values, bins=bins, color=color, edgecolor="white", linewidth=0.5)
    if isinstance(bins, list) and len(bins) <= 3:
        # One or two bars would fill the whole panel and look like a colored background.
        center, width = float(values.mean()), float(bins[-1] - bins[0])
        ax.set_xlim(center - 4 * width, center + 4 * width)
    mean, median = float(values.mean()), float(np.median(values))
    ax.axvline(mean, color="black", linewidth=1.2, label=f"mean {mean:.4g}")
    ax.axvline(median, color="black", linewidth=1.2, linestyle=":", label=f"median {median:.4g}")
    ax.legend(loc="best", fontsize="small", frameon=False)


def _timeline(ax: Axes, record: RolloutRecord) -> str:
    """Draw episodes finished over run time; without timestamps, returns in journal order."""
    if record.finish_times:
        times = np.asarray([t for t, _ in record.finish_times])
        order = np.argsort(times, kind="stable")
        times = times[order]
        failed = np.asarray(
            [outcome != "completed" for _, outcome in record.finish_times], dtype=bool
        )[order]
        # Every episode counts at its finish (from 0 at time 0); the steps show bursts and stalls.
        xs = np.concatenate([[0.0], times])
        ax.step(xs, np.arange(len(xs)), where="post", label="finished", color="C0")
        if failed.any():
            ax.step(
                xs,
                np.concatenate([[0], np.cumsum(failed)]),
                where="post",
                label="failed (error or timeout)",
                color="C3",
            )
        for i, at in enumerate(record.resumes):
            label = "resumed" if i == 0 else None
            ax.axvline(at, color="grey", linestyle="--", linewidth=1, label=label)
        joined = " (resumed runs joined end to end)" if record.resumes else ""
        ax.set_title("episodes finished over time")
        ax.set_xlabel(f"run time (s){joined}")
        ax.set_ylabel("episodes finished")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize="small", frameon=False)
        return "events"
    # No per-episode timestamps: the journal's line order is the order episodes finished
    # (stats.json is sorted by index, so only the journal keeps it).
    ax.set_title(
        "no timestamps (run with runner.record_event_logs=true for a timeline):\n"
        "returns in the order the episodes finished (episode journal)",
        fontsize="medium",
    )
    ax.set_xlabel("episodes finished (journal order)")
    ax.set_ylabel("return")
    return "journal order"


def _journal_order(folder: Path, record: RolloutRecord) -> list[dict[str, Any]]:
    journal = read_journal(folder / JOURNAL)
    return journal if journal else record.episodes


def _headline(folder: Path, record: RolloutRecord) -> str:
    outcomes: dict[str, int] = {}
    for ep in record.episodes:
        outcome = str(ep.get("outcome"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    shown = ", ".join(f"{n} {name}" for name, n in sorted(outcomes.items())) or "none"
    of = f" of {record.n_episodes}" if record.n_episodes is not None else ""
    return f"{folder.resolve().name}: {len(record.episodes)}{of} episodes ({shown})"


def plot_rollout(
    output_dir: str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    dpi: int = 100,
) -> PlotReport:
    """Draw a rollout's return and length distributions and its timeline to a PNG.

    Blocking (reads files, renders): call it in a worker thread from async code.

    Args:
        output_dir: The rollout's output directory.
        path: The PNG to write; default ``OUTPUT_DIR/rollout.png``.
        dpi: Resolution of the image (the figure is 11 x 8 inches).

    Returns:
        What was drawn and where.

    Raises:
        ConfigError: ``output_dir`` is not a rollout's output directory.
        ImportError: matplotlib is not installed (the message says how to get it).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            f"plotting needs matplotlib, which is not installed: {_INSTALL_HINT}"
        ) from exc

    folder = Path(output_dir)
    record = read_rollout(folder)
    target = folder / DEFAULT_PLOT_NAME if path is None else Path(path)
    completed = [ep for ep in record.episodes if ep.get("outcome") == "completed"]

    fig = Figure(figsize=(11, 8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2)
    _histogram(fig.add_subplot(grid[0, 0]), _numbers(completed, "return"), "return", "C0")
    _histogram(fig.add_subplot(grid[0, 1]), _numbers(completed, "length"), "length", "C1")
    ax = fig.add_subplot(grid[1, :])
    timeline = _timeline(ax, record)
    if timeline == "journal order":
        ordered = _journal_order(folder, record)
        returns = [ep.get("return") for ep in ordered]
        xs = np.arange(1, len(ordered) + 1)
        ok = np.asarray([ep.get("outcome") == "completed" for ep in ordered], dtype=bool)
        ys = np.asarray(
            [float(r) if isinstance(r, int | float) else np.nan for r in returns], dtype=float
        )
        ax.plot(xs[ok], ys[ok], ".", color="C0", label="completed")
        if (~ok).any():
            ax.plot(xs[~ok], ys[~ok], "x", color="C3", label="failed (error or timeout)")
        if ok.any():
            ax.legend(loc="best", fontsize="small", frameon=False)
    fig.suptitle(_headline(folder, record), fontsize="large")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed, so a reader never sees half a PNG.
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return PlotReport(
        path=target,
        n_episodes=len(record.episodes),
        n_completed=len(completed),
        timeline=timeline,
    )
