"""The server's watchdog: abandon an env call whose client has left.

A client that times out closes its connection; without a watchdog, an env
call that hangs would hold its session (and its env) forever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ._wire import FrameStream

__all__ = ["ClientGone", "Watchdog"]

T = TypeVar("T")

#: Seconds an env call runs before the watchdog starts watching its connection.
WATCH_AFTER_S = 1.0

_GONE = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


class ClientGone(Exception):
    """The client left while its request was being served; the call was cancelled."""


class Watchdog:
    """Runs a session's env calls; cancels one that outlives ``after`` once its client leaves.

    Requests are answered one at a time, so while a call runs the connection
    is idle. A call still running after ``after`` seconds gets the watchdog
    reading its connection: an end of stream cancels the call (bytes that
    arrive are kept for the session to read next). A fast call costs one
    cancel scope and no task switch, which a reader task in front of every
    request would cost.

    Args:
        conn: The session's connection.
        after: Seconds before a running call is watched.
    """

    def __init__(self, conn: FrameStream, after: float = WATCH_AFTER_S) -> None:
        self._conn = conn
        self._after = after
        self._call: anyio.CancelScope | None = None
        self._started = 0.0
        self._read: anyio.CancelScope | None = None
        self._read_done: anyio.Event | None = None

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()``.

        Raises:
            ClientGone: The client left, and the call was cancelled.
        """
        try:
            with anyio.CancelScope() as scope:
                self._call, self._started = scope, anyio.current_time()
                return await fn()
        finally:
            self._call = None
            await self._stop_reading()
        raise ClientGone

    async def run(self) -> None:
        """Look at the running call every ``after`` seconds (a task of the session)."""
        while True:
            await anyio.sleep(self._after)
            call = self._call
            if call is not None and anyio.current_time() - self._started >= self._after:
                await self._watch(call)

    async def _watch(self, call: anyio.CancelScope) -> None:
        # Set before the first await: the session sees them as soon as the call returns.
        done = self._read_done = anyio.Event()
        try:
            with anyio.CancelScope() as self._read:
                while self._call is call:
                    if self._conn.buffered > self._conn.max_frame_size:
                        await anyio.sleep_forever()  # a flood: keep it for the session to refuse
                    await self._conn.fill()
        except _GONE:
            if self._call is call:
                call.cancel()
        finally:
            self._read = self._read_done = None
            done.set()

    async def _stop_reading(self) -> None:
        """Take the connection back from the watchdog before the session reads it again."""
        done = self._read_done
        if done is None:
            return
        if self._read is not None:
            self._read.cancel()
        await done.wait()
