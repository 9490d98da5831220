"""The env server: one env per connection, many connections per process."""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from functools import partial
from typing import Any, cast

import anyio
from anyio.abc import (
    ByteStream,
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)
from anyio.streams.tls import TLSStream

from .._env import AsyncEnv, EnvFactory, env_factory
from .._loop import close_env
from .._version import __version__
from ._sockets import BlockingFrames
from ._spaces import conform, describe_space
from ._watchdog import ClientGone, Watchdog
from ._wire import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    EncodeError,
    FrameStream,
    ProtocolError,
    field,
)

__all__ = ["serve_env", "serve_from_config"]

logger = logging.getLogger("async_rollout")

#: Seconds a new connection has to finish its TLS handshake and send its hello.
HANDSHAKE_TIMEOUT_S = 10.0
#: The hello comes before the token check: keep what an unknown peer can make us buffer small.
HELLO_MAX_FRAME = 64 * 1024

Address = tuple[str, int] | str
_TRANSPORT_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
)


class _Refused(Exception):
    """Ends a session with a fatal error frame: ``kind`` and ``message`` go to the client."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _error(kind: str, message: str, *, fatal: bool) -> dict[str, Any]:
    return {"type": "error", "error": kind, "message": message, "fatal": fatal}


def _peer(stream: ByteStream) -> str:
    try:
        remote = stream.extra(SocketAttribute.remote_address)
    except Exception:  # not a socket, or already closed
        return "?"
    if isinstance(remote, tuple):
        return f"{remote[0]}:{remote[1]}"
    return f"unix:{remote}" if remote else "unix socket"


class _Server:
    """The state shared by every session of one :func:`serve_env` call."""

    def __init__(
        self,
        make: EnvFactory,
        *,
        token: str | None,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        max_frame_size: int,
    ) -> None:
        self.make = make
        self.token = None if token is None else token.encode("utf-8")
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.max_frame_size = max_frame_size
        self.sessions = 0

    async def accept_loop(self, listener: SocketListener, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except OSError as exc:
                # Out of file descriptors, or a connection aborted while queued: keep serving.
                logger.warning("accepting a connection failed: %s; retrying", exc)
                await anyio.sleep(0.1)
                continue
            tg.start_soon(self.session, stream)

    async def session(self, raw: SocketStream) -> None:
        peer = _peer(raw)
        self.sessions += 1
        stream: ByteStream = raw
        try:
            if self.ssl_context is not None:
                try:
                    with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                        stream = await TLSStream.wrap(
                            raw,
                            server_side=True,
                            ssl_context=self.ssl_context,
                            standard_compatible=False,
                        )
                except Exception as exc:
                    logger.warning("TLS handshake with %s failed: %r", peer, exc)
                    return
            await self._converse(FrameStream(stream, self.max_frame_size), peer)
        except Exception:
            # Whatever went wrong belongs to this session alone: never to the server.
            logger.exception("the session with %s failed", peer)
        finally:
            self.sessions -= 1
            await anyio.aclose_forcefully(stream)

    async def _converse(self, conn: FrameStream, peer: str) -> None:
        """Run one session: handshake, then requests until the client leaves."""
        env: AsyncEnv | None = None
        try:
            env = await self._handshake(conn, peer)
            await self._serve_requests(conn, env)
        except _Refused as refusal:
            await self._send_quietly(conn, _error(refusal.kind, refusal.message, fatal=True))
        except ProtocolError as exc:
            logger.warning("closing the connection from %s: %s", peer, exc)
            await self._send_quietly(conn, _error("ProtocolError", str(exc), fatal=True))
        except (anyio.EndOfStream, ClientGone):
            logger.debug("the client at %s closed its connection", peer)
        except _TRANSPORT_ERRORS as exc:
            logger.info("the connection from %s broke: %r", peer, exc)
        finally:
            if env is not None:
                await close_env(env)

    async def _handshake(self, conn: FrameStream, peer: str) -> AsyncEnv:
        hello: dict[str, Any] | None = None
        with anyio.move_on_after(HANDSHAKE_TIMEOUT_S):
            hello = await conn.receive(max_size=HELLO_MAX_FRAME)
        if hello is None:
            logger.warning(
                "closing the connection from %s: no hello within %ss", peer, HANDSHAKE_TIMEOUT_S
            )
            raise _Refused("ProtocolError", f"no hello within {HANDSHAKE_TIMEOUT_S}s")
        version, conn.peer_max_frame_size = check_hello(hello)
        token = hello.get("token")
        if self.sessions > self.max_connections:
            logger.warning(
                "refused a client from %s: %d connections already", peer, self.max_connections
            )
            raise _Refused(
                "TooManyConnections", f"the server is at its limit of {self.max_connections}"
            )
        if version != PROTOCOL_VERSION:
            logger.warning("refused a client from %s: protocol version %s", peer, version)
            raise version_refusal(version)
        if self.token is not None and not (
            isinstance(token, str) and hmac.compare_digest(token.encode("utf-8"), self.token)
        ):
            logger.warning(
                "refused a client from %s: %s", peer, "no token" if token is None else "wrong token"
            )
            raise _Refused("AuthenticationError", "missing or wrong token")
        try:
            env = self.make()
        except Exception as exc:
            logger.warning("making an env for %s failed", peer, exc_info=True)
            raise _Refused(type(exc).__name__, f"making the env failed: {exc}") from exc
        try:
            await conn.send_packed(pack_welcome(conn, env, self.max_frame_size))
        except BaseException:
            await close_env(env)
            raise
        logger.debug("session with %s started", peer)
        return env

    async def _serve_requests(self, conn: FrameStream, env: AsyncEnv) -> None:
        """Answer requests in order until the client closes the session or leaves."""
        watchdog = Watchdog(conn)
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(watchdog.run)
            try:
                while await self._answer(conn, env, await conn.receive(), watchdog):
                    pass
            except Exception as exc:
                failure = exc  # raised below, unwrapped by the task group
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _answer(
        self, conn: FrameStream, env: AsyncEnv, request: dict[str, Any], watchdog: Watchdog
    ) -> bool:
        """Answer one request; False once the session is over."""
        kind = request["type"]
        call: Callable[[], Awaitable[dict[str, Any]]]
        if kind == "step":
            call = partial(_step, env, step_action(request, env.action_space))
        elif kind == "reset":
            call = partial(_reset, env, *reset_arguments(request))
        elif kind == "render":
            call = partial(_render, env)
        elif kind == "close":
            try:
                await env.close()
                reply = {"type": "closed"}
            except Exception as exc:
                reply = _error(type(exc).__name__, f"closing the env failed: {exc}", fatal=True)
            await conn.send(reply)
            return False
        else:
            await conn.send(
                _error("UnsupportedRequest", f"unknown request type {kind!r}", fatal=False)
            )
            return True
        try:
            reply = await watchdog.call(call)
        except ClientGone:
            raise
        except Exception as exc:
            reply = env_failure(kind, exc)
        await conn.send_packed(pack_reply(conn, reply))
        return True

    @staticmethod
    async def _send_quietly(conn: FrameStream, message: Mapping[str, Any]) -> None:
        """Best effort: the peer may already be gone, and the session ends either way."""
        with anyio.move_on_after(1.0), suppress(*_TRANSPORT_ERRORS, EncodeError):
            await conn.send(message)


def check_hello(hello: Mapping[str, Any]) -> tuple[int, int]:
    """Check a hello's shape; return the client's protocol version and maximum frame size.

    Raises:
        ProtocolError: Not a hello, or a field is missing or wrong.
    """
    if hello["type"] != "hello":
        raise ProtocolError(f"expected a 'hello' message first; got {hello['type']!r}")
    version = field(hello, "version", int)
    peer_max = hello.get("max_frame_size", DEFAULT_MAX_FRAME_SIZE)
    if not isinstance(peer_max, int) or isinstance(peer_max, bool) or peer_max < 1024:
        raise ProtocolError(f"bad max_frame_size {peer_max!r} in the hello")
    return version, peer_max


def version_refusal(version: int) -> _Refused:
    """The refusal of a client that speaks another protocol version."""
    return _Refused(
        "VersionError",
        f"this server speaks protocol version {PROTOCOL_VERSION}; the client asked for {version}",
    )


def pack_welcome(conn: FrameStream | BlockingFrames, env: Any, max_frame_size: int) -> bytes:
    """The framed welcome for ``env`` (any env with spaces), made with ``conn.pack``.

    Raises:
        _Refused: The env's spaces cannot be described, or the welcome encoded.
    """
    try:
        return conn.pack(
            {
                "type": "welcome",
                "version": PROTOCOL_VERSION,
                "server": f"async-rollout/{__version__}",
                "max_frame_size": max_frame_size,
                "observation_space": describe_space(env.observation_space),
                "action_space": describe_space(env.action_space),
            }
        )
    except TypeError as exc:
        raise _Refused("UnsupportedSpace", str(exc)) from exc
    except EncodeError as exc:
        raise _Refused("EncodeError", str(exc)) from exc


def step_action(request: dict[str, Any], action_space: Any) -> Any:
    """The action of a ``step`` request, conformed to ``action_space``."""
    if "action" not in request:
        raise ProtocolError("the 'step' message lacks its 'action' field")
    return conform(request["action"], action_space)


def reset_arguments(request: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
    """The ``(seed, options)`` of a ``reset`` request, checked."""
    seed = field(request, "seed", (int, type(None))) if "seed" in request else None
    options = request.get("options")
    if options is not None and not isinstance(options, dict):
        raise ProtocolError("field 'options' of 'reset' must be a map or nil")
    return seed, options


def reset_reply(result: Any) -> dict[str, Any]:
    """The reply to a reset, from what the env's ``reset`` returned."""
    observation, info = result
    return {"type": "reset", "observation": observation, "info": info}


def render_of(env: Any) -> Any:
    """The env's ``render()`` result (maybe awaitable); AttributeError without one."""
    render = getattr(env, "render", None)
    if render is None:
        raise AttributeError(f"{type(env).__name__} has no render()")
    return render()


def env_failure(kind: str, exc: Exception) -> dict[str, Any]:
    """The reply to a request the env raised on: a non-fatal error; the session goes on."""
    logger.info("the env raised on %r: %s: %s", kind, type(exc).__name__, exc)
    return _error(type(exc).__name__, str(exc), fatal=False)


def pack_reply(conn: FrameStream | BlockingFrames, reply: Mapping[str, Any]) -> bytes:
    """``reply`` framed; a reply that cannot be encoded becomes a non-fatal EncodeError."""
    try:
        return conn.pack(reply)
    except EncodeError as exc:
        return conn.pack(_error("EncodeError", str(exc), fatal=False))


def step_reply(result: Any) -> dict[str, Any]:
    """The reply to a step, from what the env's ``step`` returned."""
    observation, reward, terminated, truncated, info = result
    return {
        "type": "step",
        "observation": observation,
        "reward": float(reward),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "info": info,
    }


async def _reset(env: AsyncEnv, seed: int | None, options: dict[str, Any] | None) -> dict[str, Any]:
    return reset_reply(await env.reset(seed=seed, options=options))


async def _step(env: AsyncEnv, action: Any) -> dict[str, Any]:
    return step_reply(await env.step(action))


async def _render(env: AsyncEnv) -> dict[str, Any]:
    frame = render_of(env)
    if inspect.isawaitable(frame):
        frame = await frame
    return {"type": "render", "frame": frame}


async def _listen(host: str, port: int, path: str | None) -> tuple[list[SocketListener], Address]:
    if path is not None:
        listener = await anyio.create_unix_listener(path)
        return [listener], path
    multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = multi.listeners[0].extra(SocketAttribute.local_address)
    assert isinstance(bound, tuple)
    return [cast(SocketListener, sub) for sub in multi.listeners], (str(bound[0]), int(bound[1]))


def _describe_address(address: Address, tls: bool) -> str:
    if isinstance(address, str):
        return f"unix:{address}"
    return f"{'tls' if tls else 'tcp'}://{address[0]}:{address[1]}"


async def serve_env(
    factory: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    path: str | os.PathLike[str] | None = None,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = 1024,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    task_status: TaskStatus[Address] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an environment over the network until cancelled.

    Each connection is a session with an env of its own, made at the
    handshake and closed when the connection ends, whatever the reason. An
    exception from the env is sent back to the client (its type and message)
    and the session goes on; a malformed or oversized frame closes that
    connection only. ``await tg.start(serve_env, ...)`` returns the bound
    address.

    Args:
        factory: An env spec (anything :func:`async_rollout.env_factory`
            accepts: a callable, a gymnasium id, a ``_target_`` config).
        host: The interface to listen on; loopback by default.
        port: The TCP port; 0 picks a free one.
        path: Listen on this Unix socket instead of TCP.
        token: When set, clients must send this shared secret in their hello.
        ssl_context: Wrap every connection in TLS with this server context.
        max_connections: Sessions served at once; more are refused.
        max_frame_size: The largest frame accepted from a client, in bytes.
        task_status: Reports ``(host, port)``, or the socket path.

    Raises:
        OSError: The address cannot be bound.
        ValueError: Contradictory or invalid arguments.
    """
    if path is not None and ssl_context is not None:
        raise ValueError("ssl_context applies to TCP; a Unix socket is protected by its mode")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise TypeError(f"max_connections must be an int; got {max_connections!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1; got {max_connections}")
    if max_frame_size < HELLO_MAX_FRAME:
        raise ValueError(f"max_frame_size must be >= {HELLO_MAX_FRAME}; got {max_frame_size}")
    if token is not None and not isinstance(token, str):
        raise TypeError(f"token must be a string or None; got {type(token).__name__}")
    make = env_factory(factory)
    server = _Server(
        make,
        token=token,
        ssl_context=ssl_context,
        max_connections=max_connections,
        max_frame_size=max_frame_size,
    )
    socket_path = None if path is None else os.fspath(path)
    listeners, address = await _listen(host, port, socket_path)
    try:
        async with anyio.create_task_group() as tg:
            for listener in listeners:
                tg.start_soon(server.accept_loop, listener, tg)
            logger.info(
                "serving %s on %s",
                make.description,
                _describe_address(address, ssl_context is not None),
            )
            task_status.started(address)
    finally:
        with anyio.CancelScope(shield=True):
            for listener in listeners:
                await anyio.aclose_forcefully(listener)
        if socket_path is not None:
            with suppress(OSError):
                os.unlink(socket_path)


async def serve_from_config(
    env_cfg: Any,
    host: str = "127.0.0.1",
    port: int = 7000,
    path: str | None = None,
    token: str | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: TaskStatus[Address] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the env an env config describes; what ``async-rollout serve`` runs.

    Args:
        env_cfg: An env config (a ``_target_`` mapping or DictConfig), or any
            other env spec.
        host: The interface to listen on; loopback unless told otherwise.
        port: The TCP port.
        path: Listen on this Unix socket instead of TCP.
        token: The shared secret clients must send; None requires none.
        ssl_context: Serve over TLS.
        task_status: Reports the bound address (see :func:`serve_env`).
    """
    if path is None and token is None and not _is_loopback(host):
        logger.warning(
            "serving on %s without a token: anyone who can reach this port can run the env",
            host,
        )
    await serve_env(
        env_cfg,
        host,
        port,
        path=path,
        token=token,
        ssl_context=ssl_context,
        task_status=task_status,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
