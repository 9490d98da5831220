"""The output directory: refuse to overwrite, resume what an earlier run left, make the sinks.

Layout of an output directory::

    run.json              the rollout's identity: n_episodes, seeds, created_at
    episodes.jsonl        one line per finished episode (what resume reads)
    stats.json            summary and every episode, written at each run's end
    events.jsonl          the event log (record_event_logs)
    trajectories/         episode_000017.npz per finished episode (record_trajectory)

Every file is either appended line by line (``*.jsonl``) or written under a
temporary name (``.NAME.tmp``) and renamed, so a process killed at any moment
leaves whole files and at most one partial line per log. During a run the
trajectories and log lines are written by a helper process that the event
loop hands them to at every episode end (:mod:`._writer`); what was handed
over is written even if the rollout's process is killed right after. That
holds for processes dying, not the machine: nothing is fsync'ed (an fsync
per file would cost more than the rest of the recording; a crash of the
machine may lose the last seconds, which resume plays again).

Resume trusts the journal (``episodes.jsonl``): an episode is done when it
has a line there and, if that line names a trajectory file, the file exists.
Failed episodes (``"env_error"``, ``"policy_error"``, ``"timeout"``) are done
— their failure is their result; cancelled ones are played again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._results import EpisodeResult
from .._sinks import Sink
from ..errors import ConfigError
from ._events import EVENTS, EventLogSink
from ._journal import JOURNAL, EpisodeJournal, episode_from_record, read_journal
from ._json import atomic_write_text, config_hash, dumps, package_versions, timestamp
from ._stats import StatsFileSink
from ._trajectories import TRAJECTORIES_DIR, TrajectorySink
from ._writer import FileWriter

__all__ = ["MANIFEST", "OutputDir", "prepare_output_dir"]

logger = logging.getLogger("async_rollout")

#: The manifest's file name in an output directory.
MANIFEST = "run.json"
_FORMAT = "async-rollout/run"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class OutputDir:
    """A prepared output directory: what earlier runs finished, and the sinks of this run."""

    path: Path
    """The output directory."""
    n_episodes: int
    """Episodes in the whole rollout."""
    done: list[EpisodeResult]
    """Episodes finished by earlier runs, sorted by index (without trajectories)."""
    sinks: list[Sink]
    """The file sinks of this run, in the order they must be called."""
    resumed: bool
    """True when an earlier run's episodes were found and will be kept."""

    @property
    def remaining(self) -> list[int]:
        """The indices this run must play: those not in :attr:`done`, ascending."""
        finished = {ep.index for ep in self.done}
        return [i for i in range(self.n_episodes) if i not in finished]


def _refuse_occupied(path: Path) -> ConfigError:
    if (path / MANIFEST).exists():
        what = "holds an earlier run"
        hint = (
            "pass resume=True (runner.resume=true on the command line) to finish its "
            "missing episodes, or choose another output_dir"
        )
    else:
        what = "is not empty"
        hint = "choose an empty or new output_dir"
    return ConfigError(
        f"output_dir {str(path)!r} {what}; {hint}. Nothing was overwritten.", key="output_dir"
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"cannot resume in output_dir {str(path)!r}: it is not empty but has no "
            f"{MANIFEST}, so it is not an async-rollout output directory; choose another "
            "output_dir",
            key="output_dir",
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot resume in output_dir {str(path)!r}: {MANIFEST} is unreadable ({exc})",
            key="output_dir",
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise ConfigError(
            f"cannot resume in output_dir {str(path)!r}: {MANIFEST} is not an async-rollout "
            "manifest",
            key="output_dir",
        )
    return manifest


def _check_same_rollout(
    path: Path, manifest: Mapping[str, Any], env_seeds: list[int], agent_seeds: list[int]
) -> None:
    before_env = manifest.get("env_seeds")
    before_agent = manifest.get("agent_seeds")
    if before_env == env_seeds and before_agent == agent_seeds:
        return
    n_before = len(before_env) if isinstance(before_env, list) else "?"
    detail = f"the earlier run had {n_before} episodes, this one has {len(env_seeds)}"
    if isinstance(before_env, list) and isinstance(before_agent, list):
        pairs = zip(before_env, before_agent, env_seeds, agent_seeds, strict=False)
        for i, (e0, a0, e1, a1) in enumerate(pairs):
            if (e0, a0) != (e1, a1):
                detail = (
                    f"episode {i} had env_seed={e0}, agent_seed={a0} and would now get "
                    f"env_seed={e1}, agent_seed={a1}"
                )
                break
    raise ConfigError(
        f"cannot resume in output_dir {str(path)!r}: the seeds differ from the earlier run "
        f"({detail}); resume with the same n_episodes and seeds (seeding.base_seed or "
        "explicit seeds), or choose another output_dir",
        key="output_dir",
    )


def _remove_temporaries(path: Path) -> None:
    """Delete what killed writers left under temporary names; nobody reads them."""
    for folder in (path, path / TRAJECTORIES_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _drop_partial_line(path: Path) -> None:
    """Cut a log after its last complete line, so that appended lines stay whole."""
    if not path.exists():
        return
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        # Read backwards in chunks: an event log can be far larger than its last line.
        while position > 0:
            start = max(0, position - 65536)
            f.seek(start)
            chunk = f.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            position = start
        else:
            cut = 0
        if cut != end:
            f.truncate(cut)


def _finished_episodes(
    path: Path, n: int, env_seeds: list[int], agent_seeds: list[int]
) -> tuple[list[EpisodeResult], dict[int, str], list[dict[str, Any]]]:
    """Rebuild the episodes earlier runs finished, with their files and journal records."""
    kept: dict[int, tuple[EpisodeResult, dict[str, Any]]] = {}
    for record in read_journal(path / JOURNAL):
        try:
            episode = episode_from_record(record)
        except ValueError as exc:
            logger.warning("%s: skipping a bad record: %s", path / JOURNAL, exc)
            continue
        if episode.outcome == "cancelled" or episode.index >= n:
            continue
        i = episode.index
        if (episode.env_seed, episode.agent_seed) != (env_seeds[i], agent_seeds[i]):
            raise ConfigError(
                f"cannot resume in output_dir {str(path)!r}: {JOURNAL} records episode {i} "
                f"with env_seed={episode.env_seed}, agent_seed={episode.agent_seed}, but "
                f"{MANIFEST} gives it env_seed={env_seeds[i]}, agent_seed={agent_seeds[i]}",
                key="output_dir",
            )
        # A later line for the same index (an episode played again) wins.
        kept[i] = (episode, record)
    done: list[EpisodeResult] = []
    files: dict[int, str] = {}
    records: list[dict[str, Any]] = []
    for i in sorted(kept):
        episode, record = kept[i]
        trajectory = record.get("trajectory")
        if isinstance(trajectory, str):
            if not (path / trajectory).is_file():
                logger.warning("episode %d: %s is missing; playing it again", i, trajectory)
                continue
            files[i] = trajectory
        done.append(episode)
        records.append(record)
    return done, files, records


def prepare_output_dir(
    output_dir: str | os.PathLike[str],
    *,
    resume: bool,
    n_episodes: int,
    env_seeds: Sequence[int],
    agent_seeds: Sequence[int],
    record_trajectory: bool,
    record_event_logs: bool,
    config: Mapping[str, Any] | None,
) -> OutputDir:
    """Make ``output_dir`` ready for a run, or find where an earlier run stopped.

    A new or empty directory is created and gets a ``run.json`` naming the
    rollout's seeds. A non-empty one is refused unless ``resume`` is true;
    then its seeds must be this rollout's, the episodes it finished are read
    back (see the module documentation), leftovers of killed writers are
    removed and the journal is rewritten without partial or stale lines.

    Blocking file I/O: call it before the run starts, not from the event loop's
    hot path.

    Args:
        output_dir: The directory to write into (created if missing).
        resume: Finish the missing episodes of an earlier run in ``output_dir``.
        n_episodes: Episodes in the rollout; ``min(n_episodes, len(env_seeds),
            len(agent_seeds))`` are kept, as in the runner.
        env_seeds: The env seed of each episode of the whole rollout.
        agent_seeds: The agent seed of each episode.
        record_trajectory: Write ``trajectories/``.
        record_event_logs: Write ``events.jsonl``.
        config: The resolved config (recorded in ``stats.json``; its hash in
            ``events.jsonl`` and ``run.json``), or None.

    Returns:
        The directory's finished episodes and the sinks of this run: the
        trajectory writer, the episode journal, the event log and the stats
        writer, in that order (the trajectory writer's run end waits for its
        queued files, so the stats written after it name only whole files).

    Raises:
        ConfigError: ``output_dir`` is a file, or holds files and ``resume``
            is false, or cannot be resumed (no ``run.json``, other seeds).
    """
    path = Path(output_dir)
    n = min(int(n_episodes), len(env_seeds), len(agent_seeds))
    env_list = [int(s) for s in env_seeds[:n]]
    agent_list = [int(s) for s in agent_seeds[:n]]
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"output_dir {str(path)!r} is a file, not a directory; choose another output_dir",
            key="output_dir",
        )
    occupied = path.is_dir() and any(path.iterdir())
    done: list[EpisodeResult] = []
    files: dict[int, str] = {}
    if occupied:
        if not resume:
            raise _refuse_occupied(path)
        manifest = _read_manifest(path)
        _check_same_rollout(path, manifest, env_list, agent_list)
        _remove_temporaries(path)
        done, files, records = _finished_episodes(path, n, env_list, agent_list)
        atomic_write_text(path / JOURNAL, "".join(dumps(r) + "\n" for r in records))
        _drop_partial_line(path / EVENTS)
        created_at = str(manifest.get("created_at"))
    else:
        path.mkdir(parents=True, exist_ok=True)
        created_at = timestamp(datetime.now(UTC))
        manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "created_at": created_at,
            "n_episodes": n,
            "env_seeds": env_list,
            "agent_seeds": agent_list,
            "config_hash": config_hash(config),
            "versions": package_versions(),
        }
        atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    if record_trajectory:
        (path / TRAJECTORIES_DIR).mkdir(exist_ok=True)
    # One writer for the directory. An episode's file and lines go to it in one write:
    # each sink leaves its part for the next, and the last one sends them.
    writer = FileWriter()
    sinks: list[Sink] = []
    if record_trajectory:
        sinks.append(TrajectorySink(path / TRAJECTORIES_DIR, writer=writer, flush=False))
    sinks.append(
        EpisodeJournal(
            path, trajectories=record_trajectory, writer=writer, flush=not record_event_logs
        )
    )
    if record_event_logs:
        sinks.append(
            EventLogSink(
                path,
                n_episodes=n,
                env_seeds=env_list,
                agent_seeds=agent_list,
                done=done,
                config_hash=config_hash(config),
                writer=writer,
            )
        )
    sinks.append(
        StatsFileSink(
            path,
            n_episodes=n,
            done=done,
            config=config,
            trajectories=record_trajectory,
            done_files=files,
            first_started_at=created_at,
        )
    )
    return OutputDir(path=path, n_episodes=n, done=done, sinks=sinks, resumed=bool(done))
