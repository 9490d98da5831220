"""``shared_output_dir``: Ray workers write trajectory files into a directory every node sees.

The driver prepares the output directory as in any run (``run.json``, the
episode journal, ``stats.json`` and the event log stay its job), then leaves
a check file (``.ray-shared-check-<id>.tmp``) in its ``trajectories/``
folder. Before playing, each worker checks that it sees that folder at the
same absolute path (the check file is there: the folder is the driver's, not
a local one of the same name) and can write in it.

A worker writes each finished episode's file with the trajectory sink's own
writer (same name, same bytes, a temporary name then a rename), before it
sends the result, so a result that reaches the driver names a whole file.
The result crosses without the arrays; the driver's sinks see a
:class:`StoredTrajectory` in its place, which the journal and ``stats.json``
note as the episode's file, as in a local run.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .._loop import describe
from .._results import EpisodeResult, Trajectory
from ..errors import ConfigError
from ..recording._trajectories import (
    TRAJECTORIES_DIR,
    episode_meta,
    load_trajectory,
    trajectory_name,
    write_trajectory,
)

__all__ = [
    "CHECK_PREFIX",
    "SharedDir",
    "StoredTrajectory",
    "check_shared_dir",
    "close_shared_dir",
    "open_shared_dir",
    "store_trajectory",
    "stored_path",
]

#: The check file the driver leaves in ``trajectories/`` starts with this.
CHECK_PREFIX = ".ray-shared-check-"
_KEY = "runner.shared_output_dir"
_HINT = (
    "with shared_output_dir=True the output_dir must be on storage every Ray node mounts at "
    "the same path (NFS, a shared volume); or set shared_output_dir=False to send the "
    "trajectories to the driver, which writes them"
)
_FIELDS = tuple(f.name for f in fields(Trajectory))


@dataclass(frozen=True, slots=True)
class SharedDir:
    """Where the workers write, as the driver made it ready."""

    folder: str
    """The absolute path of ``<output_dir>/trajectories``."""
    check: str
    """The name of the driver's check file in :attr:`folder`."""


def open_shared_dir(output_dir: str | os.PathLike[str]) -> SharedDir:
    """Check that ``<output_dir>/trajectories`` exists and is writable; leave the check file.

    Blocking (run it in a thread). The path is made absolute here: a relative
    one would mean each worker's own working directory.

    Raises:
        ConfigError: The folder is missing or not writable; the path is named.
    """
    folder = os.path.join(os.path.abspath(output_dir), TRAJECTORIES_DIR)
    check = f"{CHECK_PREFIX}{uuid.uuid4().hex}.tmp"
    try:
        with open(os.path.join(folder, check), "x"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"shared_output_dir=True: the driver cannot write in {folder!r} "
            f"({describe(exc)}); {_HINT}",
            key=_KEY,
        ) from exc
    return SharedDir(folder, check)


def close_shared_dir(shared: SharedDir) -> None:
    """Remove the driver's check file (blocking; a file left over is removed on resume)."""
    try:
        os.unlink(os.path.join(shared.folder, shared.check))
    except OSError:
        pass


def check_shared_dir(shared: SharedDir, where: str) -> None:
    """On a worker: check that the driver's folder is here and writable (blocking).

    Args:
        shared: The folder, from the driver.
        where: How messages name the worker (and its node).

    Raises:
        ConfigError: The folder is missing here, is another one than the
            driver's, or is not writable; the message names the path and the
            worker.
    """
    folder = Path(shared.folder)
    if not folder.is_dir():
        raise ConfigError(
            f"shared_output_dir=True: Ray {where} cannot write trajectories to "
            f"{shared.folder!r}: it does not exist there; {_HINT}",
            key=_KEY,
        )
    if not (folder / shared.check).exists():
        raise ConfigError(
            f"shared_output_dir=True: Ray {where} sees a folder {shared.folder!r}, but not the "
            f"driver's (its check file {shared.check} is missing): that path is not shared "
            f"between the nodes; {_HINT}",
            key=_KEY,
        )
    probe = folder / f"{shared.check.removesuffix('.tmp')}-{os.getpid()}.tmp"
    try:
        with open(probe, "x"):
            pass
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"shared_output_dir=True: Ray {where} cannot write in {shared.folder!r} "
            f"({describe(exc)}); {_HINT}",
            key=_KEY,
        ) from exc


def store_trajectory(shared: SharedDir, result: EpisodeResult) -> bool:
    """On a worker: write ``result``'s trajectory file, as the trajectory sink would (blocking).

    The same rule as :class:`~async_rollout.recording.TrajectorySink`: an
    episode that has a trajectory and was not cancelled gets a file.

    Returns:
        True when a file was written.

    Raises:
        OSError: The file could not be written (a note names the episode and the path).
    """
    if result.outcome == "cancelled" or result.trajectory is None:
        return False
    path = stored_path(shared, result.index)
    try:
        write_trajectory(path, result.trajectory, episode_meta(result))
    except OSError as exc:
        exc.add_note(
            f"writing the trajectory of episode {result.index} to {path!r} (shared_output_dir=True)"
        )
        raise
    return True


def stored_path(shared: SharedDir, index: int) -> str:
    """Where a worker wrote episode ``index``'s file."""
    return os.path.join(shared.folder, trajectory_name(index))


class StoredTrajectory(Trajectory):
    """The trajectory a Ray worker wrote to :attr:`path` (``shared_output_dir=True``).

    The driver's sinks get it in :attr:`EpisodeResult.trajectory` in place of
    the arrays, which stayed on the worker. Its fields (``observations``,
    ``actions``, ...) read the file the first time one of them is used, with
    :func:`~async_rollout.recording.load_trajectory`: blocking file I/O.
    """

    __slots__ = ("path",)
    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not set yet: the fields, until the file is read.
        if name not in _FIELDS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        loaded = load_trajectory(self.path)
        for field_name in _FIELDS:
            object.__setattr__(self, field_name, getattr(loaded, field_name))
        return getattr(loaded, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"
