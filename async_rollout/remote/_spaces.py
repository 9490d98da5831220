"""Space descriptions: gymnasium spaces to and from plain maps for the handshake.

Descriptions are built from numbers, strings, lists and arrays only, so a
server in another language can write them (see ``docs/PROTOCOL.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ._wire import ProtocolError

__all__ = ["conform", "describe_space", "restore_space"]


def describe_space(space: gym.Space[Any]) -> dict[str, Any]:
    """Describe a Box, Discrete, MultiDiscrete, MultiBinary, Dict or Tuple space.

    Raises:
        TypeError: Any other kind of space.
    """
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": space.dtype.str,
            "low": _bound(space.low),
            "high": _bound(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {
            "type": "Discrete",
            "n": int(space.n),
            "start": int(space.start),
            "dtype": np.dtype(space.dtype).str,
        }
    if isinstance(space, spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": space.nvec,
            "start": space.start,
            "dtype": np.dtype(space.dtype).str,
        }
    if isinstance(space, spaces.MultiBinary):
        n: Any = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(d) for d in n]}
    if isinstance(space, spaces.Dict):
        return {
            "type": "Dict",
            "spaces": [[key, describe_space(sub)] for key, sub in space.spaces.items()],
        }
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [describe_space(sub) for sub in space.spaces]}
    raise TypeError(
        f"a {type(space).__name__} space cannot be described on the wire: only Box, Discrete, "
        "MultiDiscrete, MultiBinary, Dict and Tuple (nested freely) are supported"
    )


def _bound(bound: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A Box bound, as a 0-d array when uniform: big image spaces keep a small handshake."""
    if bound.size and np.all(bound == bound.flat[0]):
        return np.asarray(bound.flat[0])
    return bound


def _get(desc: Mapping[str, Any], name: str) -> Any:
    if name not in desc:
        raise ProtocolError(f"a {desc.get('type')} space description lacks {name!r}")
    return desc[name]


def restore_space(desc: Any) -> gym.Space[Any]:
    """Rebuild the space a description describes.

    Raises:
        ProtocolError: The description is malformed or names an unknown kind.
    """
    try:
        return _restore(desc)
    except ProtocolError:
        raise
    except Exception as exc:  # gymnasium and numpy raise many kinds on nonsense
        raise ProtocolError(f"bad space description: {type(exc).__name__}: {exc}") from None


def _restore(desc: Any) -> gym.Space[Any]:
    if not isinstance(desc, dict):
        raise ProtocolError(f"a space description must be a map; got {type(desc).__name__}")
    kind = desc.get("type")
    if kind == "Box":
        dtype = np.dtype(_get(desc, "dtype"))
        shape = tuple(int(d) for d in _get(desc, "shape"))
        # A bound may be a scalar (0-d array or number), the same across the shape.
        low = np.asarray(_get(desc, "low"))
        high = np.asarray(_get(desc, "high"))
        low = np.full(shape, low) if low.ndim == 0 else low
        high = np.full(shape, high) if high.ndim == 0 else high
        return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        n, first = int(_get(desc, "n")), int(desc.get("start", 0))
        if "dtype" in desc:
            discrete: Any = spaces.Discrete
            try:
                space: gym.Space[Any] = discrete(n, start=first, dtype=np.dtype(desc["dtype"]))
            except TypeError:  # gymnasium < 1.1 has no dtype for Discrete
                pass
            else:
                return space
        return spaces.Discrete(n, start=first)
    if kind == "MultiDiscrete":
        nvec = np.asarray(_get(desc, "nvec"))
        start = desc.get("start")
        dtype = np.dtype(desc.get("dtype", "<i8"))
        return spaces.MultiDiscrete(
            nvec, dtype=dtype, start=None if start is None else np.asarray(start)
        )
    if kind == "MultiBinary":
        n = _get(desc, "n")
        return spaces.MultiBinary(int(n) if isinstance(n, int) else [int(d) for d in n])
    if kind == "Dict":
        pairs = _get(desc, "spaces")
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in pairs
        ):
            raise ProtocolError("a Dict space's 'spaces' must be a list of [key, description]")
        # A sequence of pairs keeps the server's key order (a mapping would be sorted).
        return spaces.Dict([(key, _restore(sub)) for key, sub in pairs])
    if kind == "Tuple":
        subs = _get(desc, "spaces")
        if not isinstance(subs, list):
            raise ProtocolError("a Tuple space's 'spaces' must be a list")
        return spaces.Tuple([_restore(sub) for sub in subs])
    raise ProtocolError(f"unknown space type {kind!r}")


# Spaces whose samples arrive as they left: conform() returns them unchanged (checked first,
# as it is on every step).
_FLAT = frozenset({spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary})


def conform(value: Any, space: gym.Space[Any]) -> Any:
    """Give a decoded value the container types of ``space``'s samples.

    msgpack has one sequence type, so a Tuple space's sample arrives as a
    list; this turns it back into a tuple (recursively, through Dicts).
    Values that do not match the space's structure are returned unchanged,
    for the env to judge.
    """
    if type(space) in _FLAT:
        return value
    if isinstance(space, spaces.Tuple):
        if isinstance(value, list | tuple) and len(value) == len(space.spaces):
            return tuple(conform(v, s) for v, s in zip(value, space.spaces, strict=True))
        return value
    if isinstance(space, spaces.Dict):
        if isinstance(value, dict):
            subspaces = space.spaces
            return {k: conform(v, subspaces[k]) if k in subspaces else v for k, v in value.items()}
        return value
    return value
