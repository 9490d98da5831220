"""The wire protocol: framing, the msgpack value codec, and message checks.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
one msgpack value, always a map with a ``"type"`` key. numpy arrays and numpy
scalars travel as msgpack extension types whose payload is a small binary
header (dtype, shape) followed by the raw bytes; nothing is ever pickled.
``docs/PROTOCOL.md`` is the normative description; this module follows it.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Mapping
from typing import Any

import anyio
import msgpack
import numpy as np
from anyio.abc import AsyncResource, ByteStream

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "EncodeError",
    "FrameStream",
    "ProtocolError",
    "decode",
    "encode",
    "frame",
    "take_frame",
    "to_wire",
]

logger = logging.getLogger("async_rollout")

PROTOCOL_VERSION = 1
"""Bumped on every incompatible change; additions that old peers can ignore keep it."""
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
"""Largest frame payload either side accepts unless configured otherwise."""

EXT_NDARRAY = 1
EXT_SCALAR = 2

_HEADER = struct.Struct(">I")
_DIM = struct.Struct(">Q")
# Kinds whose values are plain bytes in memory: bool, ints, floats, complex,
# fixed-width bytes and text, datetimes. Object and structured dtypes are not.
_ARRAY_KINDS = frozenset("biufcSUmM")
_MAX_NDIM = 64
_SHAPES = [struct.Struct(f">{n}Q") for n in range(_MAX_NDIM + 1)]
_INT_MIN = -(2**63)
_INT_END = 2**64


class ProtocolError(Exception):
    """A peer broke the wire protocol: a malformed, oversized or unexpected frame."""


class EncodeError(ValueError):
    """A value cannot be sent: the frame would be too large, or msgpack refused it."""


# --- values ------------------------------------------------------------------------------------

_warned_types: set[type] = set()


def _as_repr(value: object) -> str:
    """Send what the protocol cannot carry as its repr, warning once per type."""
    kind = type(value)
    if kind not in _warned_types:
        _warned_types.add(kind)
        logger.warning(
            "a %s.%s cannot be sent over the wire: sending its repr instead (said once per type)",
            kind.__module__,
            kind.__qualname__,
        )
    return repr(value)


# Payload headers (dtype and shape) by (dtype, shape), and dtypes by their wire string: a
# step sends and receives arrays of the same few kinds, so each is described or parsed once.
# Bounded: a peer choosing dtypes and shapes must not grow them without end.
_CACHE_LIMIT = 1024
_headers: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes | None] = {}
_dtypes: dict[bytes, np.dtype[Any]] = {}


def _array_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes | None:
    """The payload's header for an array of ``dtype`` and ``shape``; None if not sendable."""
    key = (dtype, shape)
    try:
        return _headers[key]
    except KeyError:
        pass
    header = None
    if dtype.kind in _ARRAY_KINDS and dtype.fields is None:
        typestr = dtype.str.encode("ascii")
        dims = b"".join(_DIM.pack(d) for d in shape)
        header = b"".join((bytes((len(typestr),)), typestr, bytes((len(shape),)), dims))
    if len(_headers) >= _CACHE_LIMIT:
        _headers.clear()
    _headers[key] = header
    return header


def _array_payload(array: np.ndarray[Any, Any]) -> bytes:
    header = _array_header(array.dtype, array.shape)
    assert header is not None
    return header + array.tobytes()


def _key(key: object) -> Any:
    if type(key) is str or type(key) is bytes:
        return key
    if isinstance(key, bool | None | float):
        return key
    if isinstance(key, int | np.integer) and _INT_MIN <= int(key) < _INT_END:
        return int(key)
    if isinstance(key, str | np.str_):
        return str(key)
    return _as_repr(key)


def to_wire(value: Any) -> Any:
    """Turn ``value`` into msgpack-native values and extension types.

    Arrays and numpy scalars become extension types (exact dtype, shape and
    bytes); tuples become lists; mappings become maps; subclasses of the
    builtins become the builtins. Anything else becomes its ``repr``, with
    one logged warning per type.
    """
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None or kind is bytes:
        return value
    if kind is np.ndarray:
        header = _array_header(value.dtype, value.shape)
        if header is None:
            return _as_repr(value)
        return msgpack.ExtType(EXT_NDARRAY, header + value.tobytes())
    if kind is int:
        return value if _INT_MIN <= value < _INT_END else _as_repr(value)
    if kind is dict:
        return {k if type(k) is str else _key(k): to_wire(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [to_wire(v) for v in value]
    if isinstance(value, np.generic):
        header = _array_header(value.dtype, ())
        if header is None:
            return _as_repr(value)
        return msgpack.ExtType(EXT_SCALAR, header + np.asarray(value).tobytes())
    # The exact types are done: now subclasses and other kinds of containers.
    if isinstance(value, Mapping):
        return {k if type(k) is str else _key(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, np.ndarray):  # a subclass (masked, matrix): send the plain array
        return to_wire(np.asarray(value))
    if isinstance(value, bool | int):
        return to_wire(int(value))
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return _as_repr(value)


def _dtype_of(typestr: bytes) -> np.dtype[Any]:
    """The dtype a payload names, checked to be one the protocol allows."""
    dtype = _dtypes.get(typestr)
    if dtype is not None:
        return dtype
    try:
        dtype = np.dtype(typestr.decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"bad array dtype: {exc}") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"array dtype {dtype.str!r} is not allowed")
    if len(_dtypes) >= _CACHE_LIMIT:
        _dtypes.clear()
    _dtypes[typestr] = dtype
    return dtype


def _parse_array(data: bytes) -> np.ndarray[Any, Any]:
    size = len(data)
    if size < 2:
        raise ProtocolError("array payload too short")
    pos = 1 + data[0]
    if size < pos + 1:
        raise ProtocolError("array payload too short for its dtype")
    dtype = _dtype_of(data[1:pos])
    ndim = data[pos]
    pos += 1
    if ndim > _MAX_NDIM or size < pos + ndim * _DIM.size:
        raise ProtocolError(f"bad array shape header (ndim={ndim})")
    shape: tuple[int, ...] = _SHAPES[ndim].unpack_from(data, pos)
    pos += ndim * _DIM.size
    count = math.prod(shape)
    if count * dtype.itemsize != size - pos:
        raise ProtocolError(
            f"array of shape {shape} and dtype {dtype.str} needs {count * dtype.itemsize} "
            f"bytes; got {size - pos}"
        )
    if count == 0:
        return np.empty(shape, dtype)
    # A copy: frombuffer would give a read-only view of the frame.
    array = np.frombuffer(data, dtype, count, pos).copy()
    return array if ndim == 1 else array.reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        return _parse_array(data)
    if code == EXT_SCALAR:
        array = _parse_array(data)
        if array.ndim != 0:
            raise ProtocolError(f"a numpy scalar must have shape (); got {array.shape}")
        return array[()]
    raise ProtocolError(f"unknown msgpack extension type {code}")


# --- messages and frames -----------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    """Encode one message (a map with a ``"type"`` key) as a frame payload.

    Raises:
        EncodeError: msgpack refused a value (for example, a string that is
            not valid Unicode).
    """
    try:
        payload: bytes = msgpack.packb(to_wire(message), use_bin_type=True, default=_as_repr)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode the {message.get('type')!r} message: {exc}") from exc
    return payload


def decode(payload: bytes) -> dict[str, Any]:
    """Decode a frame payload into a message.

    Raises:
        ProtocolError: The payload is not one msgpack map with a string
            ``"type"``, or holds a malformed array.
    """
    try:
        message = msgpack.unpackb(
            payload, raw=False, strict_map_key=False, ext_hook=_ext_hook, use_list=True
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many kinds on garbage, and RecursionError on depth
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a frame must hold a map; got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(f"a message needs a string 'type'; got {kind!r}")
    return message


def frame(payload: bytes, max_size: int) -> bytes:
    """Prefix ``payload`` with its length.

    Raises:
        EncodeError: The payload is larger than ``max_size``, the receiver's limit.
    """
    if len(payload) > max_size:
        raise EncodeError(f"a frame of {len(payload)} bytes exceeds the peer's limit of {max_size}")
    return _HEADER.pack(len(payload)) + payload


def take_frame(buffer: bytearray, limit: int) -> bytes | None:
    """Remove the first whole frame from ``buffer`` and return its payload; None if incomplete.

    Raises:
        ProtocolError: The frame's prefix announces an empty frame, or one
            larger than ``limit`` (known from the prefix alone).
    """
    if len(buffer) < _HEADER.size:
        return None
    end = _HEADER.size + _announced_size(buffer, limit)
    if len(buffer) < end:
        return None
    payload = bytes(buffer[_HEADER.size : end])
    del buffer[:end]
    return payload


def _announced_size(buffer: bytearray, limit: int) -> int:
    """The payload size a complete header at the start of ``buffer`` announces, checked."""
    (size,) = _HEADER.unpack_from(buffer)
    if size == 0:
        raise ProtocolError("empty frame")
    if size > limit:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {limit}")
    return int(size)


class FramePacker:
    """What every end of a frame stream shares: a message encoded and framed for its peer."""

    peer_max_frame_size: int
    """The largest frame the peer accepts (learnt in the handshake)."""

    def pack(self, message: Mapping[str, Any]) -> bytes:
        """Encode and frame ``message`` without sending it (so failures leave the stream intact)."""
        return frame(encode(message), self.peer_max_frame_size)


class FrameStream(FramePacker, AsyncResource):
    """Messages over a byte stream: one frame per message, in both directions.

    Args:
        stream: The connected byte stream (TCP, Unix socket, TLS).
        max_frame_size: The largest frame accepted from the peer.
        peer_max_frame_size: The largest frame the peer accepts (learnt in the
            handshake); sending more is an :class:`EncodeError`.
    """

    def __init__(
        self,
        stream: ByteStream,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        peer_max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.stream = stream
        self.max_frame_size = max_frame_size
        self.peer_max_frame_size = peer_max_frame_size
        self._buffer = bytearray()

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message."""
        await self.stream.send(self.pack(message))

    async def send_packed(self, data: bytes) -> None:
        """Send a frame made by :meth:`pack`."""
        await self.stream.send(data)

    async def receive(self, max_size: int | None = None) -> dict[str, Any]:
        """Receive one message.

        Args:
            max_size: A tighter limit than ``max_frame_size`` for this frame.

        Raises:
            anyio.EndOfStream: The peer closed the connection between frames.
            anyio.IncompleteRead: The peer closed the connection inside a frame.
            ProtocolError: The frame is empty, too large, or malformed.
        """
        limit = self.max_frame_size if max_size is None else max_size
        buffer = self._buffer
        while len(buffer) < _HEADER.size:
            await self._fill(buffer, 65536)
        end = _HEADER.size + _announced_size(buffer, limit)
        while len(buffer) < end:
            await self._fill(buffer, max(end - len(buffer), 65536))
        payload = bytes(buffer[_HEADER.size : end])
        del buffer[:end]
        return decode(payload)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed as frames."""
        return len(self._buffer)

    async def fill(self) -> None:
        """Receive whatever arrives next into the buffer, for :meth:`receive` to read later.

        Raises:
            anyio.EndOfStream: The peer closed the connection (IncompleteRead
                if it did inside a frame).
        """
        await self._fill(self._buffer, 65536)

    async def _fill(self, buffer: bytearray, max_bytes: int) -> None:
        try:
            buffer += await self.stream.receive(max_bytes)
        except anyio.EndOfStream:
            if buffer:
                raise anyio.IncompleteRead from None
            raise

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self.stream.aclose()


def field(message: Mapping[str, Any], name: str, kinds: type | tuple[type, ...]) -> Any:
    """Read a required field of a message, checking its type.

    Raises:
        ProtocolError: The field is missing or of another type.
    """
    if name not in message:
        raise ProtocolError(f"the {message.get('type')!r} message lacks its {name!r} field")
    value = message[name]
    if kinds is object:
        return value
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        raise ProtocolError(
            f"field {name!r} of the {message.get('type')!r} message has the wrong type "
            f"{type(value).__name__}"
        )
    return value


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)
