"""The ``async-rollout`` command (also ``python -m async_rollout``).

``async-rollout [run] [options] [overrides]`` composes a config from ``conf/``
and the overrides, runs the rollout it describes and prints the summary.

Subcommands live in :data:`COMMANDS`, a dict from the first command-line word
to a handler ``(argv) -> exit status``; a first word that names none of them
means ``run``. A new subcommand is one handler and one entry.

Exit statuses: 0 done; 1 the run failed; 2 a bad command line or config (one
line on stderr naming the key); 128 + the signal number when SIGINT (130) or
SIGTERM (143) stopped the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskStatus

from ._config import CHOICES_KEY, list_groups, load_config
from ._results import RolloutResult
from ._runner import RolloutRunner
from ._sinks import RunInfo, Sink
from ._version import __version__
from .errors import ConfigError

__all__ = ["COMMANDS", "main"]

PROG = "async-rollout"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Command(NamedTuple):
    """A subcommand: its handler and the one line ``--help`` shows for it."""

    handler: Callable[[list[str]], int]
    summary: str


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Args:
        argv: The arguments after the program name.

    Returns:
        The exit status (the console script passes it to ``sys.exit``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    name = "run"
    if args and args[0] in COMMANDS:
        name, args = args[0], args[1:]
    try:
        return COMMANDS[name].handler(args)
    except KeyboardInterrupt as exc:
        # Only before the run watches signals itself (or on a second Ctrl-C in the summary).
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum


# --- the run command -----------------------------------------------------------------------------

_GRAMMAR = """\
overrides (values parse as YAML):
  group=option   select an option of a config group    env=latency
  a.b=value      set an existing key                   runner.n_episodes=10
  +a.b=value     add a new key                         +env.max_episode_steps=100

example:
  {prog} env=latency runner.n_episodes=200 runner.concurrency=64
"""


def _run_parser(epilog: Callable[[], str]) -> argparse.ArgumentParser:
    parser = _LazyEpilogParser(
        epilog,
        prog=PROG,
        usage=f"{PROG} [run] [options] [override ...]",
        description="Run a rollout described by conf/ and command-line overrides, "
        "then print its summary.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="override",
        help="group=option, a.b=value or +a.b=value (see below)",
    )
    _add_config_options(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout (and nothing else there)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none anyway when stderr is not a terminal)",
    )
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop to run on (default: asyncio)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        help="a config tree searched before the packaged conf/ (its groups and options "
        "add to and shadow the packaged ones)",
    )
    parser.add_argument(
        "--config-name",
        metavar="NAME",
        default="rollout",
        help="the root config, DIR/NAME.yaml or the packaged one (default: rollout)",
    )


class _LazyEpilogParser(argparse.ArgumentParser):
    """A parser whose epilog is computed only when help is shown (it reads the config tree)."""

    def __init__(self, epilog: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._make_epilog = epilog

    def format_help(self) -> str:
        self.epilog = self._make_epilog()
        return super().format_help()


def _help_epilog(config_dir: str | None, config_name: str) -> str:
    """The groups with their options (the default marked), the override grammar and commands."""
    lines = []
    try:
        groups = list_groups(config_dir)
        defaults = dict(load_config((), config_dir, config_name)[CHOICES_KEY])
    except ConfigError as exc:
        lines += [f"config groups: cannot read the config ({exc})", ""]
    else:
        lines.append("config groups (pick an option with group=option; * is the default):")
        width = max((len(group) for group in groups), default=0)
        for group, options in groups.items():
            shown = [f"{o}*" if o == defaults.get(group) else o for o in options]
            lines.append(f"  {group:<{width}}  {'  '.join(shown)}")
        lines.append("")
    lines.append(_GRAMMAR.format(prog=PROG))
    lines.append("commands (the first word; run is the default):")
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def _config_location(argv: list[str]) -> tuple[str | None, str]:
    """Read ``--config-dir``/``--config-name`` ahead of the rest: ``--help`` shows that tree."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    _add_config_options(parser)
    try:
        known, _ = parser.parse_known_args(argv)
    except argparse.ArgumentError:
        return None, "rollout"  # the full parser reports it
    return known.config_dir, known.config_name


def run_command(argv: list[str]) -> int:
    """The ``run`` command: compose the config, run the rollout, print the summary."""
    config_dir, config_name = _config_location(argv)
    parser = _run_parser(lambda: _help_epilog(config_dir, config_name))
    # Intermixed: options may come after overrides (`env=latency --json`).
    args = parser.parse_intermixed_args(argv)
    _setup_logging(args.debug)
    started_at = datetime.now()
    try:
        cfg = load_config(args.overrides, args.config_dir, args.config_name)
        if cfg.get("output_dir") is None:
            cfg["output_dir"] = default_output_dir(started_at)
        runner = RolloutRunner.from_config(cfg)
    except Exception as exc:
        return _report(exc, args.debug)

    progress = None
    if not args.no_progress and sys.stderr.isatty():
        from ._progress import ProgressSink

        progress = ProgressSink()
    runner.sinks.append(_Announce(dict(cfg[CHOICES_KEY])))
    if progress is not None:
        runner.sinks.append(progress)

    try:
        with _signals_as_interrupts():
            outcome = anyio.run(_rollout, runner, backend=args.backend)
    except Exception as exc:
        # The run's own errors are on the outcome: this is a sink's or the event loop's.
        return _report(exc, args.debug)
    finally:
        if progress is not None:
            progress.close()

    return _conclude(outcome, runner, args)


def _conclude(outcome: _Outcome, runner: RolloutRunner, args: argparse.Namespace) -> int:
    """Print the summary (partial after a signal or a failure) and pick the exit status."""
    if isinstance(outcome.error, ConfigError):
        return _report(outcome.error, args.debug)
    if outcome.result is not None:
        _print_summary(outcome.result, runner, as_json=args.json)
    if outcome.signum is not None:
        episodes = [] if outcome.result is None else outcome.result.episodes
        cancelled = sum(ep.outcome == "cancelled" for ep in episodes)
        print(
            f"interrupted by {signal.Signals(outcome.signum).name}: "
            f"{len(episodes) - cancelled} of {runner.n_episodes} episodes finished, "
            f"{cancelled} cancelled in flight",
            file=sys.stderr,
        )
        return 128 + outcome.signum
    if outcome.error is not None:
        return _report(outcome.error, args.debug)
    return EXIT_OK


def default_output_dir(now: datetime, root: Path | None = None) -> str:
    """``outputs/<date>_<time>`` under ``root`` (the working directory), Hydra's habit.

    A second run in the same second gets a suffix rather than the first run's directory,
    which the runner would refuse as not empty.
    """
    base = Path("outputs") / now.strftime("%Y-%m-%d_%H-%M-%S")
    where = Path.cwd() if root is None else root
    candidate, n = base, 0
    while (where / candidate).exists():
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    return str(candidate)


# --- the rollout on the event loop ---------------------------------------------------------------


@dataclass
class _Outcome:
    result: RolloutResult | None = None
    error: Exception | None = None
    signum: int | None = None
    running: bool = True


async def _rollout(runner: RolloutRunner) -> _Outcome:
    """Run the runner's config, stopping cleanly at the first SIGINT or SIGTERM.

    The run's errors are kept on the outcome rather than raised, so that the
    task group never wraps them in an ExceptionGroup.
    """
    outcome = _Outcome()
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        run_scope = anyio.CancelScope()
        if threading.current_thread() is threading.main_thread():
            await tg.start(_watch_signals, run_scope, outcome)
        with run_scope:
            try:
                outcome.result = await runner.run()
            except Exception as exc:
                outcome.error = exc
        outcome.running = False
        tg.cancel_scope.cancel()
    if outcome.result is None and (outcome.signum is not None or outcome.error is not None):
        # The runner keeps what finished; before its first episode there is nothing to keep.
        outcome.result = runner.result
        if outcome.result is None and outcome.signum is not None:
            outcome.result = RolloutResult.from_episodes(None, [], time.perf_counter() - started)
    return outcome


async def _watch_signals(
    run_scope: anyio.CancelScope,
    outcome: _Outcome,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    # Watching until the run has wound down (not just the first signal) keeps a repeated
    # Ctrl-C from interrupting the closing of envs and the writing of what finished.
    with anyio.open_signal_receiver(*_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            if not outcome.running:
                continue
            if outcome.signum is None:
                outcome.signum = int(signum)
                run_scope.cancel()
            else:
                print("stopping: closing the envs and writing what finished", file=sys.stderr)


class _Interrupted(KeyboardInterrupt):
    """SIGTERM before the event loop watches signals, taking KeyboardInterrupt's road out."""

    signum = signal.SIGTERM


@contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """Turn SIGTERM into an exception (like SIGINT) until the run's own watcher takes over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Announce(Sink):
    """Says on stderr what is being run, once the config is built and the first env is up."""

    def __init__(self, choices: Mapping[str, str]) -> None:
        self.choices = choices

    def on_run_start(self, run: RunInfo) -> None:
        """Print one line: the selected options, the episode count and the output directory."""
        selected = " ".join(f"{group}={option}" for group, option in self.choices.items())
        where = f", writing to {run.output_dir}" if run.output_dir else ""
        print(
            f"{PROG}: {selected}: {len(run.indices)} episodes, {run.concurrency} at a time{where}",
            file=sys.stderr,
            flush=True,
        )


# --- reporting ----------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, ConfigError) else _describe(exc)
    key = getattr(exc, "key", None)
    if isinstance(exc, ConfigError) and key and key not in text:
        text = f"{key}: {text}"
    # The notes name the episode and seeds of a failure in the run.
    text = "; ".join([text, *getattr(exc, "__notes__", ())])
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _report(exc: Exception, debug: bool) -> int:
    """Print the error in one line (after its traceback with ``--debug``) and pick the status."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {_one_line(exc)}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, so the live progress bar can redirect."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _setup_logging(debug: bool) -> None:
    logger = logging.getLogger("async_rollout")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


def _print_summary(result: RolloutResult, runner: RolloutRunner, *, as_json: bool) -> None:
    summary = dict(result.summary)
    if as_json:
        document = {**summary, "seed": result.seed, "output_dir": runner.output_dir}
        print(json.dumps(_jsonable(document), indent=2, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rollout summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    outcomes = summary["outcomes"]
    shown = ", ".join(f"{n} {name}" for name, n in outcomes.items() if n) or "none"
    table.add_row("episodes", f"{summary['n_episodes']} of {runner.n_episodes} ({shown})")
    for what in ("return", "length"):
        table.add_row(what, _stats_text(summary, what))
    table.add_row("steps", f"{summary['total_steps']:,}")
    rate = summary["steps_per_s"]
    table.add_row("steps/s", "-" if rate is None else f"{rate:,.0f}")
    table.add_row("wall time", f"{summary['wall_time_s']:.3f} s")
    for name, value in summary["metrics"].items():
        table.add_row(f"metric {name}", f"{value:.4g}")
    table.add_row("seed", "explicit" if result.seed is None else str(result.seed))
    table.add_row("output dir", runner.output_dir or "-")
    Console(soft_wrap=True).print(table)


def _stats_text(summary: Mapping[str, Any], what: str) -> str:
    """``mean ± std (min .. max)``; ``-`` when no episode completed."""
    mean, std = summary[f"mean_{what}"], summary[f"std_{what}"]
    if mean is None:
        return "- (no completed episode)"
    low, high = summary[f"min_{what}"], summary[f"max_{what}"]
    return f"{mean:.2f} ± {std:.2f} (min {low:.2f}, max {high:.2f})"


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN and infinities as null (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: Subcommands by their first command-line word; anything else runs ``run``.
COMMANDS: dict[str, Command] = {
    "run": Command(run_command, "run a rollout and print its summary"),
}
