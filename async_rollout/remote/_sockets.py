"""Frames straight over a socket, without a stream layer in between.

Two ends of the same framing as :class:`~._wire.FrameStream`:
:class:`SocketFrameStream` (async, for the client on a Unix socket, on
backends other than asyncio, which has :mod:`._asyncio_frames`) and
:class:`BlockingFrames` (blocking, for the child's event-loop-free server).
On a round trip of a few microseconds of work, anyio's stream layer is most
of the cost: a checkpoint before every send and receive, and a reader
registered and removed for every wait. Here a send is one ``send`` call and a
receive one wait for readability.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import AsyncResource

from ._wire import DEFAULT_MAX_FRAME_SIZE, FramePacker, decode, take_frame

__all__ = ["BlockingFrames", "SocketFrameStream", "Stopped", "connect_unix"]

_CHUNK = 65536
_HEADER_SIZE = 4


def _receive_into(sock: socket.socket, buffer: bytearray) -> None:
    """One ``recv`` into ``buffer`` (the rest of a large frame at once); BlockingIOError if none."""
    wanted = _CHUNK
    if len(buffer) >= _HEADER_SIZE:
        wanted = max(
            wanted, _HEADER_SIZE + int.from_bytes(buffer[:_HEADER_SIZE], "big") - len(buffer)
        )
    data = sock.recv(wanted)
    if not data:
        if buffer:
            raise anyio.IncompleteRead
        raise anyio.EndOfStream
    buffer += data


async def connect_unix(path: str) -> socket.socket:
    """Connect a non-blocking stream socket to ``path`` (waits while the backlog is full)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        while True:
            try:
                sock.connect(path)
            except BlockingIOError:
                await anyio.wait_writable(sock)
            else:
                return sock
    except BaseException:
        sock.close()
        raise


class SocketFrameStream(FramePacker, AsyncResource):
    """The :class:`~._wire.FrameStream` interface over a connected non-blocking socket.

    Args:
        sock: The connected socket; this stream owns it from now on.
        max_frame_size: The largest frame accepted from the peer.
        peer_max_frame_size: The largest frame the peer accepts.
    """

    def __init__(
        self,
        sock: socket.socket,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        peer_max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.max_frame_size = max_frame_size
        self.peer_max_frame_size = peer_max_frame_size
        self._buffer = bytearray()

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message."""
        await self.send_packed(self.pack(message))

    async def send_packed(self, data: bytes) -> None:
        """Send a frame made by :meth:`pack`: one ``send`` when the socket has room (usually)."""
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(sock)
            else:
                view = view[sent:]

    async def receive(self, max_size: int | None = None) -> dict[str, Any]:
        """Receive one message.

        Raises:
            anyio.EndOfStream: The peer closed the connection between frames.
            anyio.IncompleteRead: The peer closed the connection inside a frame.
            ProtocolError: The frame is empty, too large, or malformed.
        """
        limit = self.max_frame_size if max_size is None else max_size
        buffer, sock = self._buffer, self.sock
        while True:
            payload = take_frame(buffer, limit)
            if payload is not None:
                return decode(payload)
            try:
                _receive_into(sock, buffer)
            except BlockingIOError:
                await anyio.wait_readable(sock)

    async def aclose(self) -> None:
        """Close the socket (a task waiting on it gets ClosedResourceError)."""
        if self.sock.fileno() >= 0:
            anyio.notify_closing(self.sock)
            self.sock.close()


class Stopped(Exception):
    """The stop descriptor reached its end of file: the server must end."""


class BlockingFrames(FramePacker):
    """Frames over a blocking socket, for a server without an event loop.

    ``receive`` also watches ``stop_fd`` (the child's stdin): at its end of
    file (the parent is done, or dead) ``receive`` raises :class:`Stopped`.

    Args:
        sock: The connected socket.
        stop_fd: A file descriptor whose readability means "stop".
        max_frame_size: The largest frame accepted from the peer.
    """

    def __init__(
        self, sock: socket.socket, stop_fd: int, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.max_frame_size = max_frame_size
        self.peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self._buffer = bytearray()
        self._stop_fd = stop_fd
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._poll.register(stop_fd, select.POLLIN)

    def send_packed(self, data: bytes) -> None:
        """Send a frame made by :meth:`pack`."""
        self.sock.sendall(data)

    def send(self, message: Mapping[str, Any]) -> None:
        """Send one message."""
        self.sock.sendall(self.pack(message))

    def receive(self, max_size: int | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Receive one message, blocking.

        Args:
            max_size: A tighter limit than ``max_frame_size`` for this frame.
            timeout: Seconds to wait for the whole frame; None waits forever.

        Raises:
            Stopped: ``stop_fd`` reached its end of file.
            TimeoutError: No whole frame within ``timeout``.
            anyio.EndOfStream: The peer closed the connection between frames.
            anyio.IncompleteRead: The peer closed the connection inside a frame.
            ProtocolError: The frame is empty, too large, or malformed.
        """
        limit = self.max_frame_size if max_size is None else max_size
        buffer = self._buffer
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            payload = take_frame(buffer, limit)
            if payload is not None:
                return decode(payload)
            wait_ms = (
                None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            )
            ready = self._poll.poll(wait_ms)
            if not ready:
                raise TimeoutError(f"no whole frame within {timeout}s")
            for fd, _ in ready:
                if fd == self._stop_fd and not os.read(fd, 4096):
                    raise Stopped
                if fd != self._stop_fd:
                    _receive_into(self.sock, buffer)

    def close(self) -> None:
        """Close the socket."""
        self._poll.unregister(self.sock)
        self.sock.close()
