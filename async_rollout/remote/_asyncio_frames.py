"""Frames over an asyncio transport: the client's fast path on asyncio.

On asyncio, waiting for a socket with anyio registers a reader with the
selector and removes it again (two ``epoll_ctl`` calls and a dozen Python
frames), and a deadline is a cancel scope with a timer of its own: for a
round trip that is otherwise a ``send``, a ``recv`` and two msgpack calls,
that is most of the parent's cost per step. Here the connection is an
asyncio transport (its reader stays registered; bytes arrive in
``data_received``), and :meth:`AsyncioFrameStream.exchange` waits on one
future, its deadline watched by one timer for the whole connection.

Everything else behaves as :class:`~._sockets.SocketFrameStream`: the same
frames, the same limits, the same exceptions (anyio's, and
:class:`~._wire.ProtocolError`). Cancellation reaches the awaited future
as it reaches any asyncio await.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Mapping
from typing import Any, cast

import anyio
from anyio.abc import AsyncResource

from ._wire import DEFAULT_MAX_FRAME_SIZE, FramePacker, decode, take_frame

__all__ = ["AsyncioFrameStream"]

_HEADER_SIZE = 4


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _FrameProtocol(asyncio.Protocol):
    """Buffers a connection's bytes; wakes the waiting receive once a frame is whole."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.whole: bytes | None = None  # one whole frame, received before anything in buffer
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.ended = False  # no more bytes will come
        self.lost: Exception | None = None  # why, when the connection failed
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport; not an isinstance check: uvloop's
        # transports have the methods without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        if not buffer and self.whole is None and self.waiter is not None:
            # The usual case: a reply arrives whole, in one read. Keep it as it is.
            size = int.from_bytes(data[:_HEADER_SIZE], "big")
            if len(data) == _HEADER_SIZE + size and 0 < size <= self.limit:
                self.whole = data
                self._wake()
                return
        buffer += data
        if len(buffer) < _HEADER_SIZE:
            return
        if self.waiter is None:
            if len(buffer) > _HEADER_SIZE + self.limit and self.transport is not None:
                # More than any frame holds, and nobody reading: stop until someone does.
                self.transport.pause_reading()
                self.paused = True
            return
        size = int.from_bytes(buffer[:_HEADER_SIZE], "big")
        if len(buffer) >= _HEADER_SIZE + size or not 0 < size <= self.limit:
            self._wake()  # a whole frame, or a bad prefix for the reader to report

    def eof_received(self) -> bool:
        self._end(None)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        if not self.ended:
            self.ended, self.lost = True, exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class AsyncioFrameStream(FramePacker, AsyncResource):
    """The frame stream interface over an asyncio transport (asyncio only).

    Make one with :meth:`wrap`.

    Args:
        transport: The connection's transport.
        protocol: Its protocol, made by :meth:`wrap`.
        max_frame_size: The largest frame accepted from the peer.
    """

    def __init__(
        self, transport: asyncio.Transport, protocol: _FrameProtocol, max_frame_size: int
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self.max_frame_size = max_frame_size
        self.peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        # One timer serves every request: it is re-armed when it fires before the current
        # request's deadline (deadlines only grow), instead of a timer made and cancelled
        # per request.
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def wrap(
        cls, sock: socket.socket, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> AsyncioFrameStream:
        """Hand a connected stream socket to the running asyncio loop."""
        loop = asyncio.get_running_loop()
        protocol = _FrameProtocol(max_frame_size)
        if sock.family == socket.AF_UNIX:
            transport, _ = await loop.create_unix_connection(lambda: protocol, sock=sock)
        else:
            transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        return cls(transport, protocol, max_frame_size)

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message."""
        await self.send_packed(self.pack(message))

    async def send_packed(self, data: bytes) -> None:
        """Send a frame made by :meth:`pack` (the transport buffers what the socket cannot take)."""
        self._write(data)

    def _write(self, data: bytes) -> None:
        protocol = self._protocol
        if self._transport.is_closing():
            raise anyio.ClosedResourceError
        if protocol.ended:
            raise anyio.BrokenResourceError from protocol.lost
        self._transport.write(data)

    async def receive(self, max_size: int | None = None) -> dict[str, Any]:
        """Receive one message.

        Raises:
            anyio.EndOfStream: The peer closed the connection between frames.
            anyio.IncompleteRead: The peer closed the connection inside a frame.
            anyio.BrokenResourceError: The connection failed.
            ProtocolError: The frame is empty, too large, or malformed.
        """
        return await self._receive(max_size, None)

    async def exchange(self, data: bytes, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109  (a deadline without a cancel scope is this path's point)
        """Send a frame made by :meth:`pack`, then receive the reply within ``timeout`` seconds.

        Raises:
            TimeoutError: No whole reply in time.
        """
        self._write(data)
        loop = asyncio.get_running_loop()
        return await self._receive(None, loop.time() + timeout)

    async def _receive(self, max_size: int | None, deadline: float | None) -> dict[str, Any]:
        limit = self.max_frame_size if max_size is None else max_size
        protocol = self._protocol
        buffer = protocol.buffer
        while True:
            whole = protocol.whole
            if whole is not None:
                protocol.whole = None
                if len(whole) - _HEADER_SIZE <= limit:
                    return decode(whole[_HEADER_SIZE:])
                buffer[:0] = whole  # over this receive's tighter limit: take_frame says so
            payload = take_frame(buffer, limit)
            if payload is not None:
                if protocol.paused and len(buffer) <= _HEADER_SIZE + protocol.limit:
                    protocol.paused = False
                    self._transport.resume_reading()
                return decode(payload)
            if protocol.ended:
                if protocol.lost is not None:
                    raise anyio.BrokenResourceError from protocol.lost
                if buffer:
                    raise anyio.IncompleteRead
                raise anyio.EndOfStream
            await self._wait(deadline)

    async def _wait(self, deadline: float | None) -> None:
        protocol = self._protocol
        if protocol.paused:
            protocol.paused = False
            self._transport.resume_reading()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._deadline = math.inf if deadline is None else deadline
        timer = self._timer
        if deadline is not None and (timer is None or timer.when() > deadline):
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)
        protocol.waiter = waiter
        try:
            await waiter
        finally:
            protocol.waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._protocol.waiter
        if waiter is None or self._deadline == math.inf:
            return  # no deadline to watch now; the next request arms the timer again
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            _expire(waiter)
        else:
            self._timer = loop.call_at(self._deadline, self._on_timer)

    async def aclose(self) -> None:
        """Close the connection at once (nothing is left to flush between requests)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.abort()
