"""The ``async-rollout`` command (also ``python -m async_rollout``).

``async-rollout [run] [options] [overrides]`` composes a config from ``conf/``
and the overrides, runs the rollout it describes and prints the summary.

Subcommands live in :data:`COMMANDS`, a dict from the first command-line word
to a handler ``(argv) -> exit status``; a first word that names none of them
means ``run``. A new subcommand is one handler and one entry.

Exit statuses: 0 done; 1 the run failed; 2 a bad command line or config (one
line on stderr naming the key); 128 + the signal number when SIGINT (130) or
SIGTERM (143) stopped the run. ``serve`` exits 0 when a signal stops it (that
is how a server is stopped); ``export-minari`` and ``plot`` exit 1 when their
optional dependency is missing, with the command that installs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import ssl
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskGroup, TaskStatus

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
    _add_run_options(parser)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that runs an event loop takes."""
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop to run on (default: asyncio)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


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


# --- serve ---------------------------------------------------------------------------------------

#: The environment variable ``serve`` reads its token from when ``--token`` is not given.
TOKEN_ENV = "ASYNC_ROLLOUT_TOKEN"


def _serve_parser(epilog: Callable[[], str]) -> argparse.ArgumentParser:
    parser = _LazyEpilogParser(
        epilog,
        prog=f"{PROG} serve",
        usage=f"{PROG} serve [options] [override ...]",
        description="Serve the env of the composed config over the network (one env per "
        "connection) until SIGINT or SIGTERM. Clients use RemoteEnv (env=remote). "
        "Wrappers, agent and runner settings are the client's: only the env is served.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="override",
        help="group=option, a.b=value or +a.b=value, as for run (env=latency ...)",
    )
    _add_config_options(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the interface to listen on (default: 127.0.0.1, loopback only; 0.0.0.0 for all, "
        "then set a token)",
    )
    parser.add_argument(
        "--port", type=int, default=7000, help="the TCP port; 0 picks a free one (default: 7000)"
    )
    parser.add_argument("--path", metavar="SOCK", help="listen on this Unix socket instead of TCP")
    parser.add_argument(
        "--token",
        help=f"the shared secret clients must send (default: ${TOKEN_ENV}, else none); the "
        "environment variable keeps it out of the process list",
    )
    parser.add_argument(
        "--tls-cert", metavar="FILE", help="serve over TLS with this PEM certificate (chain)"
    )
    parser.add_argument(
        "--tls-key", metavar="FILE", help="the certificate's private key (default: in --tls-cert)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the bound address as one JSON line on stdout once serving",
    )
    _add_run_options(parser)
    return parser


def serve_command(argv: list[str]) -> int:
    """The ``serve`` command: serve the config's env until SIGINT or SIGTERM.

    Exit statuses: 0 stopped by SIGINT or SIGTERM (the normal way to stop a
    server, so that supervisors such as systemd count it as a clean stop); 1
    the server failed (the address cannot be bound, the env cannot be made);
    2 a bad command line or config.
    """
    config_dir, config_name = _config_location(argv)
    parser = _serve_parser(lambda: _help_epilog(config_dir, config_name))
    args = parser.parse_intermixed_args(argv)
    _setup_logging(args.debug)
    try:
        cfg = load_config(args.overrides, args.config_dir, args.config_name)
        token = _serve_token(args.token)
        ssl_context = _server_tls(args.tls_cert, args.tls_key)
        if args.path is not None and ssl_context is not None:
            raise ConfigError("--tls-cert applies to TCP; a Unix socket is protected by its mode")
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535; got {args.port}")
    except Exception as exc:
        return _report(exc, args.debug)
    serving = _Serving(args=args, token=token, ssl_context=ssl_context, cfg=cfg)
    try:
        with _signals_as_interrupts():
            anyio.run(serving.run, backend=args.backend)
    except Exception as exc:
        return _report(exc, args.debug)
    if serving.signum is not None:
        print(f"{PROG}: stopped by {signal.Signals(serving.signum).name}", file=sys.stderr)
    return EXIT_OK


def _serve_token(given: str | None) -> str | None:
    """``--token``, else ``$ASYNC_ROLLOUT_TOKEN``; an empty one is refused, not silently open."""
    if given is not None:
        if not given:
            raise ConfigError("--token is empty; leave it out to serve without a token")
        return given
    return os.environ.get(TOKEN_ENV) or None


def _server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None:
        if key is not None:
            raise ConfigError("--tls-key needs --tls-cert")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert/--tls-key: cannot load {cert!r}: {exc}") from exc
    return context


@dataclass
class _Serving:
    """One ``serve`` command on the event loop: check the env, serve it, stop on a signal."""

    args: argparse.Namespace
    token: str | None
    ssl_context: ssl.SSLContext | None
    cfg: Any
    signum: int | None = None
    error: Exception | None = None

    async def run(self) -> None:
        """Serve until a signal; raise what went wrong (unwrapped from the task group)."""
        # Opened first, so that a signal arriving while the env is checked or the socket
        # bound stops the server the same clean way as one arriving later.
        with anyio.open_signal_receiver(*_SIGNALS) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._wait_for_signal, signals, tg.cancel_scope)
                try:
                    await self._serve(tg)
                except Exception as exc:
                    # Kept and raised below: the task group would wrap it in an ExceptionGroup.
                    self.error = exc
                    tg.cancel_scope.cancel()
        if self.error is not None:
            raise self.error

    async def _serve(self, tg: TaskGroup) -> None:
        from .remote import serve_from_config

        description = await self._check_env()
        serve = partial(
            serve_from_config,
            self.cfg.env,
            self.args.host,
            self.args.port,
            self.args.path,
            self.token,
            ssl_context=self.ssl_context,
        )
        try:
            address = await tg.start(serve)
        except OSError as exc:
            where = self.args.path or f"{self.args.host}:{self.args.port}"
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from exc
        self._announce(address, description)

    async def _wait_for_signal(self, signals: AsyncIterator[int], scope: anyio.CancelScope) -> None:
        async for signum in signals:
            self.signum = int(signum)
            # Cancelling serve_env closes the listeners, then every session closes its env.
            scope.cancel()
            return

    async def _check_env(self) -> str:
        """Make one env and describe its spaces, so a bad config fails now, not per client."""
        from ._env import connect_if_remote, env_factory
        from ._loop import close_env
        from .remote._spaces import describe_space

        factory = env_factory(self.cfg.env)
        env = factory()
        try:
            await connect_if_remote(env)
            for which in ("observation", "action"):
                space = getattr(env, f"{which}_space")
                try:
                    describe_space(space)
                except TypeError as exc:
                    raise ConfigError(
                        f"env: its {which} space {space} cannot be served: {exc}", key="env"
                    ) from exc
        finally:
            await close_env(env)
        target = self.cfg.env.get("_target_") if isinstance(self.cfg.env, Mapping) else None
        return str(target) if target else factory.description

    def _announce(self, address: str | tuple[str, int], description: str) -> None:
        choice = self.cfg[CHOICES_KEY].get("env", "?")
        tls = self.ssl_context is not None
        if isinstance(address, str):
            where = f"unix:{address}"
            document: dict[str, Any] = {"host": None, "port": None, "path": address}
        else:
            where = f"{'tls' if tls else 'tcp'}://{address[0]}:{address[1]}"
            document = {"host": address[0], "port": address[1], "path": None}
        auth = "token required" if self.token is not None else "no token"
        print(
            f"{PROG}: serving env={choice} ({description}) on {where} ({auth}); "
            "stop with Ctrl-C or SIGTERM",
            file=sys.stderr,
            flush=True,
        )
        if self.args.json:
            document.update(address=where, tls=tls, token=self.token is not None, env=choice)
            print(json.dumps(document), flush=True)


# --- export-minari -------------------------------------------------------------------------------


def export_minari_command(argv: list[str]) -> int:
    """The ``export-minari`` command: a recorded rollout's trajectories as a Minari dataset.

    Exit statuses: 0 exported; 1 the export failed, or minari is not installed
    (the message gives the install command); 2 a bad command line, an output
    directory without trajectories, or a malformed or taken dataset id.
    """
    parser = argparse.ArgumentParser(
        prog=f"{PROG} export-minari",
        description="Write the trajectories of a rollout recorded with "
        "runner.record_trajectory=true as a Minari dataset that minari.load_dataset(DATASET_ID) "
        "opens (in $MINARI_DATASETS_PATH, default ~/.minari/datasets). Needs the minari extra: "
        'pip install "async-rollout[minari]".',
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the rollout's output directory")
    parser.add_argument(
        "dataset_id", metavar="DATASET_ID", help="Minari's (namespace/)name-v<version>"
    )
    parser.add_argument(
        "--include-failed",
        action="store_true",
        help="also export failed episodes (env or policy error, timeout), last step truncated",
    )
    parser.add_argument(
        "--spaces",
        choices=("auto", "env", "data"),
        default="auto",
        help="where the observation and action spaces come from: the recorded config's env "
        "(built once), the recorded data, or auto: the env, else the data (default: auto)",
    )
    parser.add_argument(
        "--jpeg", action="store_true", help="store image observations as JPEG (lossy, smaller)"
    )
    for name, what in (
        ("author", "the dataset's author"),
        ("author-email", "the author's email"),
        ("code-permalink", "a link to the code that made the data"),
        ("algorithm-name", "the policy's name (default: the agent's _target_)"),
        ("description", "a description (default: where the rollout came from)"),
    ):
        parser.add_argument(f"--{name}", help=what)
    parser.add_argument(
        "--json", action="store_true", help="print what was exported as JSON on stdout"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    args = parser.parse_args(argv)
    _setup_logging(args.debug)
    try:
        from .recording._minari import export_minari

        report = export_minari(
            args.output_dir,
            args.dataset_id,
            include_failed=args.include_failed,
            spaces_from=args.spaces,
            jpeg_encoding=args.jpeg,
            author=args.author,
            author_email=args.author_email,
            code_permalink=args.code_permalink,
            algorithm_name=args.algorithm_name,
            description=args.description,
        )
    except ImportError as exc:
        return _missing_extra(exc, args.debug)
    except Exception as exc:
        return _report(exc, args.debug)
    print(
        f"{PROG}: exported {report.n_episodes} episodes ({report.total_steps:,} steps) of "
        f"{args.output_dir} to the Minari dataset {report.dataset_id!r} at {report.path}",
        file=sys.stderr,
    )
    if report.skipped:
        left_out = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items()))
        hint = "" if args.include_failed else " (--include-failed keeps failed ones)"
        print(f"{PROG}: left out {left_out}{hint}", file=sys.stderr)
    if report.dropped_infos:
        print(
            f"{PROG}: info keys left out (not an array or strings at every step): "
            f"{', '.join(report.dropped_infos)}",
            file=sys.stderr,
        )
    for note in report.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.json:
        document = {
            "dataset_id": report.dataset_id,
            "path": str(report.path),
            "n_episodes": report.n_episodes,
            "total_steps": report.total_steps,
            "indices": report.indices,
            "spaces_from": report.spaces_from,
            "env_id": report.env_id,
            "skipped": report.skipped,
            "dropped_infos": report.dropped_infos,
            "notes": report.notes,
        }
        print(json.dumps(document, indent=2))
    return EXIT_OK


def _missing_extra(exc: ImportError, debug: bool) -> int:
    """A missing optional dependency: one line with the install command, status 1."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_FAILED


# --- plot ----------------------------------------------------------------------------------------


def plot_command(argv: list[str]) -> int:
    """The ``plot`` command: a PNG of a recorded rollout.

    Exit statuses: 0 written; 1 drawing failed, or matplotlib is not installed
    (the message gives the install command); 2 a bad command line or an
    output directory that holds no rollout.
    """
    parser = argparse.ArgumentParser(
        prog=f"{PROG} plot",
        description="Draw a PNG of a recorded rollout: return and length histograms of the "
        "completed episodes, and episodes finished over time (from events.jsonl, written with "
        "runner.record_event_logs=true; without it, returns in the order episodes finished). "
        'Needs the plot extra: pip install "async-rollout[plot]".',
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the rollout's output directory")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE.png",
        help="where to write the PNG (default: OUTPUT_DIR/rollout.png)",
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution (default: 100)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    args = parser.parse_args(argv)
    _setup_logging(args.debug)
    try:
        from .recording._plot import plot_rollout

        if args.dpi < 10:
            raise ConfigError(f"--dpi must be at least 10; got {args.dpi}")
        report = plot_rollout(args.output_dir, args.output, dpi=args.dpi)
    except ImportError as exc:
        return _missing_extra(exc, args.debug)
    except Exception as exc:
        return _report(exc, args.debug)
    if report.timeline != "events":
        print(
            f"{PROG}: note: {args.output_dir} has no event log, so no finish times: the timeline "
            "shows returns in the order episodes finished (record with "
            "runner.record_event_logs=true for a timeline)",
            file=sys.stderr,
        )
    # The path alone on stdout, so that scripts can pick it up (`open $(async-rollout plot d)`).
    print(report.path)
    return EXIT_OK


#: Subcommands by their first command-line word; anything else runs ``run``.
COMMANDS: dict[str, Command] = {
    "run": Command(run_command, "run a rollout and print its summary"),
    "serve": Command(serve_command, "serve the config's env to RemoteEnv clients"),
    "export-minari": Command(export_minari_command, "write a recorded rollout as a Minari dataset"),
    "plot": Command(plot_command, "draw a PNG of a recorded rollout"),
}
