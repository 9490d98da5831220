"""BatchedPolicy: coalesces concurrent ``compute_action`` calls into one batched call.

How a batch forms, without a background task: the first request of a batch
becomes its *leader* and waits, until the batch's deadline
(``max_delay_s`` after that first request), for the batch to finish. Requests
arriving meanwhile join as *followers* and wait on the batch's ``wake``
event. The request that fills the batch runs ``batch_fn`` itself, at once;
otherwise the leader runs it when the deadline passes. Whoever runs it stores
the actions (or the error) on the batch and sets ``wake``; each caller then
takes its own row.

A request cancelled before its batch starts withdraws its row (its rng is not
touched). When the leader withdraws, it hands leadership on: it marks the
batch leaderless and sets ``wake`` (after swapping in a fresh event for the
others to wait on), so the first follower to wake becomes the leader and keeps
the original deadline. A batch whose every request withdrew is dropped.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import anyio.lowlevel
import anyio.to_thread
import numpy as np

from .errors import PolicyError

if TYPE_CHECKING:
    from ._batching_trio import TaskEvent

__all__ = ["BatchFn", "BatchedPolicy", "BatchingStatistics"]

#: ``batch_fn(observations, *, deterministic, rngs) -> actions``, sync or async.
BatchFn: TypeAlias = Callable[..., Any]

# Latency percentiles come from the most recent samples only, so memory stays
# flat however long the policy serves.
_LATENCY_WINDOW = 4096

_INLINE, _THREAD, _ASYNC = 0, 1, 2


@dataclass(frozen=True, slots=True)
class BatchingStatistics:
    """What a :class:`BatchedPolicy` has done so far.

    Latency percentiles cover the most recent 4,096 samples (requests for the
    queue latency, batches for the call latency), measured in wall time
    (``time.perf_counter``); they are 0.0 before the first batch.
    """

    n_batches: int
    """Calls made to ``batch_fn`` (failed ones included)."""
    n_requests: int
    """Rows passed to ``batch_fn`` (requests withdrawn before their batch started excluded)."""
    mean_batch_size: float
    """``n_requests / n_batches``; 0.0 before the first batch."""
    p50_queue_latency_s: float
    """Median time from a request to the start of its batch, in seconds."""
    p95_queue_latency_s: float
    """95th percentile of the queue latency, in seconds."""
    p50_call_latency_s: float
    """Median duration of a ``batch_fn`` call (stacking included), in seconds."""
    p95_call_latency_s: float
    """95th percentile of the call latency, in seconds."""


class _LatencyWindow:
    """A fixed-size ring of the most recent latency samples."""

    __slots__ = ("_buffer", "_count")

    def __init__(self, capacity: int) -> None:
        self._buffer = np.zeros(capacity)
        self._count = 0

    def __len__(self) -> int:
        return min(self._count, len(self._buffer))

    def add(self, value: float) -> None:
        self._buffer[self._count % len(self._buffer)] = value
        self._count += 1

    def extend(self, values: np.ndarray[Any, np.dtype[np.float64]]) -> None:
        capacity, k = len(self._buffer), len(values)
        if k >= capacity:
            # Percentiles ignore order, so the newest samples may land anywhere.
            self._buffer[:] = values[k - capacity :]
        else:
            start = self._count % capacity
            head = min(k, capacity - start)
            self._buffer[start : start + head] = values[:head]
            self._buffer[: k - head] = values[head:]
        self._count += k

    def percentiles(self) -> tuple[float, float]:
        """Return the (p50, p95) of the samples held, or zeros when there are none."""
        n = len(self)
        if n == 0:
            return 0.0, 0.0
        p50, p95 = np.percentile(self._buffer[:n], [50.0, 95.0])
        return float(p50), float(p95)


class _FutureEvent:
    """A one-shot event for asyncio, cheaper per waiter than ``anyio.Event``.

    Each waiter parks on a future of its own, so cancelling one waiter's task
    cancels only that future. Unlike ``asyncio.Event``, a waiter leaving does
    not remove its future from the list (an O(n) scan per waiter that makes a
    large batch's wake-up quadratic): the event is used once, and ``set``
    skips futures already done.
    """

    __slots__ = ("_futures", "_set")

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []
        self._set = False

    def set(self) -> None:
        self._set = True
        for future in self._futures:
            if not future.done():
                future.set_result(None)

    def wait(self) -> Awaitable[None]:
        # The future itself is returned, not a coroutine awaiting it: one frame
        # less to create and to resume through on every request.
        if self._set:
            return anyio.lowlevel.checkpoint()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(future)
        return future

    async def wait_until(self, deadline: float) -> None:
        """Wait until the event is set or the loop's clock reaches ``deadline``.

        A timer on the loop rather than an ``anyio.CancelScope``: a scope costs
        several times more, once per batch.
        """
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._futures.append(future)
        timer = loop.call_at(deadline, _expire, future)
        try:
            await future
        finally:
            timer.cancel()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _new_event() -> _FutureEvent | TaskEvent:
    """A lean one-shot event for the running backend (asyncio or Trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no asyncio loop in this thread: Trio
        from ._batching_trio import TaskEvent

        return TaskEvent()
    return _FutureEvent()


class _Batch:
    """The shared state of one batch, from its first request to its rows' delivery."""

    __slots__ = (
        "actions",
        "deadline",
        "deterministic",
        "error",
        "error_tb",
        "executor",
        "finished",
        "leader",
        "n_live",
        "observations",
        "rngs",
        "rowmap",
        "started",
        "times",
        "wake",
        "withdrawn",
    )

    def __init__(self, deterministic: bool, deadline: float) -> None:
        self.deterministic = deterministic
        self.deadline = deadline
        self.observations: list[Any] = []
        self.rngs: list[np.random.Generator] = []
        self.times: list[float] = []
        self.n_live = 0
        self.leader = 0  # index of the request that flushes at the deadline; -1: none
        self.withdrawn: list[int] | None = None
        self.wake = _new_event()
        self.started = False
        self.finished = False
        self.executor = -1
        self.rowmap: list[int] | None = None
        self.actions: Any = None
        self.error: Exception | None = None
        self.error_tb: TracebackType | None = None


def _stack(items: list[Any]) -> Any:
    """Stack observations: arrays along a new leading axis, dicts per key, tuples per element."""
    first = items[0]
    if isinstance(first, np.ndarray):
        return np.stack(items)
    if isinstance(first, Mapping):
        return {key: _stack([item[key] for item in items]) for key in first}
    if isinstance(first, tuple):
        return tuple(_stack([item[j] for item in items]) for j in range(len(first)))
    return np.asarray(items)


def _batch_len(actions: Any) -> int:
    """The number of rows in ``actions``; a PolicyError if it has none or they disagree."""
    if isinstance(actions, Mapping | tuple):
        parts = actions.values() if isinstance(actions, Mapping) else actions
        lengths = {_batch_len(part) for part in parts}
        if len(lengths) != 1:
            raise PolicyError(
                "batch_fn returned a dict or tuple whose parts have different batch sizes "
                f"({sorted(lengths)}); each part needs one row per observation"
            )
        return lengths.pop()
    try:
        return len(actions)
    except TypeError:
        raise PolicyError(
            "batch_fn must return a batch of actions (an array with a leading batch axis, "
            f"a list, or a dict or tuple of those); got {type(actions).__name__}: {actions!r}"
        ) from None


def _row(actions: Any, i: int) -> Any:
    """Row ``i`` of a batch of actions, rebuilding dicts and tuples."""
    if isinstance(actions, Mapping):
        return {key: _row(part, i) for key, part in actions.items()}
    if isinstance(actions, tuple):
        return tuple(_row(part, i) for part in actions)
    return actions[i]


def _is_coroutine_callable(fn: object) -> bool:
    # A callable object with an ``async def __call__`` is a coroutine function too.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 -- the method itself is inspected, not callability
    )


class BatchedPolicy:
    """An :class:`~async_rollout.AsyncPolicy` that serves concurrent requests in batches.

    Concurrent ``compute_action`` calls (one per episode in flight) are
    coalesced into one ``batch_fn`` call. A batch goes as soon as it holds
    ``max_batch_size`` requests, or ``max_delay_s`` after its first request,
    whichever comes first; each caller gets its own row. Requests with
    different ``deterministic`` flags never share a batch.

    ``batch_fn(observations, *, deterministic, rngs) -> actions`` receives the
    stacked observations (arrays stacked along a new leading axis, dict
    observations as a dict of stacked arrays per key, tuple observations as a
    tuple of stacked elements, scalars as a 1-D array), ``deterministic``, and
    the list of the requests' per-episode generators, in row order. It
    returns one action per row: an array with a leading batch axis, a list, a
    dict of such batches (for Dict action spaces) or a tuple of them (for
    Tuple action spaces; a tuple is split per element, not read as rows).
    Caller ``i`` gets row ``i`` (for an array, a view into it: return a fresh
    array from each call rather than reusing an output buffer).

    When ``batch_fn`` computes each row from that row's observation and
    generator alone, batched and unbatched runs give the same actions, so the
    same seeds give the same episodes whatever the concurrency. (Bitwise
    equality also needs the arithmetic itself to be row-independent: BLAS may
    round a batched matrix product differently from a single-row one.)

    Failures and cancellation:

    - An exception from ``batch_fn`` or from stacking the observations, and
      a :class:`~async_rollout.PolicyError` for a result of the wrong size,
      is raised in every caller of that batch, with a note naming the batch:
      the original in the caller that ran the batch, a copy of the same type
      with the same notes and traceback in the others (the original when it
      cannot be copied), so a note one caller adds stays its own.
    - A caller cancelled before its batch starts withdraws its row: the batch
      goes without it and its generator is not used. If it was the batch's
      leader, another caller takes over and the batch keeps its deadline.
    - Once a batch has started, the call runs to its end even when the caller
      that runs it is cancelled, if other callers wait for it (the call is
      shielded; cancellation is raised right after): sync inline calls cannot
      be interrupted anyway, and a worker thread cannot be stopped. A lone
      request's async ``batch_fn`` is cancelled at once.

    No task outlives the callers: the first caller of a batch waits for it,
    and the caller that fills it (or the first one, at the deadline) runs it.
    With concurrency below ``max_batch_size`` every batch waits the full
    ``max_delay_s``: size the batch to the number of episodes in flight.

    Args:
        batch_fn: ``batch_fn(observations, *, deterministic, rngs) -> actions``;
            a function or callable object, sync or async (detected once).
        max_batch_size: Largest number of requests in one batch (>= 1).
        max_delay_s: Longest wait, in seconds, from a batch's first request to
            its start (>= 0).
        offload_thread: Run a sync ``batch_fn`` in a worker thread instead of
            on the event loop, for batch functions that release the GIL
            (numpy on large arrays, torch, a C extension) or block. The loop
            keeps gathering the next batch meanwhile, and a batch filling up
            then runs at once in another thread: ``batch_fn`` must be
            thread-safe, or serialize itself with a lock.

    Raises:
        TypeError: ``batch_fn`` is not callable, or ``max_batch_size`` not an int.
        ValueError: A limit is out of range, or ``offload_thread=True`` with an
            async ``batch_fn``.
    """

    def __init__(
        self,
        batch_fn: BatchFn,
        *,
        max_batch_size: int = 32,
        max_delay_s: float = 0.002,
        offload_thread: bool = False,
    ) -> None:
        if not callable(batch_fn):
            raise TypeError(
                "batch_fn must be callable as batch_fn(observations, *, deterministic, rngs); "
                f"got {type(batch_fn).__name__}: {batch_fn!r}"
            )
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
            raise TypeError(f"max_batch_size must be an int; got {max_batch_size!r}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1; got {max_batch_size}")
        if not (math.isfinite(max_delay_s) and max_delay_s >= 0):
            raise ValueError(f"max_delay_s must be a finite number >= 0; got {max_delay_s!r}")
        is_async = _is_coroutine_callable(batch_fn)
        if is_async and offload_thread:
            raise ValueError(
                "offload_thread=True runs a sync batch_fn in a worker thread; "
                f"got an async batch_fn: {batch_fn!r}"
            )
        self._batch_fn = batch_fn
        self._max_batch_size = max_batch_size
        self._max_delay_s = float(max_delay_s)
        self._offload_thread = bool(offload_thread)
        self._mode = _ASYNC if is_async else _THREAD if offload_thread else _INLINE
        # The batch still taking requests, per ``deterministic`` flag (index 0: False).
        self._open: list[_Batch | None] = [None, None]
        self._n_batches = 0
        self._n_requests = 0
        self._queue_latency = _LatencyWindow(_LATENCY_WINDOW)
        self._call_latency = _LatencyWindow(_LATENCY_WINDOW)

    @property
    def batch_fn(self) -> BatchFn:
        """The batched function this policy serves."""
        return self._batch_fn

    @property
    def max_batch_size(self) -> int:
        """Largest number of requests in one batch."""
        return self._max_batch_size

    @property
    def max_delay_s(self) -> float:
        """Longest wait from a batch's first request to its start, in seconds."""
        return self._max_delay_s

    def __repr__(self) -> str:
        return (
            f"BatchedPolicy({self._batch_fn!r}, max_batch_size={self._max_batch_size}, "
            f"max_delay_s={self._max_delay_s}, offload_thread={self._offload_thread})"
        )

    def statistics(self) -> BatchingStatistics:
        """Return counts and latency percentiles of the batches run so far."""
        queue_p50, queue_p95 = self._queue_latency.percentiles()
        call_p50, call_p95 = self._call_latency.percentiles()
        n_batches = self._n_batches
        return BatchingStatistics(
            n_batches=n_batches,
            n_requests=self._n_requests,
            mean_batch_size=self._n_requests / n_batches if n_batches else 0.0,
            p50_queue_latency_s=queue_p50,
            p95_queue_latency_s=queue_p95,
            p50_call_latency_s=call_p50,
            p95_call_latency_s=call_p95,
        )

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> Any:
        """Return this request's row of the next batch's actions.

        Args:
            observation: The episode's current observation.
            deterministic: Passed on to ``batch_fn``; requests differing in it
                go in different batches.
            rng: The episode's generator, passed on in ``rngs``.

        Returns:
            The action in this request's row of ``batch_fn``'s result.
        """
        slot = 1 if deterministic else 0
        batch = self._open[slot]
        if batch is None:
            batch = _Batch(
                deterministic=bool(deterministic),
                deadline=anyio.current_time() + self._max_delay_s,
            )
            self._open[slot] = batch
        index = len(batch.observations)
        if batch.leader < 0:
            # Its leader withdrew and no follower has woken to take over yet.
            batch.leader = index
        batch.observations.append(observation)
        batch.rngs.append(rng)
        batch.times.append(perf_counter())
        batch.n_live += 1
        try:
            if batch.n_live >= self._max_batch_size:
                return await self._run(batch, index)
            if batch.leader == index:
                return await self._lead(batch, index)
            while True:
                await batch.wake.wait()
                if batch.finished:
                    return self._take(batch, index)
                if batch.leader < 0 and not batch.started:
                    batch.leader = index
                    return await self._lead(batch, index)
                # Another follower took over; wait on the event that replaced this one.
        except BaseException:
            self._withdraw(batch, index)
            raise

    async def _lead(self, batch: _Batch, index: int) -> Any:
        await batch.wake.wait_until(batch.deadline)
        if not batch.started:
            return await self._run(batch, index)
        while not batch.finished:
            # The request that filled the batch is running an awaitable batch_fn.
            await batch.wake.wait()
        return self._take(batch, index)

    def _withdraw(self, batch: _Batch, index: int) -> None:
        """Take a cancelled request out of a batch that has not started."""
        if batch.started:
            return  # its row is computed anyway, and dropped
        batch.n_live -= 1
        if batch.withdrawn is None:
            batch.withdrawn = []
        batch.withdrawn.append(index)
        if batch.n_live == 0:
            slot = 1 if batch.deterministic else 0
            if self._open[slot] is batch:
                self._open[slot] = None
            return
        if batch.leader == index or batch.leader < 0:
            # Wake every waiter so one of them takes over; the rest wait on a fresh event.
            batch.leader = -1
            wake, batch.wake = batch.wake, _new_event()
            wake.set()

    async def _run(self, batch: _Batch, index: int) -> Any:
        """Run ``batch_fn`` on ``batch`` and return row ``index``; every caller is woken."""
        batch.started = True
        batch.executor = index
        slot = 1 if batch.deterministic else 0
        if self._open[slot] is batch:
            self._open[slot] = None
        observations, rngs, times = batch.observations, batch.rngs, batch.times
        if batch.withdrawn:
            gone = set(batch.withdrawn)
            live = [i for i in range(len(observations)) if i not in gone]
            rowmap = [-1] * len(observations)
            for row, i in enumerate(live):
                rowmap[i] = row
            batch.rowmap = rowmap
            observations = [observations[i] for i in live]
            rngs = [rngs[i] for i in live]
            times = [times[i] for i in live]
        n = len(observations)
        start = perf_counter()
        self._queue_latency.extend(start - np.array(times))
        # Shield the call when other callers depend on it, so one caller's
        # cancellation cannot take their rows away (a thread cannot be stopped anyway).
        shielded = self._mode == _THREAD or (self._mode == _ASYNC and n > 1)
        try:
            stacked = _stack(observations)
            if self._mode == _INLINE:
                actions = self._batch_fn(stacked, deterministic=batch.deterministic, rngs=rngs)
            else:
                with anyio.CancelScope(shield=shielded):
                    if self._mode == _ASYNC:
                        actions = await self._batch_fn(
                            stacked, deterministic=batch.deterministic, rngs=rngs
                        )
                    else:
                        actions = await anyio.to_thread.run_sync(
                            functools.partial(
                                self._batch_fn,
                                stacked,
                                deterministic=batch.deterministic,
                                rngs=rngs,
                            )
                        )
            n_actions = _batch_len(actions)
            if n_actions != n:
                raise PolicyError(
                    f"batch_fn returned {n_actions} actions for a batch of {n} observations"
                )
            batch.actions = actions
        except Exception as exc:
            exc.add_note(
                f"while BatchedPolicy served a batch of {n} observations "
                f"(deterministic={batch.deterministic}) with batch_fn {self._batch_fn!r}"
            )
            batch.error = exc
            batch.error_tb = exc.__traceback__
        finally:
            self._call_latency.add(perf_counter() - start)
            self._n_batches += 1
            self._n_requests += n
            batch.finished = True
            batch.wake.set()
        if shielded:
            await anyio.lowlevel.checkpoint_if_cancelled()
        return self._take(batch, index)

    def _take(self, batch: _Batch, index: int) -> Any:
        """Return row ``index`` of a finished batch, or raise its error."""
        if batch.error is not None:
            raise self._error_for(batch, index)
        actions = batch.actions
        if actions is None:
            # Only a BaseException (KeyboardInterrupt, say) in the running caller gets here.
            raise PolicyError("batch_fn was interrupted before it returned")
        row = index if batch.rowmap is None else batch.rowmap[index]
        if type(actions) is np.ndarray or type(actions) is list:
            return actions[row]
        return _row(actions, row)

    @staticmethod
    def _error_for(batch: _Batch, index: int) -> Exception:
        """The exception to raise in caller ``index``: its own copy, so notes stay per caller."""
        error = batch.error
        assert error is not None
        if index == batch.executor:
            return error
        try:
            duplicate = copy.copy(error)
        except Exception:
            return error
        if type(duplicate) is not type(error):
            return error
        duplicate.__notes__ = list(getattr(error, "__notes__", ()))
        duplicate.__cause__ = error.__cause__
        duplicate.__context__ = error.__context__
        duplicate.__suppress_context__ = error.__suppress_context__
        return duplicate.with_traceback(batch.error_tb)
