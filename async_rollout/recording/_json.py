"""JSON helpers shared by the file sinks: safe conversion, atomic writes, hashes, versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .._types import to_container
from .._version import __version__
from ._writer_child import iso_time as _iso_time

__all__ = [
    "atomic_write_text",
    "config_hash",
    "dumps",
    "iso_time",
    "package_versions",
    "plain_config",
    "timestamp",
    "to_jsonable",
]


#: Nesting beyond which values are written as their repr (this also ends cycles).
_MAX_DEPTH = 64


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """Turn ``value`` into something :func:`json.dumps` takes, losing as little as possible.

    Numbers, strings, booleans and None pass; numpy scalars become Python
    numbers and arrays nested lists; mappings become dicts with string keys;
    lists and tuples become lists. Anything else becomes its ``repr``, so a
    recorder never fails on an exotic value in an info dict.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if _depth > _MAX_DEPTH:
        return repr(value)
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), _depth + 1)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufUS":
            return to_jsonable(value.tolist(), _depth + 1)
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, _depth + 1) for v in value]
    return repr(value)


def _make_encoder() -> Any:
    """The C encoder :func:`json.dumps` builds on every call, built once (None without it)."""
    try:
        from _json import encode_basestring_ascii, make_encoder
    except ImportError:  # pragma: no cover - CPython always has it
        return None
    # No circular-reference markers: a cycle ends in RecursionError, handled by dumps.
    return make_encoder(
        None, to_jsonable, encode_basestring_ascii, None, ":", ",", False, False, True
    )


_ENCODE = _make_encoder()


def dumps(value: Any) -> str:
    """One line of JSON (no newline inside), converted as by :func:`to_jsonable`.

    The common case (plain dicts, lists, numbers, strings) goes straight to the
    C encoder, built once rather than per call as :func:`json.dumps` does; only
    what it cannot take is converted. Non-finite floats are written as
    ``NaN``/``Infinity``, as Python's :mod:`json` (and pandas) read them back,
    rather than silently becoming null.
    """
    try:
        if _ENCODE is not None:
            return "".join(_ENCODE(value, 0))
        return json.dumps(value, separators=(",", ":"), default=to_jsonable)  # pragma: no cover
    except (TypeError, ValueError, RecursionError):
        # Keys json cannot take (tuples, ...) or a circular structure.
        return json.dumps(to_jsonable(value), separators=(",", ":"), default=repr)


def iso_time(when: float | None = None) -> str:
    """A :func:`time.time` value (default: now) as ISO 8601 text in UTC, with microseconds.

    ``datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")``,
    cheaper (the writer process formats the event log's times the same way).
    """
    return _iso_time(time.time() if when is None else when)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name in the same folder, then rename.

    A reader (or a process killed mid-write) sees either the old file or the
    new one, never half of one. The temporary name starts with a dot and ends
    in ``.tmp``, which every reader of an output folder skips.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def plain_config(config: Mapping[str, Any] | None) -> Any:
    """The resolved config as plain JSON-able data (omegaconf containers resolved), or None."""
    if config is None:
        return None
    return to_jsonable(to_container(config))


def config_hash(config: Mapping[str, Any] | None) -> str | None:
    """SHA-256 of the resolved config's canonical JSON (sorted keys, no spaces), or None."""
    plain = plain_config(config)
    if plain is None:
        return None
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a recording depends on, and of Python."""
    import gymnasium

    return {
        "async_rollout": __version__,
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "anyio": _version_of("anyio"),
        "python": platform.python_version(),
    }


def timestamp(when: datetime) -> str:
    """ISO 8601 text of an aware datetime (UTC in every file we write)."""
    return when.isoformat()
