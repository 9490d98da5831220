"""BatchedPolicy's wake-up event on Trio; imported only when a batch forms under Trio."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import trio
import trio.lowlevel

__all__ = ["TaskEvent"]

_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED


class TaskEvent:
    """A one-shot event that parks each waiting task on the scheduler itself.

    ``anyio.Event`` on Trio goes through three coroutines per waiter (anyio's
    wrapper, ``trio.Event.wait``, ``ParkingLot.park``), a cost paid once per
    row of every batch. A cancelled waiter takes itself off the event.
    """

    __slots__ = ("_set", "_tasks")

    def __init__(self) -> None:
        self._tasks: dict[trio.lowlevel.Task, None] = {}
        self._set = False

    def set(self) -> None:
        self._set = True
        tasks, self._tasks = self._tasks, {}
        reschedule = trio.lowlevel.reschedule
        for task in tasks:
            reschedule(task)

    def wait(self) -> Awaitable[Any]:
        # A coroutine of Trio's own is returned, not one awaiting it: one frame
        # less to suspend and resume through on every request.
        if self._set:
            return trio.lowlevel.checkpoint()  # noqa: ASYNC105 -- awaited by the caller
        task = trio.lowlevel.current_task()
        tasks = self._tasks
        tasks[task] = None

        def abort(_: Any) -> trio.lowlevel.Abort:
            del tasks[task]
            return _SUCCEEDED

        return trio.lowlevel.wait_task_rescheduled(abort)  # noqa: ASYNC105 -- as above

    async def wait_until(self, deadline: float) -> None:
        """Wait until the event is set or Trio's clock reaches ``deadline``."""
        with trio.CancelScope(deadline=deadline):
            await self.wait()
