"""The Ray worker: one process, one event loop, the local interaction loop fed by the driver.

A worker runs the same loop as a local rollout (:func:`run_workers`), with
``concurrency`` episodes in flight. Its episode queue is filled by the
driver in small chunks, and its results go back to the driver in batches,
each time the driver polls.

How the local loop is kept running while the queue is refilled from afar:
a loop worker asks for its next episode right after ``on_result`` returns,
without awaiting anything in between. So ``on_result`` is where an idle loop
worker waits: until the queue holds an episode for it, or the driver says
there is no more work. A loop worker then never finds the queue empty before
the end and never quits early. Loop workers are started as episodes arrive,
up to ``concurrency``; each one started is promised an episode (``reserved``)
that the waiting ones leave to it.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from .._env import AsyncEnv, connect_if_remote
from .._from_config import make_agent
from .._loop import LoopState, PolicyCaller, _Episode, close_env, run_workers
from .._policy import EpisodeContext
from .._results import EpisodeResult
from .._sinks import Sink, SinkSet
from ..errors import ConfigError
from ._protocol import (
    Ended,
    Event,
    Job,
    Reply,
    Retried,
    ShippedError,
    Started,
    describe_episode,
)
from ._shared import check_shared_dir, store_trajectory

__all__ = ["POLL_TIMEOUT_S", "RolloutWorker", "WorkerCore"]

logger = logging.getLogger("async_rollout")

#: A poll returns after this long even when nothing happened (a liveness check).
POLL_TIMEOUT_S = 5.0


class _Signal:
    """Wakes every task waiting for "something changed"; reusable, unlike an Event."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class _Forwarder(Sink):
    """Queues episode starts and retries for the driver's sinks.

    Args:
        post: Queues an event for the driver.
        strip: Send failed attempts without their trajectories (they stay on the worker).
    """

    def __init__(self, post: Callable[[Event], None], *, strip: bool = False) -> None:
        self._post = post
        self._strip = strip

    def on_episode_start(self, episode: EpisodeContext) -> None:
        """Forward the start (without the policy's per-episode state)."""
        self._post(Started(EpisodeContext(episode.index, episode.env_seed, episode.agent_seed)))

    def on_retry(self, failed: EpisodeResult, attempt: int, delay_s: float) -> None:
        """Forward the retry."""
        if self._strip and failed.trajectory is not None:
            failed = replace(failed, trajectory=None)
        self._post(Retried(failed, attempt, delay_s))


class WorkerCore:
    """The state of one worker: its queue, its loop workers, the results not yet polled.

    Independent of Ray (the actor, :class:`RolloutWorker`, only forwards its
    calls), so it can run on any asyncio or Trio loop.

    Args:
        job: What to run.
        rank: This worker's number, 0 to ``job.n_workers - 1``; its loop
            workers get the env factory's ``worker_index`` values
            ``rank * concurrency`` to ``rank * concurrency + concurrency - 1``.
        where: How messages name this worker.
    """

    def __init__(self, job: Job, rank: int, where: str | None = None) -> None:
        self.job = job
        self.rank = rank
        self.where = where or f"worker {rank} of {job.n_workers} (pid {os.getpid()})"
        self.prefetch = max(1, job.concurrency // 16)
        self._queue: deque[_Episode] = deque()
        self._in_flight: dict[int, _Episode] = {}
        self._outbox: list[Event] = []
        self._finished = False
        self._stopped = False
        self._done = False
        self._woken = False
        self._error: BaseException | None = None
        self._live = 0
        self._reserved = 0
        self._waiting = 0
        self._returning = False
        self._raised = False
        self._changed: _Signal | None = None
        self._work: _Signal | None = None
        self._scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None
        self._policy: PolicyCaller | None = None
        self._spare: AsyncEnv | None = None
        self._sinks = (
            SinkSet([_Forwarder(self._post, strip=job.shared is not None)])
            if job.forward_events
            else None
        )

    # --- signals (made on first use: they belong to the event loop that runs us) ---

    def _signals(self) -> tuple[_Signal, _Signal]:
        if self._changed is None or self._work is None:
            self._changed, self._work = _Signal(), _Signal()
        return self._changed, self._work

    def _post(self, event: Event) -> None:
        self._outbox.append(event)
        self._signals()[0].notify()

    def wants(self) -> int:
        """How many more episodes this worker can take: free slots plus a small prefetch."""
        if self._done or self._finished or self._stopped:
            return 0
        held = len(self._in_flight) + len(self._queue)
        return max(0, self.job.concurrency + self.prefetch - held)

    # --- the calls the driver makes ---

    async def run(self) -> None:
        """Once work comes, make the first env and the policy; play what comes until told to end.

        Never raises (but for cancellation): a failure is kept and reported
        by :meth:`poll`, with notes naming this worker and its episodes.
        """
        changed, work = self._signals()
        try:
            with anyio.CancelScope() as self._scope:
                if self._stopped:
                    self._scope.cancel()
                if self.job.shared is not None:
                    # Checked at once, work or not: a node that does not share the
                    # output directory is a misconfigured cluster, whoever plays.
                    try:
                        await anyio.to_thread.run_sync(
                            check_shared_dir, self.job.shared, self.where
                        )
                    except ConfigError as exc:
                        self._error = exc
                        return
                # No env before there is work: a worker may get none, and a failure
                # to make one can then name the episode it was for.
                while not self._queue and not self._finished:
                    await work.wait()
                if self._finished:
                    return
                await self._start()
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    self._grow()
                    while not self._finished:
                        await work.wait()
        except Exception as exc:
            self._keep_error(exc)
        finally:
            self._tg = None
            if self._spare is not None:
                spare, self._spare = self._spare, None
                await close_env(spare)
            self._done = True
            changed.notify()

    async def poll(self, episodes: Iterable[_Episode] = (), accept_work: bool = True) -> Reply:
        """Take ``episodes``, then wait until there is something to tell the driver.

        Returns when results or events are ready, when the loop has ended,
        when the worker can take a chunk of work (only if ``accept_work``),
        after :meth:`wake`, or after :data:`POLL_TIMEOUT_S`.
        """
        changed, _ = self._signals()
        self.feed(episodes)
        with anyio.move_on_after(POLL_TIMEOUT_S):
            while not (
                self._outbox
                or self._done
                or self._woken
                or (accept_work and self.wants() >= self.prefetch)
            ):
                await changed.wait()
        self._woken = False
        events, self._outbox = self._outbox, []
        error = None
        if self._done and self._error is not None:
            error = ShippedError(self._error, _dumps)
        return Reply(events=events, wants=self.wants(), done=self._done, error=error)

    def feed(self, episodes: Iterable[_Episode]) -> None:
        """Queue ``episodes`` and put loop workers on them."""
        self._queue.extend(episodes)
        if self._queue:
            self._signals()[1].notify()
            self._grow()

    def finish(self) -> None:
        """No more work will come: loop workers end once their episodes are done."""
        self._finished = True
        changed, work = self._signals()
        work.notify()
        changed.notify()

    def wake(self) -> None:
        """Make a pending :meth:`poll` return now (the driver has work to offer again)."""
        self._woken = True
        self._signals()[0].notify()

    def stop(self) -> None:
        """Cancel the loop now: episodes in flight end as ``"cancelled"``, envs are closed."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    # --- the loop ---

    def _make_env(self, slot: int) -> AsyncEnv:
        env: AsyncEnv = self.job.make_env(self.rank * self.job.concurrency + slot)
        return env

    async def _start(self) -> None:
        env = self._make_env(0)
        try:
            await connect_if_remote(env)
            self._policy = PolicyCaller(make_agent(self.job.agent, env))
        except BaseException:
            await close_env(env)
            raise
        self._spare = env

    def _grow(self) -> None:
        """Start loop workers for the queued episodes that no waiting worker will take."""
        if self._tg is None or self._policy is None:
            return
        extra = min(
            self.job.concurrency - self._live,
            len(self._queue) - self._waiting - self._reserved,
        )
        if extra <= 0:
            return
        base = self._live
        state = LoopState(
            make_env=lambda k: self._make_env(base + k),
            policy=self._policy,
            settings=self.job.settings,
            sinks=self._sinks,
            episodes=_Episodes(self),
            on_result=self._on_result,
            owns_envs=True,
            spare_env=self._spare if base == 0 else None,
        )
        if base == 0:
            self._spare = None
        self._live += extra
        self._reserved += extra
        self._tg.start_soon(self._run_group, state, extra)

    async def _run_group(self, state: LoopState, n: int) -> None:
        try:
            await run_workers(state, n)
        except Exception as exc:
            self._keep_error(exc)
            if self._scope is not None:
                self._scope.cancel()

    def _next_episode(self) -> _Episode:
        if self._returning:
            self._returning = False
        else:
            self._reserved -= 1
        if not self._queue or self._stopped:
            self._live -= 1
            raise StopIteration
        episode = self._queue.popleft()
        self._in_flight[episode.index] = episode
        return episode

    async def _on_result(self, result: EpisodeResult) -> None:
        self._in_flight.pop(result.index, None)
        stored = False
        if self.job.shared is not None and result.trajectory is not None:
            # Written before the result goes out, so that the driver names only whole
            # files. Shielded: the episode has finished; a stopped run still gets its file.
            with anyio.CancelScope(shield=True):
                stored = await anyio.to_thread.run_sync(store_trajectory, self.job.shared, result)
            result = replace(result, trajectory=None)
        self._post(Ended(result, stored))
        if result.outcome == "cancelled" or (
            result.failed and self.job.settings.on_env_error == "raise"
        ):
            # The loop worker stops after these: it takes no next episode.
            self._raised = self._raised or result.failed
            return
        _, work = self._signals()
        self._waiting += 1
        try:
            while len(self._queue) <= self._reserved and not self._finished:
                await work.wait()
        finally:
            self._waiting -= 1
        # The loop worker takes its next episode right after this returns.
        self._returning = True

    def _keep_error(self, exc: BaseException) -> None:
        if self._error is not None:
            return
        if self._policy is None:
            first = (
                f" (its first episode: {describe_episode(self._queue[0])})" if self._queue else ""
            )
            exc.add_note(f"on Ray {self.where}, making its first env and the policy{first}")
        else:
            exc.add_note(f"on Ray {self.where}")
            if self._in_flight and not self._raised:
                shown = ", ".join(describe_episode(ep) for ep in list(self._in_flight.values())[:5])
                more = len(self._in_flight) - 5
                shown += f" and {more} more" if more > 0 else ""
                exc.add_note(f"episodes in flight there: {shown}")
        self._error = exc


class _Episodes(Iterator[_Episode]):
    """The queue as the local loop sees it: an iterator, fed by the driver."""

    def __init__(self, core: WorkerCore) -> None:
        self._core = core

    def __next__(self) -> _Episode:
        return self._core._next_episode()


def _dumps(value: Any) -> bytes:
    """Serialize as Ray will, to check that a value can make the trip."""
    dumps: Callable[[Any], bytes]
    try:
        from ray import cloudpickle

        dumps = cloudpickle.dumps
    except ImportError:
        import pickle

        dumps = pickle.dumps
    return dumps(value)


class RolloutWorker:
    """The Ray actor (wrapped by ``ray.remote`` at run time): forwards to a :class:`WorkerCore`.

    Args:
        job: The pickled :class:`Job` (unpickled in :meth:`run`, so that a spec
            the worker cannot import is reported as the run's error).
        rank: The worker's number.
        n_workers: How many workers the run has.
    """

    def __init__(self, job: bytes, rank: int, n_workers: int) -> None:
        self._job = job
        self._rank = rank
        self._n_workers = n_workers
        self._core: WorkerCore | None = None
        self._early: BaseException | None = None
        self._stop = False

    def _where(self) -> str:
        try:
            import ray

            node_ip: Callable[[], str] = ray.util.get_node_ip_address
            node = f" on node {node_ip()}"
        except Exception:
            node = ""
        return f"worker {self._rank} of {self._n_workers} (pid {os.getpid()}{node})"

    async def run(self) -> None:
        """Unpickle the job and run the worker's loop until it ends."""
        from ray import cloudpickle

        try:
            job = cloudpickle.loads(self._job)
        except Exception as exc:
            exc.add_note(
                f"on Ray {self._where()}, unpickling the env spec and the agent: the worker "
                "must be able to import what they refer to (install it there, or pass a "
                "runtime_env in ray_actor_options)"
            )
            self._early = exc
            return
        if self._core is not None:
            # Called again on the same process (the driver lost touch with it): start afresh;
            # the driver has given the old loop's episodes to other workers.
            self._core.stop()
        self._core = core = WorkerCore(job, self._rank, self._where())
        if self._stop:
            core.stop()
        await core.run()

    async def poll(self, episodes: list[_Episode], accept_work: bool) -> Reply:
        """See :meth:`WorkerCore.poll`."""
        if self._core is None:
            if self._early is not None:
                return Reply(done=True, error=ShippedError(self._early, _dumps))
            if episodes:
                raise RuntimeError("poll() with episodes before run()")
            await anyio.sleep(0.01)
            return Reply()
        return await self._core.poll(episodes, accept_work)

    async def finish(self) -> None:
        """See :meth:`WorkerCore.finish`."""
        if self._core is not None:
            self._core.finish()

    async def wake(self) -> None:
        """See :meth:`WorkerCore.wake`."""
        if self._core is not None:
            self._core.wake()

    async def stop(self) -> None:
        """See :meth:`WorkerCore.stop`."""
        self._stop = True
        if self._core is not None:
            self._core.stop()
