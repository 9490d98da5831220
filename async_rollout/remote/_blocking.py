"""The event-loop-free server that process offload runs for a synchronous env.

A gymnasium env's calls block anyway, and a child serves one client: an
event loop buys nothing there and costs most of a small step (a task switch,
a cancel scope and a watchdog per request, and a reader registered and
removed for every wait). This server speaks the same protocol as
:func:`~async_rollout.remote.serve_env` (``docs/PROTOCOL.md``) with plain
blocking calls: receive a frame, call the env, send a frame. It serves one
session at a time (a reconnecting client waits in the listen backlog until
the previous session ends) and stops when its stop descriptor (the child's
stdin) reaches its end of file.

What it does not do, because a synchronous env cannot have it: interrupt a
call whose client has left (``serve_env``'s watchdog cancels only awaiting
calls; a blocking one runs to its end there too).
"""

from __future__ import annotations

import logging
import os
import select
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import anyio

from ._server import (
    HANDSHAKE_TIMEOUT_S,
    HELLO_MAX_FRAME,
    _error,
    _Refused,
    check_hello,
    env_failure,
    pack_reply,
    pack_welcome,
    render_of,
    reset_arguments,
    reset_reply,
    step_action,
    step_reply,
    version_refusal,
)
from ._sockets import BlockingFrames, Stopped
from ._wire import DEFAULT_MAX_FRAME_SIZE, PROTOCOL_VERSION, EncodeError, ProtocolError

__all__ = ["serve_blocking"]

logger = logging.getLogger("async_rollout")

_GONE = (anyio.EndOfStream, anyio.IncompleteRead)


def serve_blocking(
    make: Callable[[], Any],
    listener: socket.socket,
    stop_fd: int,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> None:
    """Serve sessions on ``listener``, one after another, until ``stop_fd`` reaches its end.

    Args:
        make: Returns a fresh synchronous env (``reset``/``step``/``close``) per session.
        listener: A listening stream socket.
        stop_fd: A descriptor whose end of file ends the server (between calls).
        max_frame_size: The largest frame accepted from a client, in bytes.
    """
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(stop_fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == stop_fd:
                if not os.read(stop_fd, 4096):
                    return
                continue
            try:
                conn, _ = listener.accept()
            except OSError as exc:  # aborted while queued, or out of descriptors
                logger.warning("accepting a connection failed: %s", exc)
                continue
            try:
                _Session(BlockingFrames(conn, stop_fd, max_frame_size), make).run()
            except Stopped:
                return


class _Session:
    """One connection: handshake, then requests until the client leaves or closes."""

    def __init__(self, frames: BlockingFrames, make: Callable[[], Any]) -> None:
        self.frames = frames
        self.make = make
        self.env: Any = None
        self.max_frame_size = frames.max_frame_size

    def run(self) -> None:
        """Serve the session; raises :class:`Stopped` when the server must end."""
        frames = self.frames
        try:
            self._handshake()
            while self._answer(frames.receive()):
                pass
        except _Refused as refusal:
            self._send_quietly(_error(refusal.kind, refusal.message, fatal=True))
        except ProtocolError as exc:
            logger.warning("closing the connection: %s", exc)
            self._send_quietly(_error("ProtocolError", str(exc), fatal=True))
        except _GONE:
            logger.debug("the client closed its connection")
        except OSError as exc:
            logger.info("the connection broke: %r", exc)
        except Stopped:
            raise
        except Exception:
            # Whatever went wrong belongs to this session alone: never to the server.
            logger.exception("the session failed")
        finally:
            try:
                self._close_env()
            finally:
                frames.close()

    def _handshake(self) -> None:
        try:
            hello = self.frames.receive(max_size=HELLO_MAX_FRAME, timeout=HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("closing a connection: no hello within %ss", HANDSHAKE_TIMEOUT_S)
            raise _Refused("ProtocolError", f"no hello within {HANDSHAKE_TIMEOUT_S}s") from None
        version, self.frames.peer_max_frame_size = check_hello(hello)
        if version != PROTOCOL_VERSION:
            logger.warning("refused a client: protocol version %s", version)
            raise version_refusal(version)
        try:
            self.env = self.make()
        except Exception as exc:
            logger.warning("making an env failed", exc_info=True)
            raise _Refused(type(exc).__name__, f"making the env failed: {exc}") from exc
        self.frames.send_packed(pack_welcome(self.frames, self.env, self.max_frame_size))

    def _answer(self, request: dict[str, Any]) -> bool:
        """Answer one request; False once the session is over."""
        env, frames = self.env, self.frames
        kind = request["type"]
        call: Callable[[], dict[str, Any]]
        if kind == "step":
            action = step_action(request, env.action_space)
            call = lambda: step_reply(env.step(action))  # noqa: E731
        elif kind == "reset":
            seed, options = reset_arguments(request)
            call = lambda: reset_reply(env.reset(seed=seed, options=options))  # noqa: E731
        elif kind == "render":
            call = lambda: {"type": "render", "frame": render_of(env)}  # noqa: E731
        elif kind == "close":
            self.env = None
            try:
                env.close()
                reply = {"type": "closed"}
            except Exception as exc:
                reply = _error(type(exc).__name__, f"closing the env failed: {exc}", fatal=True)
            frames.send(reply)
            return False
        else:
            frames.send(_error("UnsupportedRequest", f"unknown request type {kind!r}", fatal=False))
            return True
        try:
            reply = call()
        except Exception as exc:
            reply = env_failure(kind, exc)
        frames.send_packed(pack_reply(frames, reply))
        return True

    def _close_env(self) -> None:
        env, self.env = self.env, None
        if env is not None:
            try:
                env.close()
            except Exception:
                logger.warning("closing %r failed", env, exc_info=True)

    def _send_quietly(self, message: dict[str, Any]) -> None:
        """Best effort: the peer may already be gone, and the session ends either way."""
        with suppress(OSError, EncodeError):
            self.frames.sock.settimeout(1.0)
            self.frames.send(message)
