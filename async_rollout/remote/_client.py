"""RemoteEnv: an AsyncEnv whose env lives on a server, reached over the wire protocol."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, NoReturn

import anyio
import gymnasium as gym
import numpy as np
from anyio.abc import ByteStream

from ..errors import RemoteEnvError
from ._asyncio_frames import AsyncioFrameStream
from ._sockets import SocketFrameStream, connect_unix
from ._spaces import conform, restore_space
from ._wire import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    EncodeError,
    FrameStream,
    ProtocolError,
    field,
)

__all__ = ["RemoteEnv", "RemoteEnvState"]

logger = logging.getLogger("async_rollout")

# A connection: anyio's streams for TCP and TLS; for a Unix socket, an asyncio transport on
# asyncio and the socket itself elsewhere (see _open_frames).
_Frames = FrameStream | SocketFrameStream | AsyncioFrameStream

# Action types whose equal values have equal encodings, and how many step frames to keep.
_INTEGER_TYPES = frozenset(
    {int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64}
)
_STEP_FRAMES_MAX = 256

#: Seconds ``close()`` waits for the server to confirm that it closed the env.
CLOSE_TIMEOUT_S = 2.0

_TRANSPORT_ERRORS = (
    OSError,  # includes TimeoutError, ssl.SSLError and anyio.ConnectionFailed
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    ProtocolError,
)


# What each reply must carry (beyond its type); ``object`` accepts any value.
_REPLY_FIELDS: dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    "reset": (("observation", object), ("info", dict)),
    "step": (
        ("observation", object),
        ("reward", (float, int)),
        ("terminated", bool),
        ("truncated", bool),
        ("info", dict),
    ),
    "render": (),
}


class RemoteEnvState(enum.Enum):
    """Where a :class:`RemoteEnv` is in its life.

    ``IDLE`` -> ``CONNECTED`` (``connect()`` or the first ``reset()``);
    ``CONNECTED`` -> ``BROKEN`` (the connection dropped, timed out, or the
    server ended the session); ``BROKEN`` -> ``CONNECTED`` (the next
    ``reset()`` opens a new session); any -> ``CLOSED`` (``close()``, final).
    """

    IDLE = "idle"
    CONNECTED = "connected"
    BROKEN = "broken"
    CLOSED = "closed"


class _SpacesUnknown(RemoteEnvError, AttributeError):
    """The spaces are read before the handshake.

    Also an AttributeError so that ``hasattr`` and ``getattr(env, name, default)``
    (and ``isinstance`` checks against runtime protocols) see a missing
    attribute instead of an exception.
    """


def _plain_step_reply(reply: dict[str, Any]) -> bool:
    """A step reply with every field of the expected type (the common case, checked fast)."""
    return (
        type(reply.get("reward")) is float
        and type(reply.get("terminated")) is bool
        and type(reply.get("truncated")) is bool
        and type(reply.get("info")) is dict
        and "observation" in reply
    )


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _exchange(
    conn: FrameStream | SocketFrameStream, data: bytes, deadline: float
) -> dict[str, Any]:
    """Send a packed request and receive its reply by ``deadline`` (TimeoutError if not)."""
    with anyio.CancelScope(deadline=deadline) as scope:
        await conn.send_packed(data)
        return await conn.receive()
    assert scope.cancelled_caught
    raise TimeoutError


def _check_timeout(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds; got {value!r}")
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds > 0; got {value}")
    return float(value)


class RemoteEnv:
    """An :class:`~async_rollout.AsyncEnv` whose env runs on a server of the wire protocol.

    Each connection is a session with an env of its own on the server.
    ``await env.connect()`` (done by the first ``reset()`` if not before)
    shakes hands and fetches the spaces. A dropped connection, a timeout or
    an exception raised by the server's env becomes a :class:`RemoteEnvError`
    naming the server and the request; after a dropped connection or a
    timeout, the next ``reset()`` opens a new session. Calls on one
    ``RemoteEnv`` must not overlap (as with any env).

    Args:
        host: The server's host name or address.
        port: The server's TCP port.
        path: The server's Unix socket, instead of ``host``/``port``.
        token: The shared secret the server expects, if any.
        ssl_context: Connect over TLS with this client context (it decides
            which certificates to trust).
        connect_timeout: Seconds to connect and shake hands.
        request_timeout: Seconds each reset, step or render may take.
        max_frame_size: The largest frame accepted from the server, in bytes.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 60.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        if (port is None) == (path is None):
            raise ValueError("RemoteEnv needs either port= (TCP) or path= (Unix socket)")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            raise ValueError(f"port must be an int in 1..65535; got {port!r}")
        if path is not None and ssl_context is not None:
            raise ValueError("ssl_context applies to TCP; a Unix socket is protected by its mode")
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a string or None; got {type(token).__name__}")
        self.host = host
        self.port = port
        self.path = None if path is None else os.fspath(path)
        self.token = token
        self.ssl_context = ssl_context
        self.connect_timeout = _check_timeout("connect_timeout", connect_timeout)
        self.request_timeout = _check_timeout("request_timeout", request_timeout)
        self.max_frame_size = max_frame_size
        if self.path is not None:
            self.address = f"unix:{self.path}"
        else:
            self.address = f"{'tls' if ssl_context else 'tcp'}://{host}:{port}"
        self._state = RemoteEnvState.IDLE
        self._conn: _Frames | None = None
        self._spaces: tuple[gym.Space[Any], gym.Space[Any]] | None = None
        self._failure: str | None = None
        self._busy = False
        self._step_frames: dict[tuple[type, int], bytes] = {}
        #: What the server said about itself in the handshake (``"async-rollout/1.0"``).
        self.server_name: str | None = None

    # --- state and spaces ----------------------------------------------------------------------

    @property
    def state(self) -> RemoteEnvState:
        """The connection's lifecycle state."""
        return self._state

    def _known_spaces(self, name: str) -> tuple[gym.Space[Any], gym.Space[Any]]:
        if self._spaces is None:
            raise _SpacesUnknown(
                f"{self!r}: {name} is unknown until the handshake; "
                "`await env.connect()` (or `await env.reset()`) first",
                address=self.address,
            )
        return self._spaces

    @property
    def observation_space(self) -> gym.Space[Any]:
        """The server env's observation space (known once connected)."""
        return self._known_spaces("observation_space")[0]

    @property
    def action_space(self) -> gym.Space[Any]:
        """The server env's action space (known once connected)."""
        return self._known_spaces("action_space")[1]

    # --- errors: the one place where transport failures become RemoteEnvError -----------------

    def _context(self) -> str:
        """Extra words for error messages; subclasses say more about their server."""
        return ""

    @contextmanager
    def _failures(self, request: str, timeout: float) -> Iterator[None]:
        """Map socket, stream and protocol failures during ``request`` to RemoteEnvError."""
        try:
            yield
        except BaseException as exc:
            failure = self._failure_of(request, timeout, exc)
            if failure is exc:
                raise
            raise failure from exc

    def _failure_of(self, request: str, timeout: float, exc: BaseException) -> BaseException:
        """What to raise for ``exc``, raised during ``request``: ours, or ``exc`` itself.

        Any failure, cancellation included, leaves the stream out of step with
        the server (a reply may still be on its way), so the connection is
        marked broken: only a new session can be trusted.
        """
        if isinstance(exc, RemoteEnvError):
            return exc  # already ours, and the state already says what it means
        if not isinstance(exc, _TRANSPORT_ERRORS):
            self._mark_broken("interrupted mid-request")
            return exc
        self._mark_broken(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if isinstance(exc, TimeoutError):
            reason = f"no reply from {self.address} within {timeout}s"
        elif isinstance(exc, ProtocolError):
            reason = f"{self.address} broke the protocol: {exc}"
        elif request == "connect" and isinstance(exc, OSError):
            reason = f"cannot connect to {self.address}: {exc}"
        else:
            reason = f"the connection to {self.address} was lost ({self._failure})"
        return RemoteEnvError(
            f"{request}: {reason}{self._context()}", address=self.address, request=request
        )

    def _mark_broken(self, why: str) -> None:
        if self._state is not RemoteEnvState.CLOSED:
            self._state = RemoteEnvState.BROKEN
            self._failure = why

    def _server_error(self, request: str, reply: dict[str, Any]) -> NoReturn:
        kind = reply.get("error")
        message = reply.get("message")
        if reply.get("fatal", True):
            self._mark_broken(f"the server ended the session: {kind}: {message}")
            what = "refused the connection" if request == "connect" else "ended the session"
            text = f"{request}: {self.address} {what}: {kind}: {message}"
        else:
            text = f"{request}: the env on {self.address} raised {kind}: {message}"
        raise RemoteEnvError(text + self._context(), address=self.address, request=request)

    def _unusable(self, request: str) -> RemoteEnvError:
        if self._state is RemoteEnvState.CLOSED:
            text = f"{request}: {self!r} is closed"
        elif self._state is RemoteEnvState.BROKEN:
            text = (
                f"{request}: the connection to {self.address} failed earlier ({self._failure}); "
                "reset() opens a new session"
            )
        else:
            text = f"{request}: call reset() first (not connected to {self.address})"
        return RemoteEnvError(text, address=self.address, request=request)

    # --- connection ----------------------------------------------------------------------------

    async def _open_frames(self) -> _Frames:
        """Connect; a Unix socket skips anyio's stream layer, the bulk of a short round trip."""
        if self.path is None:
            return FrameStream(await self._open_stream(), self.max_frame_size)
        sock = await connect_unix(self.path)
        try:
            if _on_asyncio():
                return await AsyncioFrameStream.wrap(sock, self.max_frame_size)
            return SocketFrameStream(sock, self.max_frame_size)
        except BaseException:
            sock.close()
            raise

    async def _open_stream(self) -> ByteStream:
        assert self.port is not None
        if self.ssl_context is None:
            return await anyio.connect_tcp(self.host, self.port)
        return await anyio.connect_tcp(
            self.host, self.port, ssl_context=self.ssl_context, tls_standard_compatible=False
        )

    async def connect(self) -> None:
        """Open a session: connect, shake hands, and learn the spaces.

        Does nothing when already connected; after a failure, opens a new session.

        Raises:
            RemoteEnvError: The server cannot be reached in ``connect_timeout``,
                refused the client (wrong token, protocol version, too many
                connections), or could not make its env.
        """
        if self._state is RemoteEnvState.CONNECTED:
            return
        if self._state is RemoteEnvState.CLOSED:
            raise self._unusable("connect")
        await self._drop_connection()
        conn: _Frames | None = None
        try:
            with (
                self._failures("connect", self.connect_timeout),
                anyio.fail_after(self.connect_timeout),
            ):
                conn = await self._open_frames()
                await conn.send(
                    {
                        "type": "hello",
                        "version": PROTOCOL_VERSION,
                        "token": self.token,
                        "max_frame_size": self.max_frame_size,
                    }
                )
                reply = await conn.receive()
                if reply["type"] == "error":
                    self._server_error("connect", reply)
                if reply["type"] != "welcome":
                    raise ProtocolError(f"expected 'welcome'; got {reply['type']!r}")
                version = field(reply, "version", int)
                if version != PROTOCOL_VERSION:
                    raise ProtocolError(f"the server answered with protocol version {version}")
                observation_space = restore_space(field(reply, "observation_space", dict))
                action_space = restore_space(field(reply, "action_space", dict))
                peer_max = reply.get("max_frame_size", DEFAULT_MAX_FRAME_SIZE)
                if isinstance(peer_max, int) and not isinstance(peer_max, bool):
                    conn.peer_max_frame_size = peer_max
        except BaseException:
            if conn is not None:
                await anyio.aclose_forcefully(conn)
            raise
        server = reply.get("server")
        self.server_name = server if isinstance(server, str) else None
        self._spaces = (observation_space, action_space)
        self._step_frames.clear()  # framed for the previous server's limit
        self._conn = conn
        self._state = RemoteEnvState.CONNECTED
        self._failure = None

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.aclose_forcefully(conn)

    def _pack(self, conn: _Frames, message: dict[str, Any]) -> bytes:
        """Frame ``message``; a step with an integer action (a Discrete space) comes from a cache.

        Equal integers of one type encode to the same bytes, and a Discrete space
        has few actions: the cache spares the encoder on most steps.
        """
        if message["type"] != "step" or type(message["action"]) not in _INTEGER_TYPES:
            return conn.pack(message)
        key = (type(message["action"]), message["action"])
        data = self._step_frames.get(key)
        if data is None:
            data = conn.pack(message)
            if len(self._step_frames) < _STEP_FRAMES_MAX:
                self._step_frames[key] = data
        return data

    async def _request(self, request: str, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request; return its reply, checked to have the fields its type needs."""
        if self._state is not RemoteEnvState.CONNECTED:
            raise self._unusable(request)
        if self._busy:
            raise RemoteEnvError(
                f"{request}: another call on {self.address} is in progress; "
                "calls on one RemoteEnv must not overlap",
                address=self.address,
                request=request,
            )
        conn = self._conn
        assert conn is not None
        try:
            data = self._pack(conn, message)
        except EncodeError as exc:
            # Nothing was sent: the session is intact.
            raise RemoteEnvError(
                f"{request}: {exc}", address=self.address, request=request
            ) from exc
        self._busy = True
        # The hot path of every step: a plain try, not context managers stacked on generators
        # (``_failures``, ``fail_after``), and on asyncio a deadline without a cancel scope.
        try:
            if isinstance(conn, AsyncioFrameStream):
                reply = await conn.exchange(data, self.request_timeout)
            else:
                reply = await _exchange(conn, data, anyio.current_time() + self.request_timeout)
            kind = reply["type"]
            if kind == request:
                if not (kind == "step" and _plain_step_reply(reply)):
                    for name, kinds in _REPLY_FIELDS[request]:
                        field(reply, name, kinds)
            elif kind != "error":
                raise ProtocolError(f"expected a {request!r} reply; got {kind!r}")
        except BaseException as exc:
            failure = self._failure_of(request, self.request_timeout, exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            self._busy = False
        if kind == "error":
            self._server_error(request, reply)
        return reply

    # --- the env -------------------------------------------------------------------------------

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode on the server; connects (again) first when needed."""
        if self._state is not RemoteEnvState.CONNECTED:
            await self.connect()
        reply = await self._request("reset", {"type": "reset", "seed": seed, "options": options})
        return conform(reply["observation"], self.observation_space), reply["info"]

    async def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Take one step on the server."""
        reply = await self._request("step", {"type": "step", "action": action})
        known = self._spaces  # a reply came: the handshake told them
        assert known is not None
        return (
            conform(reply["observation"], known[0]),
            float(reply["reward"]),
            reply["terminated"],
            reply["truncated"],
            reply["info"],
        )

    async def render(self) -> Any:
        """Render on the server and return its frame (an array, a string, or None)."""
        reply = await self._request("render", {"type": "render"})
        return reply.get("frame")

    async def close(self) -> None:
        """End the session; the server closes its env. Idempotent; a lost server is no error."""
        if self._state is RemoteEnvState.CLOSED:
            return
        graceful = self._state is RemoteEnvState.CONNECTED and not self._busy
        self._state = RemoteEnvState.CLOSED
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if graceful:
                with anyio.move_on_after(min(CLOSE_TIMEOUT_S, self.request_timeout), shield=True):
                    try:
                        await conn.send({"type": "close"})
                        reply = await conn.receive()
                    except Exception as exc:
                        logger.debug("closing the session on %s: %r", self.address, exc)
                    else:
                        if reply["type"] == "error":
                            logger.warning(
                                "the env on %s failed to close: %s: %s",
                                self.address,
                                reply.get("error"),
                                reply.get("message"),
                            )
        finally:
            await anyio.aclose_forcefully(conn)

    async def __aenter__(self) -> RemoteEnv:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"RemoteEnv({self.address}, {self._state.value})"
