"""The driver of the Ray backend: start the workers, hand out episodes, collect the results.

The driver keeps the episodes no worker holds yet (the pool, in index order)
and, per worker, the ones it holds without a result. One task per worker polls
it: each reply brings the results and events that happened since the last
poll, and how many more episodes the worker can take; the next poll carries
them. A worker that runs low asks again, so faster workers take more.

A worker that dies gives its episodes back to the pool, in front, for the
others (and for itself once Ray has restarted it, within ``max_restarts``).
A result is accepted only from the worker that holds its episode, so every
episode gets exactly one result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import uuid
import warnings
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from .._loop import LoopState, _Episode, close_env, describe
from .._results import EpisodeResult
from .._sinks import Sink
from .._types import to_container
from ..errors import ConfigError, RolloutError
from ._deps import import_ray
from ._protocol import Ended, Event, Job, Retried, Started, describe_episode, portable_factory
from ._shared import SharedDir, StoredTrajectory, close_shared_dir, open_shared_dir, stored_path
from ._worker import RolloutWorker

__all__ = ["ACTOR_NAME_PREFIX", "DEFAULT_ACTOR_OPTIONS", "STOP_TIMEOUT_S", "run_on_ray"]

logger = logging.getLogger("async_rollout")

#: Ray actor options of each worker unless ``actor_options`` says otherwise.
DEFAULT_ACTOR_OPTIONS: Mapping[str, Any] = {"num_cpus": 1, "max_restarts": 2, "max_concurrency": 16}
#: How long stopping the workers may take (they close their envs) before they are killed.
STOP_TIMEOUT_S = 10.0
#: Actor names start with this (``ray list actors`` shows them).
ACTOR_NAME_PREFIX = "async-rollout-"


async def run_on_ray(
    state: LoopState,
    *,
    agent: Any,
    concurrency: int,
    n_workers: int | None = None,
    address: str | None = None,
    actor_options: Mapping[str, Any] | None = None,
    shared_output_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Play the episodes of ``state`` on Ray workers; each result goes to ``state.on_result``.

    Each worker is a Ray actor running the local interaction loop with
    ``concurrency`` episodes in flight, on envs it makes from the shipped
    factory (``worker_index`` = ``rank * concurrency + slot``) and a policy
    built from ``agent`` as a local run builds it. Episode seeds come from
    ``state``, so the results are a local run's whatever the number of
    workers. Sinks see every result; episode starts and retries are
    forwarded too, steps are not.

    Connects to Ray only when it is not connected: ``address=None`` starts a
    local cluster (as many CPUs as this machine, or enough for
    ``n_workers``), unless ``RAY_ADDRESS`` is set; ``"auto"`` or
    ``"ray://host:10001"`` join an existing one. The connection stays open
    for later runs (``ray.shutdown()`` ends it).

    Args:
        state: The run: env factory, settings, episodes, sinks and ``on_result``.
        agent: The policy object, a ``_target_`` config, or None (random).
        concurrency: Episodes in flight on each worker.
        n_workers: Ray actors to start; None: as many as the cluster's CPUs
            hold (``num_cpus`` per actor), and no more than the episodes need
            (one per ``concurrency`` episodes).
        address: The Ray cluster to join when not connected yet.
        actor_options: Ray actor options of each worker over
            :data:`DEFAULT_ACTOR_OPTIONS` (``num_cpus``, ``num_gpus``,
            ``resources``, ``runtime_env``, ``max_restarts``, ...);
            ``max_task_retries`` is always 0: the driver re-issues lost work.
        shared_output_dir: An output directory every node sees at this path,
            whose ``trajectories/`` folder exists: when trajectories are
            recorded, the workers write their episodes' files there themselves
            and the results come back without them (the sinks get a
            :class:`~async_rollout.distributed.StoredTrajectory` naming the
            file); None: the results bring the trajectories back.

    Raises:
        ConfigError: Not running under asyncio, or Ray is not installed, or
            ``shared_output_dir`` is not writable here or not seen by a worker.
        ValueError: ``state`` runs one env instance (a worker needs a spec).
        TypeError: The env spec or the agent cannot be pickled.
        RolloutError: Every worker died with episodes left to play.
        OSError: A worker could not write a trajectory file (``shared_output_dir``).
        Exception: Under ``on_env_error="raise"``, the first episode failure
            with its own type and notes naming the episode and the worker.
    """
    shared: SharedDir | None = None
    try:
        _require_asyncio()
        if not state.owns_envs:
            raise ValueError(
                "backend='ray' needs an env spec or factory to build envs on the workers, "
                "not an env instance"
            )
        # The driver's env only served to read the spaces; the workers make their own.
        if state.spare_env is not None:
            spare, state.spare_env = state.spare_env, None
            await close_env(spare)
        episodes = list(state.episodes)
        if not episodes:
            return
        options = {**DEFAULT_ACTOR_OPTIONS, **dict(to_container(actor_options) or {})}
        options["max_task_retries"] = 0
        sinks = state.sinks.sinks if state.sinks is not None else []
        if state.sinks is not None and state.sinks.has_step_hooks:
            keep = (
                "record_trajectory=True writes every step to output_dir/trajectories/"
                if shared_output_dir is not None
                else "record_trajectory=True brings every step back with the results"
            )
            warnings.warn(
                "backend='ray': sinks' on_step hooks are not called (steps happen on the "
                f"workers); {keep}",
                RuntimeWarning,
                stacklevel=2,
            )
        job = Job(
            make_env=portable_factory(state.make_env),
            agent=to_container(agent),
            settings=state.settings,
            concurrency=concurrency,
            n_workers=0,
            forward_events=any(_overrides(s, ("on_episode_start", "on_retry")) for s in sinks),
        )
        if shared_output_dir is not None and state.settings.record_trajectory:
            # Before connecting to Ray (seconds): a folder the driver cannot write fails fast.
            shared = await anyio.to_thread.run_sync(open_shared_dir, shared_output_dir)
            job = replace(job, shared=shared)
        ray = import_ray()
        n, payload = await anyio.to_thread.run_sync(
            _prepare, ray, job, address, n_workers, len(episodes), options
        )
        driver = _Driver(ray, state, episodes, options, job.shared)
        await driver.run(payload, n)
    finally:
        if shared is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close_shared_dir, shared)
        if state.spare_env is not None and state.owns_envs:
            await close_env(state.spare_env)
            state.spare_env = None


def _require_asyncio() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError(
            "backend='ray' runs under asyncio only (Ray's object refs are asyncio "
            "awaitables), and this run is on another event loop (Trio?): run it under "
            "asyncio (anyio.run(..., backend='asyncio'), the CLI's default --backend), or "
            "keep Trio with backend='local'",
            key="runner.backend",
        ) from None


def _overrides(sink: Sink, hooks: Iterable[str]) -> bool:
    return any(getattr(type(sink), h, None) is not getattr(Sink, h) for h in hooks)


class _QuietSigterm(logging.Filter):
    """Drops Ray's warning that ``ray.init`` off the main thread sets no SIGTERM handler.

    Ray's handler would exit on SIGTERM, taking over from the application's
    (the CLI's clean shutdown): not setting it is what we want.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _connect(ray: ModuleType, kwargs: Mapping[str, Any]) -> None:
    """``ray.init(**kwargs)`` in a thread of its own, which then stays parked until exit.

    Not on the event loop: starting a cluster takes seconds. Not in a pool
    thread either: once the thread that called ``ray.init`` has ended, Ray's
    exception hook hangs for a minute when the program later dies of an
    uncaught exception (Ray 2.x).
    """
    done: Future[None] = Future()

    def connect() -> None:
        quiet = _QuietSigterm()
        ray_logger = logging.getLogger("ray._private.worker")
        ray_logger.addFilter(quiet)
        try:
            ray.init(**kwargs)
        except BaseException as exc:
            done.set_exception(exc)
            return
        finally:
            ray_logger.removeFilter(quiet)
        done.set_result(None)
        threading.Event().wait()

    threading.Thread(target=connect, name="async-rollout-ray-init", daemon=True).start()
    done.result()


def _prepare(
    ray: ModuleType,
    job: Job,
    address: str | None,
    n_workers: int | None,
    n_episodes: int,
    options: Mapping[str, Any],
) -> tuple[int, bytes]:
    """Connect (blocking: run in a thread), size the pool of workers and pickle the job."""
    per_worker = float(options.get("num_cpus") or 0)
    if not ray.is_initialized():
        if address is None and os.environ.get("RAY_ADDRESS"):
            _connect(ray, {})  # Ray reads the address from the environment
        elif address is None:
            cpus = os.cpu_count() or 1
            if n_workers is not None:
                cpus = max(cpus, math.ceil(n_workers * per_worker))
            _connect(ray, {"address": "local", "num_cpus": cpus, "include_dashboard": False})
        else:
            _connect(ray, {"address": address})
    _check_fits(ray.cluster_resources(), options)
    if n_workers is None:
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
        fit = int(cluster_cpus // per_worker) if per_worker > 0 else int(cluster_cpus)
        n_workers = min(max(1, fit), math.ceil(n_episodes / job.concurrency))
    n = max(1, min(n_workers, n_episodes))
    return n, _pickle_job(ray, replace(job, n_workers=n))


def _check_fits(cluster: Mapping[str, float], options: Mapping[str, Any]) -> None:
    """Refuse actor demands the whole cluster cannot meet (Ray would wait for them forever)."""
    demands = {
        "CPU": options.get("num_cpus"),
        "GPU": options.get("num_gpus"),
        **dict(options.get("resources") or {}),
    }
    for name, amount in demands.items():
        if amount and float(amount) > float(cluster.get(name, 0)):
            raise ConfigError(
                f"ray_actor_options: each Ray worker asks for {amount} {name}, and the whole "
                f"cluster has {cluster.get(name, 0)}; ask for less, or add nodes that have it",
                key="runner.ray_actor_options",
            )


def _pickle_job(ray: ModuleType, job: Job) -> bytes:
    dumps = ray.cloudpickle.dumps
    try:
        return dumps(job)  # type: ignore[no-any-return]
    except Exception:
        parts = (("the env spec", job.make_env), ("the agent", job.agent))
        for what, value in parts:
            try:
                dumps(value)
            except Exception as exc:
                raise TypeError(
                    f"backend='ray' sends {what} to the workers with cloudpickle, and it "
                    f"cannot be pickled ({describe(exc)}): use what the workers can rebuild "
                    "(a gymnasium id, a _target_ config, a module-level callable or class)"
                ) from exc
        raise


@dataclass(eq=False)
class _Slot:
    """One worker as the driver sees it."""

    rank: int
    actor: Any
    owned: dict[int, _Episode] = field(default_factory=dict)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    run_ref: Any = None
    serving: bool = False
    done: bool = False
    alive: bool = True
    restarts: int = 0


class _Driver:
    def __init__(
        self,
        ray: ModuleType,
        state: LoopState,
        episodes: list[_Episode],
        options: Mapping[str, Any],
        shared: SharedDir | None = None,
    ) -> None:
        self.ray = ray
        self.state = state
        self.shared = shared
        self.pool: deque[_Episode] = deque(episodes)
        self.options = dict(options)
        self.max_restarts = int(self.options.get("max_restarts") or 0)
        self.slots: list[_Slot] = []
        self.error: BaseException | None = None
        self.completed = False
        self.last_death: BaseException | None = None
        self._tg: TaskGroup | None = None
        ex = ray.exceptions
        self._death = (ex.RayActorError, ex.OutOfMemoryError)

    async def run(self, payload: bytes, n: int) -> None:
        actor_class = self.ray.remote(RolloutWorker)
        name = f"{ACTOR_NAME_PREFIX}{uuid.uuid4().hex[:8]}-"
        self.slots = [
            _Slot(
                rank,
                actor_class.options(name=f"{name}{rank}", **self.options).remote(payload, rank, n),
            )
            for rank in range(n)
        ]
        logger.info("Ray backend: %d workers for %d episodes", n, len(self.pool))
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for slot in self.slots:
                    tg.start_soon(self._drive, slot)
            if self.error is None and not self.completed:
                restarts = sum(slot.restarts for slot in self.slots)
                self.error = RolloutError(
                    f"every Ray worker died ({len(self.slots)} workers, {restarts} restarts); "
                    f"{len(self.pool)} episodes have no result (the first: "
                    f"{describe_episode(self.pool[0]) if self.pool else '-'}); "
                    f"the last death: {self.last_death}"
                )
        finally:
            with anyio.move_on_after(STOP_TIMEOUT_S, shield=True) as scope:
                await self._wind_down()
            if scope.cancelled_caught:
                logger.warning("Ray workers took over %ss to stop; killed", STOP_TIMEOUT_S)
            for slot in self.slots:
                try:
                    self.ray.kill(slot.actor)
                except Exception:  # already gone
                    logger.debug("killing Ray worker %d failed", slot.rank, exc_info=True)
        if self.error is not None:
            raise self.error

    # --- one task per worker ---

    async def _drive(self, slot: _Slot) -> None:
        with slot.scope:
            while True:
                try:
                    slot.run_ref = slot.actor.run.remote()
                    await self._serve(slot)
                    if slot.done:
                        await slot.run_ref
                    return
                except self._death as exc:
                    served = slot.serving
                    await self._lost(slot, exc)
                except Exception as exc:
                    self._fail(exc)
                    return
                # Ray queues calls to an actor it restarts: one that died before answering
                # a single poll of this incarnation is gone for good (or cannot start).
                out_of_restarts = 0 <= self.max_restarts <= slot.restarts
                if not served or out_of_restarts or self.completed:
                    slot.alive = False
                    logger.warning("Ray worker %d is gone for good", slot.rank)
                    return
                slot.restarts += 1

    async def _serve(self, slot: _Slot) -> None:
        give: list[_Episode] = []
        slot.serving = False
        while True:
            reply = await slot.actor.poll.remote(give, bool(self.pool))
            if not slot.serving and slot.restarts:
                logger.info("Ray worker %d is back (restart %d)", slot.rank, slot.restarts)
            slot.serving = True
            give = []
            await self._apply(slot, reply.events)
            if reply.error is not None:
                slot.done = True
                self._fail(reply.error.restore())
                return
            if reply.done:
                slot.done = True
                return
            if reply.wants > 0 and self.pool and not self.completed:
                give = self._take(slot, reply.wants)

    def _take(self, slot: _Slot, wants: int) -> list[_Episode]:
        """A chunk for ``slot``: what it wants, but no more than its share of the pool."""
        alive = sum(s.alive for s in self.slots) or 1
        k = min(wants, math.ceil(len(self.pool) / alive))
        chunk = [self.pool.popleft() for _ in range(k)]
        slot.owned.update((ep.index, ep) for ep in chunk)
        return chunk

    async def _apply(self, slot: _Slot, events: list[Event]) -> None:
        sinks = self.state.sinks
        for event in events:
            if isinstance(event, Ended):
                result = event.result
                # A worker's "cancelled" only means it was stopped; the driver records those.
                if result.outcome == "cancelled" or slot.owned.pop(result.index, None) is None:
                    continue
                if event.stored and self.shared is not None:
                    # The file is written: the journal and stats.json name it, as locally.
                    path = stored_path(self.shared, result.index)
                    result = replace(result, trajectory=StoredTrajectory(path))
                await self.state.on_result(result)
                if not self.pool and not any(s.owned for s in self.slots):
                    self._complete()
            elif isinstance(event, Started) and sinks is not None:
                await sinks.call("on_episode_start", event.episode)
            elif isinstance(event, Retried) and sinks is not None:
                await sinks.call("on_retry", event.failed, event.attempt, event.delay_s)

    async def _lost(self, slot: _Slot, exc: BaseException) -> None:
        """``slot``'s actor died: its episodes go back to the pool, in front."""
        self.last_death = exc
        lost = sorted(slot.owned.values(), key=lambda ep: ep.index)
        slot.owned.clear()
        slot.serving = False
        self.pool.extendleft(reversed(lost))
        logger.warning(
            "Ray worker %d died (%s); its %d unfinished episodes go back to the pool",
            slot.rank,
            type(exc).__name__,
            len(lost),
        )
        with anyio.move_on_after(1.0):
            try:
                await slot.run_ref
            except Exception:
                logger.debug("Ray worker %d's run ended with its death", slot.rank)
        if lost and self._tg is not None:
            for other in self.slots:
                if other is not slot and other.serving and not other.done:
                    self._tg.start_soon(self._call, other, "wake")

    def _complete(self) -> None:
        """Every episode has its result: the workers wind down, those not serving are dropped."""
        if self.completed:
            return
        self.completed = True
        assert self._tg is not None
        for slot in self.slots:
            if slot.serving and not slot.done:
                self._tg.start_soon(self._call, slot, "finish")
            elif not slot.done:
                slot.scope.cancel()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _call(self, slot: _Slot, method: str) -> None:
        try:
            await getattr(slot.actor, method).remote()
        except self._death:
            logger.debug("Ray worker %d: %s() found it dead", slot.rank, method)

    # --- the end of a run, on every path ---

    async def _wind_down(self) -> None:
        # An episode handed out without a result gets "cancelled", as in a local run.
        for slot in self.slots:
            for ep in sorted(slot.owned.values(), key=lambda ep: ep.index):
                await self.state.on_result(_cancelled(ep))
            slot.owned.clear()
        async with anyio.create_task_group() as tg:
            for slot in self.slots:
                # One that never answered holds nothing: it is only killed.
                if slot.alive and slot.serving and not slot.done:
                    tg.start_soon(self._stop, slot)

    async def _stop(self, slot: _Slot) -> None:
        """Cancel the worker's loop, then wait for it to close its envs."""
        await self._call(slot, "stop")
        try:
            await slot.run_ref
        except Exception:
            logger.debug("Ray worker %d ended badly while stopping", slot.rank, exc_info=True)


def _cancelled(ep: _Episode) -> EpisodeResult:
    return EpisodeResult(
        ep.index, ep.env_seed, ep.agent_seed, 0.0, 0, False, False, "cancelled", "cancelled"
    )
