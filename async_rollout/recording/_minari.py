"""Export a recorded rollout as a Minari dataset (``async-rollout export-minari``).

Needs the ``minari`` extra (``minari[hdf5]``), imported only when an export
runs. The dataset is written with Minari's public API
(:func:`minari.create_dataset_from_buffers`, then
``MinariDataset.update_dataset_from_buffer`` in batches, so a large recording
never has to fit in memory at once), in Minari's ``hdf5`` format, to
``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``), where
``minari.load_dataset(dataset_id)`` opens it.

What goes in:

- **episodes**: the trajectory files of the output directory, in index order;
  Minari episode ``k`` is the ``k``-th of them, with ``seed`` the episode's
  env seed. Completed episodes only, unless ``include_failed``: then failed
  ones (env or policy error, timeout) that took at least one step go in too,
  their last step marked truncated (the episode was cut short by something
  outside the environment). Cancelled episodes have no file.
- **observations, actions, rewards, terminations, truncations**: exactly as
  recorded (Dict and Tuple values as Minari's nested dicts and tuples). Images
  are stored losslessly unless ``jpeg_encoding`` is asked for.
- **infos**: the info keys present at every step of an episode whose values
  make a plain array (numbers, booleans, equal-shape lists) or are all
  strings, nested dicts alike; other keys are left out and reported.
- **spaces**: by default from the env the run's resolved config describes
  (``stats.json``'s ``config``: its ``env`` and ``wrappers``), built once and
  closed; when that is impossible (no ``stats.json``, an env that cannot be
  built here, a remote env, spaces that do not match the data) they are
  inferred from the data (see :func:`infer_space`), and the report says so.
- **env spec**: the gymnasium env's ``spec`` when the config's env is a
  gymnasium env (its gymnasium wrappers included, async wrappers not), so
  ``dataset.recover_environment()`` works.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import gymnasium as gym
import numpy as np

from .._loop import close_env
from .._results import Trajectory
from .._version import __version__
from ..errors import ConfigError
from ._stats import STATS
from ._trajectories import _read, trajectory_files

__all__ = ["MinariExport", "export_minari", "infer_space"]


_INSTALL_HINT = 'pip install "async-rollout[minari]"'
#: Episodes handed to Minari per call: bounds the memory an export needs.
BATCH_EPISODES = 128
#: Minari's nagging about metadata left unset: the export fills what it knows, the caller
#: chose to leave the rest out, and a missing env spec is reported in the export's notes.
_METADATA_NAGS = (
    r"(`(code_permalink|author|author_email|algorithm_name|description|eval_env)` is set to None"
    r"|env_spec is None)"
)

SpacesFrom = Literal["auto", "env", "data"]


@dataclass(frozen=True)
class MinariExport:
    """What :func:`export_minari` wrote."""

    dataset_id: str
    """The dataset's id, for ``minari.load_dataset``."""
    path: Path
    """The dataset's folder."""
    n_episodes: int
    """Episodes in the dataset."""
    total_steps: int
    """Steps in the dataset."""
    indices: list[int]
    """The rollout's episode index of each dataset episode, in dataset order."""
    spaces_from: str
    """``"env"`` (built from the run's config) or ``"data"`` (inferred)."""
    env_id: str | None
    """The gymnasium id in the dataset's env spec, if it has one."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Episodes left out, by reason."""
    dropped_infos: list[str] = field(default_factory=list)
    """Info keys left out (not a plain array at every step), by path."""
    notes: list[str] = field(default_factory=list)
    """Things the caller should know (why spaces were inferred, ...)."""


def _import_minari() -> Any:
    """Import minari and check that its hdf5 storage can be used, or say how to get them."""
    try:
        minari = importlib.import_module("minari")
        importlib.import_module("h5py")
    except ImportError as exc:
        raise ImportError(
            f"exporting to Minari needs minari with its hdf5 storage ({exc}): {_INSTALL_HINT}"
        ) from exc
    return minari


# --- spaces ---------------------------------------------------------------------------------------


def _leaf_space(values: np.ndarray[Any, Any], *, action: bool) -> gym.Space[Any]:
    """The space of one array leaf, rows being steps (see :func:`infer_space`)."""
    shape = values.shape[1:]
    if values.dtype == np.bool_:
        return gym.spaces.MultiBinary(shape) if shape else gym.spaces.Discrete(2)
    if np.issubdtype(values.dtype, np.integer):
        low = int(values.min()) if values.size else 0
        high = int(values.max()) if values.size else 0
        if action and not shape and low >= 0:
            return gym.spaces.Discrete(high + 1)
        if action and len(shape) == 1 and low >= 0:
            return gym.spaces.MultiDiscrete(values.max(axis=0) + 1, dtype=values.dtype)
        info = np.iinfo(values.dtype)
        return gym.spaces.Box(int(info.min), int(info.max), shape, dtype=values.dtype)
    if np.issubdtype(values.dtype, np.floating):
        return gym.spaces.Box(-np.inf, np.inf, shape, dtype=values.dtype)
    raise TypeError(f"no gymnasium space for arrays of dtype {values.dtype}")


def infer_space(columns: Any, *, action: bool = False) -> gym.Space[Any]:
    """A gymnasium space that holds the recorded data ``columns``.

    ``columns`` is a stacked leaf array (one row per step; any rows that
    include each leaf's smallest and largest values will do), a dict of such
    (a Dict space) or a tuple (a Tuple space).
    Floats give an unbounded ``Box`` of their dtype and shape; integers a
    ``Box`` over the dtype's range, except actions: a scalar non-negative
    integer action gives ``Discrete(max + 1)`` and a vector one
    ``MultiDiscrete(max + 1)`` per entry; booleans give ``MultiBinary``
    (``Discrete(2)`` for scalars). The sizes of inferred discrete spaces are
    only as large as the data shows.

    Raises:
        TypeError: The data is of a kind no space describes (strings, objects).
    """
    if isinstance(columns, Mapping):
        return gym.spaces.Dict(
            {key: infer_space(value, action=action) for key, value in columns.items()}
        )
    if isinstance(columns, tuple):
        return gym.spaces.Tuple(tuple(infer_space(value, action=action) for value in columns))
    return _leaf_space(np.asarray(columns), action=action)


def _extremes(columns: Any, seen: Any, what: str) -> Any:
    """Fold an episode's stacked columns into ``seen``: per leaf, the element-wise min and max.

    The result (two rows per leaf) is all :func:`infer_space` needs, so inferring
    spaces from a large recording takes the memory of one episode, not of all.

    Raises:
        ConfigError: The episode's structure, shapes or kinds differ from the earlier ones'.
    """
    if isinstance(columns, Mapping):
        if seen is not None and (not isinstance(seen, Mapping) or set(seen) != set(columns)):
            raise ConfigError(f"{what}: the Dict keys change between episodes", key="output_dir")
        return {
            key: _extremes(value, None if seen is None else seen[key], f"{what}[{key!r}]")
            for key, value in columns.items()
        }
    if isinstance(columns, tuple):
        if seen is not None and (not isinstance(seen, tuple) or len(seen) != len(columns)):
            raise ConfigError(
                f"{what}: the Tuple length changes between episodes", key="output_dir"
            )
        return tuple(
            _extremes(value, None if seen is None else seen[i], f"{what}[{i}]")
            for i, value in enumerate(columns)
        )
    array = np.asarray(columns)
    low, high = array.min(axis=0), array.max(axis=0)
    if seen is None:
        return np.stack([low, high])
    if not isinstance(seen, np.ndarray) or seen.shape[1:] != low.shape or seen.dtype != array.dtype:
        raise ConfigError(
            f"{what}: the shape or dtype changes between episodes ({array.dtype}"
            f"{list(array.shape[1:])} after {getattr(seen, 'dtype', '?')}"
            f"{list(getattr(seen, 'shape', (0, '?'))[1:])})",
            key="output_dir",
        )
    return np.stack([np.minimum(seen[0], low), np.maximum(seen[1], high)])


def _fits(space: gym.Space[Any], columns: Any) -> str | None:
    """None when ``columns`` have the structure and shapes of ``space``; else what differs."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(columns, Mapping) or set(columns) != set(space.spaces):
            got = sorted(columns) if isinstance(columns, Mapping) else type(columns).__name__
            return f"Dict keys {sorted(space.spaces)} but the data has {got}"
        for key, sub in space.spaces.items():
            problem = _fits(sub, columns[key])
            if problem is not None:
                return f"[{key!r}]: {problem}"
        return None
    if isinstance(space, gym.spaces.Tuple):
        if not isinstance(columns, tuple) or len(columns) != len(space.spaces):
            return f"a Tuple of {len(space.spaces)} but the data is not one"
        for i, sub in enumerate(space.spaces):
            problem = _fits(sub, columns[i])
            if problem is not None:
                return f"[{i}]: {problem}"
        return None
    if isinstance(columns, Mapping | tuple):
        return f"{space} but the data is a {type(columns).__name__}"
    shape = np.asarray(columns).shape[1:]
    if space.shape is not None and tuple(space.shape) != shape:
        return f"{space} has shape {space.shape} but the data {shape}"
    return None


def _gym_env_inside(env: Any) -> gym.Env[Any, Any] | None:
    """The gymnasium env an async-rollout adapter wraps (below its async wrappers), if any."""
    seen = 0
    while env is not None and seen < 32:
        if isinstance(env, gym.Env):
            return env
        env = getattr(env, "env", None)
        seen += 1
    return None


@dataclass
class _Built:
    """The recorded config's env, built to read its spaces; closed when the export ends."""

    env: Any
    observation_space: gym.Space[Any]
    action_space: gym.Space[Any]
    gym_env: gym.Env[Any, Any] | None

    def close(self) -> None:
        anyio.run(close_env, self.env)


def _spaces_from_env(config: Mapping[str, Any] | None, notes: list[str]) -> _Built | None:
    """Build the recorded config's env (with its wrappers) for its spaces; None if impossible.

    Why not is appended to ``notes``.
    """
    from .._env import env_factory

    env_cfg = None if config is None else config.get("env")
    if config is None or not isinstance(env_cfg, Mapping) or "_target_" not in env_cfg:
        notes.append(f"no recorded env config ({STATS} missing, or without an env _target_)")
        return None
    try:
        env = env_factory(dict(env_cfg), wrappers=config.get("wrappers") or ())(0)
    except Exception as exc:
        notes.append(f"the recorded env could not be built here ({type(exc).__name__}: {exc})")
        return None
    try:
        return _Built(env, env.observation_space, env.action_space, _gym_env_inside(env))
    except Exception as exc:
        # A RemoteEnv knows its spaces only after connecting; the export does not dial out.
        anyio.run(close_env, env)
        notes.append(f"the env's spaces are not available ({type(exc).__name__}: {exc})")
        return None


# --- episodes -------------------------------------------------------------------------------------


def _stack(values: Sequence[Any], what: str, index: int) -> Any:
    """Per-step values (dicts, tuples, arrays, scalars) as Minari's stacked columns."""
    first = values[0]
    if isinstance(first, Mapping):
        return {key: _stack([v[key] for v in values], f"{what}[{key!r}]", index) for key in first}
    if isinstance(first, tuple):
        return tuple(
            _stack([v[i] for v in values], f"{what}[{i}]", index) for i in range(len(first))
        )
    try:
        array = np.asarray(values)
    except ValueError:
        array = None
    if array is None or array.dtype.hasobject or array.dtype.kind in "USV":
        raise ConfigError(
            f"episode {index}: {what} are not numeric arrays of one shape (recorded as JSON); "
            "Minari stores arrays only",
            key="output_dir",
        )
    return array


def _info_columns(infos: Sequence[Any], path: str, dropped: set[str]) -> dict[str, Any]:
    """Minari's infos: per key, the T+1 values stacked; keys that do not stack are dropped."""
    dicts = [info if isinstance(info, Mapping) else {} for info in infos]
    keys: list[str] = []
    for info in dicts:
        keys += [k for k in info if k not in keys]
    columns: dict[str, Any] = {}
    for key in keys:
        name = f"{path}{key}"
        if not all(key in info for info in dicts):
            dropped.add(name)
            continue
        values = [info[key] for info in dicts]
        if all(isinstance(v, Mapping) for v in values):
            columns[key] = _info_columns(values, f"{name}/", dropped)
        elif all(isinstance(v, str) for v in values):
            columns[key] = list(values)  # h5py stores str lists, not numpy unicode arrays
        else:
            try:
                array = np.asarray(values)
            except ValueError:
                array = None
            if array is None or array.dtype.kind not in "biuf":
                dropped.add(name)
            else:
                columns[key] = array
    return columns


@dataclass
class _Episode:
    index: int
    env_seed: int | None
    observations: Any
    actions: Any
    rewards: np.ndarray[Any, Any]
    terminations: np.ndarray[Any, Any]
    truncations: np.ndarray[Any, Any]
    infos: dict[str, Any]


def _episodes(
    output_dir: Path, include_failed: bool, skipped: dict[str, int], dropped: set[str]
) -> Iterator[_Episode]:
    """The exportable episodes of ``output_dir``, read one file at a time, in index order."""
    for index, path in trajectory_files(output_dir):
        trajectory, meta = _read(path)
        episode = meta.get("episode") or {}
        outcome = episode.get("outcome", "completed")
        if outcome != "completed" and not include_failed:
            skipped[outcome] = skipped.get(outcome, 0) + 1
            continue
        if len(trajectory.actions) == 0:
            skipped["no step taken"] = skipped.get("no step taken", 0) + 1
            continue
        yield _episode(index, episode, outcome, trajectory, dropped)


def _episode(
    index: int, meta: Mapping[str, Any], outcome: str, trajectory: Trajectory, dropped: set[str]
) -> _Episode:
    truncations = np.asarray(trajectory.truncated, dtype=np.bool_).copy()
    if outcome != "completed":
        # Cut short by an error or a deadline outside the MDP: an offline-RL reader must not
        # bootstrap from the last step as if the episode went on, nor treat it as terminal.
        truncations[-1] = True
    seed = meta.get("env_seed")
    return _Episode(
        index=index,
        env_seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        observations=_stack(trajectory.observations, "observations", index),
        actions=_stack(trajectory.actions, "actions", index),
        rewards=np.asarray(trajectory.rewards, dtype=np.float64),
        terminations=np.asarray(trajectory.terminated, dtype=np.bool_),
        truncations=truncations,
        infos=_info_columns(trajectory.infos, "", dropped),
    )


def _buffer(minari: Any, k: int, episode: _Episode) -> Any:
    return minari.data_collector.EpisodeBuffer(
        id=k,
        seed=episode.env_seed,
        observations=episode.observations,
        actions=episode.actions,
        rewards=episode.rewards,
        terminations=episode.terminations,
        truncations=episode.truncations,
        infos=episode.infos,
    )


def _read_config(output_dir: Path) -> Mapping[str, Any] | None:
    import json

    path = output_dir / STATS
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = stats.get("config") if isinstance(stats, dict) else None
    return config if isinstance(config, Mapping) else None


def _check_dataset_id(minari: Any, dataset_id: str) -> Path:
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except ValueError as exc:
        raise ConfigError(str(exc), key="dataset_id") from exc
    path = Path(minari.storage.get_dataset_path(dataset_id))
    if path.exists():
        raise ConfigError(
            f"a Minari dataset {dataset_id!r} exists already at {path}; choose another id "
            f"(or version), or delete it first (minari.delete_dataset({dataset_id!r}))",
            key="dataset_id",
        )
    return path


def _description(output_dir: Path, config: Mapping[str, Any] | None) -> str:
    env = (config or {}).get("env")
    target = env.get("_target_") if isinstance(env, Mapping) else None
    what = f" of env {target}" if target else ""
    return f"A rollout{what} recorded by async-rollout {__version__} in {output_dir.resolve()}."


def _algorithm(config: Mapping[str, Any] | None) -> str | None:
    agent = (config or {}).get("agent")
    target = agent.get("_target_") if isinstance(agent, Mapping) else None
    return str(target) if target else None


def export_minari(
    output_dir: str | os.PathLike[str],
    dataset_id: str,
    *,
    include_failed: bool = False,
    spaces_from: SpacesFrom = "auto",
    jpeg_encoding: bool = False,
    author: str | None = None,
    author_email: str | None = None,
    code_permalink: str | None = None,
    algorithm_name: str | None = None,
    description: str | None = None,
) -> MinariExport:
    """Write the trajectories of a recorded rollout as the Minari dataset ``dataset_id``.

    Blocking (reads every trajectory file, writes HDF5): call it in a worker
    thread from async code. The module documentation says what goes in.

    Args:
        output_dir: A rollout's output directory, recorded with
            ``record_trajectory=True``.
        dataset_id: Minari's ``(namespace/)name-v<version>``.
        include_failed: Also export failed episodes that took a step, their
            last step marked truncated.
        spaces_from: ``"env"``: build the recorded config's env for its
            spaces (an error if that fails); ``"data"``: infer them from the
            recorded arrays; ``"auto"``: the env, else the data.
        jpeg_encoding: Let Minari store image observations as JPEG (lossy,
            smaller); off by default, so the data comes back exactly.
        author: Dataset metadata, as Minari defines it.
        author_email: Dataset metadata.
        code_permalink: Dataset metadata.
        algorithm_name: Dataset metadata; default: the agent's ``_target_``.
        description: Dataset metadata; default: where the rollout came from.

    Returns:
        What was written.

    Raises:
        ConfigError: ``output_dir`` has no trajectories to export, the data
            cannot be stored by Minari, ``dataset_id`` is malformed or taken,
            or ``spaces_from="env"`` and the env cannot be built.
        ImportError: minari or h5py is missing (the message says how to get them).
    """
    if spaces_from not in ("auto", "env", "data"):
        raise ValueError(f"spaces_from must be 'auto', 'env' or 'data'; got {spaces_from!r}")
    minari = _import_minari()
    folder = Path(output_dir)
    if not folder.is_dir():
        raise ConfigError(f"output_dir {str(folder)!r} is not a directory", key="output_dir")
    files = trajectory_files(folder)
    if not files:
        raise ConfigError(
            f"output_dir {str(folder)!r} has no trajectories: record the rollout with "
            "runner.record_trajectory=true (record_trajectory=True in Python)",
            key="output_dir",
        )
    dataset_path = _check_dataset_id(minari, dataset_id)
    config = _read_config(folder)
    notes: list[str] = []
    skipped: dict[str, int] = {}
    dropped: set[str] = set()

    built = None if spaces_from == "data" else _spaces_from_env(config, notes)
    if built is None and spaces_from == "env":
        raise ConfigError(
            f"cannot read the spaces from the recorded env: {'; '.join(notes)}",
            key="output_dir",
        )
    try:
        return _write(
            minari,
            folder,
            dataset_id,
            dataset_path,
            built,
            strict=spaces_from == "env",
            include_failed=include_failed,
            jpeg_encoding=jpeg_encoding,
            metadata={
                "author": author,
                "author_email": author_email,
                "code_permalink": code_permalink,
                "algorithm_name": algorithm_name or _algorithm(config),
                "description": description or _description(folder, config),
            },
            notes=notes,
            skipped=skipped,
            dropped=dropped,
        )
    finally:
        if built is not None:
            built.close()


def _write(
    minari: Any,
    folder: Path,
    dataset_id: str,
    dataset_path: Path,
    built: _Built | None,
    *,
    strict: bool,
    include_failed: bool,
    jpeg_encoding: bool,
    metadata: Mapping[str, Any],
    notes: list[str],
    skipped: dict[str, int],
    dropped: set[str],
) -> MinariExport:
    # Spaces from the data need every episode seen first (a Discrete action's size is the
    # largest action taken), so that case reads the files twice, keeping only per-leaf
    # extremes in between; the env case checks the first episode, then reads them once.
    observation_space: gym.Space[Any] | None = None
    action_space: gym.Space[Any] | None = None
    gym_env: gym.Env[Any, Any] | None = None
    if built is not None:
        observation_space, action_space = built.observation_space, built.action_space
        gym_env = built.gym_env
        first = next(_episodes(folder, include_failed, {}, set()), None)
        for space, columns, what in (
            (observation_space, None if first is None else first.observations, "observation"),
            (action_space, None if first is None else first.actions, "action"),
        ):
            problem = None if columns is None else _fits(space, columns)
            if problem is not None:
                message = f"the recorded env's {what} space does not fit the data: {problem}"
                if strict:
                    raise ConfigError(message, key="output_dir")
                notes.append(message)
                observation_space = action_space = gym_env = None
                break
    spaces_from = "env" if observation_space is not None else "data"
    if observation_space is None or action_space is None:
        observations: Any = None
        actions: Any = None
        for episode in _episodes(folder, include_failed, {}, set()):
            observations = _extremes(episode.observations, observations, "observations")
            actions = _extremes(episode.actions, actions, "actions")
        if observations is None:
            raise ConfigError(_nothing_to_export(folder, include_failed), key="output_dir")
        try:
            observation_space = infer_space(observations)
            action_space = infer_space(actions, action=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"cannot infer the spaces from the recorded data: {exc}", key="output_dir"
            ) from exc

    env_spec = None if gym_env is None else gym_env.spec
    if env_spec is not None:
        try:
            env_spec.to_json()
        except Exception as exc:
            notes.append(f"the env spec cannot be stored ({exc}); the dataset has none")
            env_spec, gym_env = None, None

    if env_spec is None:
        why = (
            "the recorded env is not a registered gymnasium env"
            if spaces_from == "env"
            else "the recorded env was not used"
        )
        notes.append(
            f"the dataset has no env spec ({why}), so dataset.recover_environment() will not work"
        )
    kwargs: dict[str, Any] = {"data_format": "hdf5", **metadata}
    if "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters:
        kwargs["jpeg_encoding"] = jpeg_encoding
    elif jpeg_encoding:
        notes.append("this minari version has no jpeg_encoding; images are stored raw")

    def flush(dataset: Any, batch: list[Any]) -> Any:
        """Create the dataset with the first batch, then append each further batch."""
        if dataset is not None:
            dataset.update_dataset_from_buffer(batch)
            return dataset
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_METADATA_NAGS, category=UserWarning)
            # The gymnasium env instance, not its spec: given a spec, Minari would make a
            # second env just to read the spaces passed here anyway, and never close it.
            return minari.create_dataset_from_buffers(
                dataset_id,
                batch,
                env=gym_env,
                observation_space=observation_space,
                action_space=action_space,
                **kwargs,
            )

    dataset = None
    indices: list[int] = []
    total_steps = 0
    batch: list[Any] = []
    try:
        for episode in _episodes(folder, include_failed, skipped, dropped):
            batch.append(_buffer(minari, len(indices), episode))
            indices.append(episode.index)
            total_steps += len(episode.rewards)
            if len(batch) == BATCH_EPISODES:
                dataset, batch = flush(dataset, batch), []
        if not indices:
            raise ConfigError(_nothing_to_export(folder, include_failed), key="output_dir")
        if batch:
            dataset = flush(dataset, batch)
    except BaseException:
        # The id was free before: a half-written dataset would block the next try, and
        # would load as if it were whole.
        shutil.rmtree(dataset_path, ignore_errors=True)
        raise
    if spaces_from == "data":
        notes.append(
            f"spaces inferred from the data: observations {observation_space}, "
            f"actions {action_space}"
        )
    return MinariExport(
        dataset_id=dataset_id,
        path=dataset_path,
        n_episodes=len(indices),
        total_steps=total_steps,
        indices=indices,
        spaces_from=spaces_from,
        env_id=None if env_spec is None else env_spec.id,
        skipped=skipped,
        dropped_infos=sorted(dropped),
        notes=notes,
    )


def _nothing_to_export(folder: Path, include_failed: bool) -> str:
    hint = "" if include_failed else " (failed episodes are left out unless include_failed)"
    return f"output_dir {str(folder)!r} has no episode to export{hint}"
