"""Trajectory files: one ``.npz`` per finished episode, written off the loop, read back whole.

File format (``trajectories/episode_000017.npz``: the archive ``numpy.savez``
writes, laid out by :mod:`._npz` for speed, readable with
``numpy.load(path, allow_pickle=False)``):

- ``observations`` (T+1 rows) and ``actions`` (T rows): one stacked array
  each; Dict and Tuple values are flattened to one array per leaf, named by
  their path (``observations/position``, ``actions/0``; Dict keys are
  percent-encoded with ``urllib.parse.quote(key, safe="")``, so ``a/b``
  becomes ``a%2Fb``; the original keys are in ``meta``);
- ``rewards`` (float64), ``terminated``, ``truncated`` (bool): T entries each;
- ``infos``: UTF-8 JSON bytes (a uint8 array) of the T+1 info dicts, values
  JSON cannot hold written as their ``repr``; numpy arrays become lists;
- ``meta``: UTF-8 JSON bytes describing how to rebuild Dict/Tuple values,
  and the episode (index, seeds, outcome, error, return).

The first step's value decides the structure. A leaf whose values cannot be
stacked into one array of a plain dtype (ragged shapes, arbitrary objects),
or a Dict/Tuple node whose values do not all share the first one's keys or
length, is stored as JSON bytes like ``infos`` and restored as JSON values;
the rest of the structure keeps its arrays. Nothing is pickled.

Which episodes get a file: every episode that ended with a result and had
started (its reset succeeded), completed or failed (``"env_error"``,
``"policy_error"``, ``"timeout"``: the steps up to the failure are kept).
Cancelled episodes get none: they will be played again on resume, and a
partial episode of a cancelled run is not data anyone asked for.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
import numpy as np

from .._results import EpisodeResult, RolloutResult, Trajectory
from .._sinks import RunInfo, Sink
from ._json import dumps
from ._npz import archive_payload, npz_bytes
from ._writer import FileWriter, temporary_name, write_file

__all__ = [
    "TRAJECTORIES_DIR",
    "TrajectorySink",
    "iter_trajectories",
    "load_trajectory",
    "trajectory_files",
    "trajectory_name",
    "write_trajectory",
]

#: The folder of an output directory that holds the trajectory files.
TRAJECTORIES_DIR = "trajectories"
_FORMAT = "async-rollout/trajectory"
_VERSION = 1
_NAME = re.compile(r"episode_(\d+)\.npz")
_NUMBERS = (int, float, np.generic)
#: Episodes whose observations take more bytes are encoded and written in a worker thread.
INLINE_ENCODE_BYTES = 256 * 1024
#: An archive member: an array, or JSON text as bytes (stored as a uint8 array).
Member = np.ndarray[Any, Any] | bytes


def trajectory_name(index: int) -> str:
    """The file name of episode ``index``'s trajectory (``episode_000017.npz``)."""
    return f"episode_{index:06d}.npz"


def _escape(key: str) -> str:
    # Archive member names must not contain "/" of their own, NULs or the like.
    return quote(key, safe="")


def _json_bytes(value: Any) -> bytes:
    # Stored as a uint8 array (npz_bytes takes the bytes as they are).
    return dumps(value).encode("utf-8")


def _from_json_bytes(array: np.ndarray[Any, Any]) -> Any:
    return json.loads(array.tobytes().decode("utf-8"))


def _stack(values: list[Any]) -> np.ndarray[Any, Any] | None:
    """One array with a row per value, or None when the values do not make a plain array."""
    if not values:
        return np.empty(0, dtype=np.float64)
    try:
        array = np.asarray(values)
    except ValueError:
        # Ragged shapes.
        return None
    # np.load(allow_pickle=False) refuses object arrays.
    return None if array.dtype.hasobject else array


def _flatten(name: str, values: list[Any], out: dict[str, Member]) -> Any:
    """Store ``values`` (one per step) in ``out`` under ``name``; return how to rebuild them.

    The first value decides the structure. A node whose values do not all
    share it (a missing key, a tuple of another length, ragged arrays) is
    stored as JSON, and only that node.
    """
    first = values[0] if values else None
    if type(first) is np.ndarray or isinstance(first, _NUMBERS):
        # The common cases first: a Box space's arrays, a Discrete space's numbers.
        array = _stack(values)
        if array is not None:
            out[name] = array
            return {"kind": "array", "key": name}
    elif isinstance(first, Mapping):
        keys = list(first)
        names = [_escape(str(k)) for k in keys]
        if len(set(names)) == len(keys) and all(
            isinstance(v, Mapping) and len(v) == len(keys) and all(k in v for k in keys)
            for v in values
        ):
            items = [
                [str(key), _flatten(f"{name}/{sub}", [v[key] for v in values], out)]
                for key, sub in zip(keys, names, strict=True)
            ]
            return {"kind": "dict", "items": items}
    elif isinstance(first, tuple):
        width = len(first)
        if all(isinstance(v, tuple) and len(v) == width for v in values):
            items = [_flatten(f"{name}/{i}", [v[i] for v in values], out) for i in range(width)]
            return {"kind": "tuple", "items": items}
    else:
        array = _stack(values)
        if array is not None:
            out[name] = array
            return {"kind": "array", "key": name}
    out[name] = _json_bytes(values)
    return {"kind": "json", "key": name}


#: The layout of Box (or Discrete) observations and actions, and its meta text.
_PLAIN_LAYOUT = {
    "observations": {"kind": "array", "key": "observations"},
    "actions": {"kind": "array", "key": "actions"},
}
_PLAIN_LAYOUT_JSON = f'"layout":{dumps(_PLAIN_LAYOUT)}'
_PLAIN_META = dumps({"format": _FORMAT, "version": _VERSION})[:-1] + ',"length":'


def _restore(tree: Any, archive: Any, n: int) -> list[Any]:
    """The ``n`` per-step values that :func:`_flatten` stored as ``tree``."""
    kind = tree["kind"]
    if kind == "array":
        return list(archive[tree["key"]])[:n]
    if kind == "json":
        return list(_from_json_bytes(archive[tree["key"]]))
    if kind == "dict":
        columns = [(key, _restore(sub, archive, n)) for key, sub in tree["items"]]
        return [{key: column[i] for key, column in columns} for i in range(n)]
    if kind == "tuple":
        parts = [_restore(sub, archive, n) for sub in tree["items"]]
        return [tuple(part[i] for part in parts) for i in range(n)]
    raise ValueError(f"unknown trajectory layout kind {kind!r}")


def episode_meta(result: EpisodeResult) -> dict[str, Any]:
    """What a trajectory file says about its episode besides the steps."""
    return {
        "index": result.index,
        "env_seed": result.env_seed,
        "agent_seed": result.agent_seed,
        "outcome": result.outcome,
        "error": result.error,
        "total_reward": result.total_reward,
        "length": result.length,
    }


def _arrays(trajectory: Trajectory, episode: Mapping[str, Any] | None) -> dict[str, Member]:
    """The archive members of a trajectory file (JSON members as bytes)."""
    arrays: dict[str, Member] = {}
    observations, actions = trajectory.observations, trajectory.actions
    layout = {
        "observations": _flatten(
            "observations",
            observations if type(observations) is list else list(observations),
            arrays,
        ),
        "actions": _flatten("actions", actions if type(actions) is list else list(actions), arrays),
    }
    arrays["rewards"] = np.asarray(trajectory.rewards, dtype=np.float64)
    arrays["terminated"] = np.asarray(trajectory.terminated, dtype=np.bool_)
    arrays["truncated"] = np.asarray(trajectory.truncated, dtype=np.bool_)
    infos = trajectory.infos
    arrays["infos"] = _json_bytes(infos if type(infos) is list else list(infos))
    episode = episode if type(episode) is dict or episode is None else dict(episode)
    if layout == _PLAIN_LAYOUT:
        # The common layout's text is known: only the length and the episode vary.
        text = f"{_PLAIN_META}{len(actions)},{_PLAIN_LAYOUT_JSON},"
        arrays["meta"] = f'{text}"episode":{dumps(episode)}}}'.encode()
        return arrays
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "length": len(actions),
        "layout": layout,
        "episode": episode,
    }
    arrays["meta"] = _json_bytes(meta)
    return arrays


def _put(path: Path, arrays: Mapping[str, Member], data: bytes | None) -> None:
    """Write the archive (``data``, else ``numpy.savez``) to a temporary name, then rename it."""
    if data is not None:
        write_file(str(path), data)
        return
    tmp = temporary_name(str(path))
    with open(tmp, "wb") as f:
        # Typed as Any: numpy's stubs read ``**arrays`` as possibly its ``allow_pickle`` flag.
        entries: dict[str, Any] = {
            name: np.frombuffer(value, dtype=np.uint8) if isinstance(value, bytes) else value
            for name, value in arrays.items()
        }
        np.savez(f, **entries)
    os.replace(tmp, path)


def write_trajectory(
    path: str | os.PathLike[str], trajectory: Trajectory, episode: Mapping[str, Any] | None = None
) -> None:
    """Write ``trajectory`` to ``path`` through a temporary name, then rename it into place.

    Blocking (stacking arrays and writing the archive): call it in a worker
    thread from async code. A process killed mid-write leaves only the
    temporary file (``.episode_000017.npz.tmp``), which readers skip.

    Args:
        path: The ``.npz`` file to write.
        trajectory: The episode's steps.
        episode: Facts about the episode kept in the file's ``meta``.
    """
    arrays = _arrays(trajectory, episode)
    _put(Path(path), arrays, npz_bytes(arrays))


def _nbytes(value: Any) -> int:
    """Roughly how many bytes ``value`` takes in an archive (for small-or-large decisions)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    return 8


def _read(path: Path) -> tuple[Trajectory, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as archive:
        if "meta" not in archive.files:
            raise ValueError(f"{path} is not an async-rollout trajectory (no 'meta' entry)")
        meta = _from_json_bytes(archive["meta"])
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an async-rollout trajectory (format {meta!r})")
        if meta.get("version", 0) > _VERSION:
            raise ValueError(
                f"{path} has trajectory format version {meta['version']}; this async-rollout "
                f"reads up to version {_VERSION}: upgrade it"
            )
        layout = meta["layout"]
        length = int(meta["length"])
        trajectory = Trajectory(
            observations=_restore(layout["observations"], archive, length + 1),
            actions=_restore(layout["actions"], archive, length),
            rewards=archive["rewards"],
            terminated=archive["terminated"],
            truncated=archive["truncated"],
            infos=list(_from_json_bytes(archive["infos"])),
        )
    return trajectory, meta


def load_trajectory(path: str | os.PathLike[str]) -> Trajectory:
    """Read one trajectory file back, Dict and Tuple values rebuilt.

    Observations (T+1) and actions (T) come back as lists of per-step values:
    numpy arrays or scalars, dicts for Dict spaces, tuples for Tuple spaces.
    Infos come back as JSON values (arrays as lists, exotic values as their
    ``repr`` text).

    Raises:
        ValueError: ``path`` is not a trajectory written by async-rollout.
    """
    return _read(Path(path))[0]


def trajectory_files(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The finished trajectory files of an output directory, as (index, path), by index.

    Temporary files of an unfinished write (``.episode_*.npz.tmp``) are skipped.
    """
    folder = Path(output_dir) / TRAJECTORIES_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.fullmatch(path.name)
        if match is not None:
            found.append((int(match.group(1)), path))
    return sorted(found)


def iter_trajectories(output_dir: str | os.PathLike[str]) -> Iterator[tuple[int, Trajectory]]:
    """Yield ``(episode index, trajectory)`` for every finished trajectory, in index order.

    Files are read one at a time, so a large recording never needs to fit in
    memory. Unfinished writes (temporary names) are skipped. Cancelled
    episodes have no file; failed ones do (see the module documentation).

    Args:
        output_dir: The rollout's ``output_dir`` (the folder holding
            ``trajectories/``).
    """
    for index, path in trajectory_files(output_dir):
        yield index, load_trajectory(path)


class TrajectorySink(Sink):
    """Writes each finished episode's trajectory to ``<folder>/episode_<index>.npz``.

    The trajectory comes from :attr:`EpisodeResult.trajectory` (the run must
    record trajectories); the sink strips nothing from the result.

    An episode's worker does not wait for its file. A short episode (at most
    ``INLINE_ENCODE_BYTES`` of observations) is encoded on the loop as it
    ends (a few tens of microseconds) and handed to the output directory's
    :class:`~._writer.FileWriter`, whose helper process writes the file.
    Longer ones are encoded and written in a worker thread, which the
    episode's worker waits for. When the writer's pipe is full, episodes
    ending wait until the helper catches up: a slow disk slows the rollout
    rather than piling trajectories up in memory. The run's end waits for
    every file.

    A failed write (a full disk, say) is raised from the ``on_episode_end``
    of a later episode (or the run's end): a recording that cannot be
    written stops the run rather than silently missing episodes.

    Args:
        folder: Where the files go (created if missing).
        max_pending: Accepted for compatibility: the writer's pipe (1 MiB)
            now bounds what waits to be written.
        writer: The writer to use (shared by the sinks of an output
            directory); None: a writer of its own.
        flush: Send each file to the writer at once; False: leave it for
            the next sink sharing the writer, which sends the episode's
            items in one go (it must flush).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        max_pending: int = 64,
        writer: FileWriter | None = None,
        flush: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.max_pending = max_pending
        self.flush = flush
        self._writer = writer if writer is not None else FileWriter()
        self._prefix = os.path.join(str(self.folder), "")

    async def on_run_start(self, run: RunInfo) -> None:
        """Create the folder and start the writer."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writer.acquire()
        await self._writer.start()

    def on_episode_end(self, result: EpisodeResult) -> Awaitable[None] | None:
        """Queue ``result.trajectory`` unless the episode was cancelled or never started.

        Returns an awaitable only when the caller has to wait: for a long
        episode's file, or for the writer to catch up.
        """
        trajectory = result.trajectory
        if result.outcome == "cancelled" or trajectory is None:
            return None
        writer = self._writer
        writer.check()
        path = self._prefix + trajectory_name(result.index)
        observations = trajectory.observations
        if _nbytes(observations[0]) * len(observations) > INLINE_ENCODE_BYTES:
            return anyio.to_thread.run_sync(
                write_trajectory, path, trajectory, episode_meta(result)
            )
        arrays = _arrays(trajectory, episode_meta(result))
        payload = archive_payload(arrays)
        if payload is None:  # pragma: no cover - headers beyond a version 1.0 .npy
            return anyio.to_thread.run_sync(_put, Path(path), arrays, None)
        # The helper process lays the archive out (CRCs, ZIP headers): less work here.
        writer.write_archive(path, payload, flush=self.flush)
        return writer.wait() if writer.waiting else None

    async def on_run_end(self, result: RolloutResult) -> None:
        """Release the writer: the last of its sinks waits for every file, raises a failure."""
        await self._writer.release()
