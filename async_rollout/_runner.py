"""RolloutRunner: the public face of the interaction loop."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import gymnasium as gym
import numpy as np

from ._env import (
    AsyncEnv,
    EnvFactory,
    check_max_episode_steps,
    connect_if_remote,
    env_factory,
    is_async_env,
    wrap_env,
)
from ._from_config import init_env_and_agent, make_agent, make_runner
from ._loop import (
    LoopSettings,
    LoopState,
    PolicyCaller,
    _Episode,
    _Failure,
    _Tally,
    _Yielder,
    close_env,
    play,
    run_workers,
)
from ._policy import AsyncPolicy, EpisodeContext, wrap_policy
from ._results import EpisodeResult, RolloutResult
from ._seeding import derive_seeds, fresh_base_seed
from ._sinks import RunInfo, Sink, SinkSet, StatsSink
from ._types import Backend, OnEnvError, WrapperSpec, check_choice, to_container
from .errors import ConfigError

__all__ = ["RolloutRunner"]

logger = logging.getLogger("async_rollout")

#: How long the sinks' ``on_run_end`` may take (file sinks flush their queues then).
RUN_END_TIMEOUT_S = 60.0


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def _check_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None; got {value!r}")
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be > 0 seconds or None; got {value}")
    return float(value)


def _check_seeds(name: str, value: object) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of ints or None; got {value!r}")
    seeds = list(value)
    for i, seed in enumerate(seeds):
        _check_int(f"{name}[{i}]", seed, 0)
    return [int(s) for s in seeds]


def _is_env_instance(env: object) -> bool:
    """True for an env object (to use as is), False for a spec to build envs from."""
    if isinstance(env, str | Mapping | EnvFactory | type):
        return False
    if isinstance(env, gym.Env) or is_async_env(env):
        return True
    return not callable(env)


async def _first_env_and_policy(
    make: Callable[[int], AsyncEnv], agent: Any, owns_env: bool
) -> tuple[AsyncEnv, PolicyCaller]:
    """Make worker 0's env (it tells a policy config the spaces) and the policy."""
    env = make(0)
    try:
        await connect_if_remote(env)
        return env, PolicyCaller(make_agent(agent, env))
    except BaseException:
        if owns_env:
            await close_env(env)
        raise


class RolloutRunner:
    """Runs episodes of an env with a policy, many at once on one event loop.

    Args:
        n_episodes: How many episodes to run.
        max_episode_steps: Truncate episodes after this many steps; None or 0
            means no limit of the runner's own (a ``TimeLimit`` from
            ``gym.make`` still applies). Negative is a ValueError.
        deterministic: Passed to the policy at every step.
        record_trajectory: Keep every step (in memory, on the results, when
            there is no ``output_dir``).
        record_event_logs: Write ``events.jsonl`` to ``output_dir``.
        concurrency: How many episodes are in flight at most; each in-flight
            episode has an env of its own.
        seed: Base seed the per-episode seeds derive from; None draws one
            (recorded in the result).
        env_seeds: Explicit env seeds, one per episode (instead of derived ones).
        agent_seeds: Explicit agent seeds, one per episode.
        output_dir: Where file sinks write (stats, trajectories, event log).
        resume: Finish the missing episodes of an earlier run in ``output_dir``.
        reset_timeout: Deadline of each reset, in seconds.
        step_timeout: Deadline of each env step.
        policy_timeout: Deadline of each ``compute_action``.
        episode_timeout: Deadline of a whole episode, reset included.
        on_env_error: What a failed episode does: ``"raise"`` stops the run
            and raises the original exception; ``"skip"`` records it and goes
            on with a fresh env; ``"retry"`` re-runs it with the same seeds on
            a fresh env up to ``max_retries`` times, then records it.
        max_retries: Re-runs of a failed episode under ``"retry"``.
        sinks: Observers of the run (:class:`Sink`).
        backend: ``"local"``: this process's event loop; ``"ray"``: Ray actors,
            ``n_workers`` of them, each with ``concurrency`` episodes in flight
            (see :mod:`async_rollout.distributed`; asyncio only). Without Ray
            installed, ``"ray"`` is a ConfigError here, at construction.
        validate: Check every action against the action space and every
            observation against the observation space (shape, dtype, bounds),
            and the step flags and info. The cheap checks — a step tuple of
            five, a real-number reward — always run.
        ray_address: With ``backend="ray"`` and no Ray connection yet: None
            starts a local cluster, ``"auto"`` joins the one on this machine,
            ``"ray://host:10001"`` a remote one.
        n_workers: With ``backend="ray"``: how many Ray actors; None: as many
            as the cluster's CPUs hold, no more than the episodes need.
        ray_actor_options: With ``backend="ray"``: Ray options of each actor
            (``num_cpus`` (default 1), ``num_gpus``, ``runtime_env``,
            ``max_restarts`` (default 2), ...).
        shared_output_dir: With ``backend="ray"`` and ``record_trajectory``:
            each Ray worker writes its episodes' trajectory files into
            ``output_dir/trajectories/`` itself (same names, same contents)
            and sends back only the results, so the arrays never cross Ray's
            object store; the driver still writes the other files
            (``stats.json``, the journal, the event log). ``output_dir`` must
            then be a path every node sees, the same on each (NFS, a shared
            volume): the driver checks it can write there, and each worker
            that it sees the driver's folder, before any episode is played.
            Sinks get an :class:`~async_rollout.distributed.StoredTrajectory`
            in ``result.trajectory``, which reads the file when used. Needs
            ``output_dir`` (else a ValueError); with the local backend it
            changes nothing (every file is written by this process anyway).
    """

    def __init__(
        self,
        n_episodes: int,
        max_episode_steps: int | None = None,
        deterministic: bool = False,
        record_trajectory: bool = False,
        record_event_logs: bool = False,
        *,
        concurrency: int = 16,
        seed: int | None = 0,
        env_seeds: Sequence[int] | None = None,
        agent_seeds: Sequence[int] | None = None,
        output_dir: str | None = None,
        resume: bool = False,
        reset_timeout: float | None = None,
        step_timeout: float | None = None,
        policy_timeout: float | None = None,
        episode_timeout: float | None = None,
        on_env_error: OnEnvError = "raise",
        max_retries: int = 2,
        sinks: Iterable[Sink] = (),
        backend: Backend = "local",
        validate: bool = False,
        ray_address: str | None = None,
        n_workers: int | None = None,
        ray_actor_options: Mapping[str, Any] | None = None,
        shared_output_dir: bool = False,
    ) -> None:
        self.n_episodes = _check_int("n_episodes", n_episodes, 0)
        self.max_episode_steps = check_max_episode_steps(max_episode_steps)
        self.deterministic = bool(deterministic)
        self.record_trajectory = bool(record_trajectory)
        self.record_event_logs = bool(record_event_logs)
        self.concurrency = _check_int("concurrency", concurrency, 1)
        self.seed = None if seed is None else _check_int("seed", seed, 0)
        self.env_seeds = _check_seeds("env_seeds", env_seeds)
        self.agent_seeds = _check_seeds("agent_seeds", agent_seeds)
        self.output_dir = None if output_dir is None else str(output_dir)
        self.resume = bool(resume)
        self.reset_timeout = _check_timeout("reset_timeout", reset_timeout)
        self.step_timeout = _check_timeout("step_timeout", step_timeout)
        self.policy_timeout = _check_timeout("policy_timeout", policy_timeout)
        self.episode_timeout = _check_timeout("episode_timeout", episode_timeout)
        check_choice("on_env_error", on_env_error, ("raise", "skip", "retry"))
        self.on_env_error: OnEnvError = on_env_error
        self.max_retries = _check_int("max_retries", max_retries, 0)
        self.sinks = list(sinks)
        for i, sink in enumerate(self.sinks):
            if not isinstance(sink, Sink):
                raise TypeError(f"sinks[{i}] must be a Sink; got {type(sink).__name__}")
        check_choice("backend", backend, ("local", "ray"))
        self.backend: Backend = backend
        if backend == "ray":
            from .distributed import require_ray

            require_ray()
        if ray_address is not None and not (isinstance(ray_address, str) and ray_address):
            raise TypeError(f"ray_address must be a non-empty string or None; got {ray_address!r}")
        self.ray_address = ray_address
        self.n_workers = None if n_workers is None else _check_int("n_workers", n_workers, 1)
        if ray_actor_options is not None and not isinstance(ray_actor_options, Mapping):
            raise TypeError(f"ray_actor_options must be a mapping; got {ray_actor_options!r}")
        self.ray_actor_options = dict(ray_actor_options or {})
        self.shared_output_dir = bool(shared_output_dir)
        if self.shared_output_dir and self.output_dir is None:
            raise ValueError(
                "shared_output_dir needs an output_dir (the directory every Ray node sees, "
                "which the workers write the trajectory files into); got "
                "shared_output_dir=True and output_dir=None"
            )
        self.validate = bool(validate)
        self.result: RolloutResult | None = None
        """The latest run's result; also set after a run that raised or was cancelled."""

    def __repr__(self) -> str:
        return (
            f"RolloutRunner(n_episodes={self.n_episodes}, "
            f"max_episode_steps={self.max_episode_steps}, concurrency={self.concurrency})"
        )

    def _settings(self) -> LoopSettings:
        return LoopSettings(
            deterministic=self.deterministic,
            max_episode_steps=self.max_episode_steps,
            record_trajectory=self.record_trajectory,
            reset_timeout=self.reset_timeout,
            step_timeout=self.step_timeout,
            policy_timeout=self.policy_timeout,
            episode_timeout=self.episode_timeout,
            on_env_error=self.on_env_error,
            max_retries=self.max_retries,
            validate=self.validate,
        )

    def _episode_seeds(self, base_seed: int | None) -> tuple[list[int], list[int]]:
        n = self.n_episodes
        explicit = [s for s in (self.env_seeds, self.agent_seeds) if s is not None]
        if explicit:
            shortest = min(len(s) for s in explicit)
            if shortest < n:
                logger.warning(
                    "only %d explicit seeds for n_episodes=%d: running %d episodes",
                    shortest,
                    n,
                    shortest,
                )
                n = shortest
        assert base_seed is not None or (
            self.env_seeds is not None and self.agent_seeds is not None
        )
        env_seeds = self.env_seeds[:n] if self.env_seeds is not None else None
        agent_seeds = self.agent_seeds[:n] if self.agent_seeds is not None else None
        if env_seeds is None:
            env_seeds = derive_seeds(base_seed, 0, range(n))  # type: ignore[arg-type]
        if agent_seeds is None:
            agent_seeds = derive_seeds(base_seed, 1, range(n))  # type: ignore[arg-type]
        return env_seeds, agent_seeds

    async def run_with(
        self,
        env: Any,
        wrappers: Iterable[WrapperSpec] | Mapping[Any, Any] | None = (),
        agent: Any = None,
    ) -> RolloutResult:
        """Run the rollout and return its result (also kept in :attr:`result`).

        Args:
            env: An env spec (see :func:`async_rollout.env_factory`), or one
                env instance, which then runs every episode in turn
                (concurrency 1) and is not closed by the runner.
            wrappers: Wrappers applied to each env, in order.
            agent: A policy (see :func:`async_rollout.wrap_policy`), a
                ``_target_`` config (given the env's spaces where it accepts
                them), or None for :class:`RandomPolicy`.

        Raises:
            Exception: Under ``on_env_error="raise"``, the first episode
                failure: the env's or policy's own exception with a note
                naming the episode, or :class:`RolloutTimeout`.
        """
        return await self._run(env, wrappers, agent, ())

    @asynccontextmanager
    async def stream(
        self,
        env: Any,
        wrappers: Iterable[WrapperSpec] | Mapping[Any, Any] | None = (),
        agent: Any = None,
    ) -> AsyncIterator[AsyncIterator[EpisodeResult]]:
        """Run the rollout while yielding each episode result as it ends.

        ``async with runner.stream(env, wrappers, agent) as episodes:`` then
        ``async for ep in episodes:``. Results come in completion order, failed
        ones too. The rollout waits for a slow consumer (nothing is lost);
        leaving the block early cancels what is left and closes every env.
        :attr:`result` holds the whole result afterwards.
        """
        send, receive = anyio.create_memory_object_stream[EpisodeResult](0)

        class _Forward(Sink):
            async def on_episode_end(self, result: EpisodeResult) -> None:
                if result.outcome != "cancelled":
                    await send.send(result)

        async def produce() -> None:
            async with send:
                await self._run(env, wrappers, agent, (_Forward(),))

        try:
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(produce)
                try:
                    yield receive
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Only the producer raises into the group: give the caller its error itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _run(
        self,
        env: Any,
        wrappers: Iterable[WrapperSpec] | Mapping[Any, Any] | None,
        agent: Any,
        extra_sinks: Iterable[Sink],
        config: Mapping[str, Any] | None = None,
    ) -> RolloutResult:
        base_seed = self.seed
        if base_seed is None and (self.env_seeds is None or self.agent_seeds is None):
            base_seed = fresh_base_seed()
        env_seeds, agent_seeds = self._episode_seeds(base_seed)
        n = len(env_seeds)
        indices = list(range(n))
        collector = StatsSink(keep_trajectories=self.output_dir is None)
        file_sinks: list[Sink] = []
        if self.output_dir is not None:
            from .recording import prepare_output_dir

            # Reading an earlier run back (resume) is file I/O: keep it off the event loop.
            out = await anyio.to_thread.run_sync(
                partial(
                    prepare_output_dir,
                    self.output_dir,
                    resume=self.resume,
                    n_episodes=n,
                    env_seeds=env_seeds,
                    agent_seeds=agent_seeds,
                    record_trajectory=self.record_trajectory,
                    record_event_logs=self.record_event_logs,
                    config=config,
                )
            )
            collector.episodes.extend(out.done)
            indices = out.remaining
            file_sinks = out.sinks
            if self.backend == "ray" and self.shared_output_dir:
                from .recording import TrajectorySink

                # The Ray workers write the trajectory files themselves.
                file_sinks = [s for s in file_sinks if not isinstance(s, TrajectorySink)]
        concurrency = self.concurrency
        owns_envs = not _is_env_instance(env)
        if owns_envs:
            factory = env_factory(env, wrappers=wrappers)
        else:
            if concurrency > 1:
                warnings.warn(
                    "run_with() got one env instance: running its episodes one at a time "
                    "(concurrency 1); pass a factory or a spec to run them concurrently",
                    RuntimeWarning,
                    stacklevel=3,
                )
            if self.on_env_error == "retry":
                raise ValueError("on_env_error='retry' needs an env factory, not an env instance")
            concurrency = 1
            instance = env_factory(lambda: env, wrappers=wrappers)()
            factory = None
        # The collector comes first: it builds runner.result even if a later sink fails.
        sinks = SinkSet([collector, *file_sinks, *self.sinks, *extra_sinks])
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()

        def finish() -> RolloutResult:
            self.result = RolloutResult.from_episodes(
                base_seed, collector.episodes, time.perf_counter() - t0
            )
            return self.result

        self.result = None
        make = factory if factory is not None else lambda _: instance
        try:
            first_env, policy = await _first_env_and_policy(make, agent, owns_envs)
        except BaseException:
            finish()  # runner.result is set after any run that raised, this one too
            raise
        state = LoopState(
            make_env=make,
            policy=policy,
            settings=self._settings(),
            sinks=sinks,
            # Made one at a time: 10,000 prebuilt ones would sit in the GC's oldest generation.
            episodes=(_Episode(i, env_seeds[i], agent_seeds[i]) for i in indices),
            on_result=lambda result: sinks.call("on_episode_end", result),
            owns_envs=owns_envs,
            spare_env=first_env,
        )
        try:
            await sinks.call(
                "on_run_start",
                RunInfo(
                    seed=base_seed,
                    indices=indices,
                    env_seeds=env_seeds,
                    agent_seeds=agent_seeds,
                    n_episodes=n,
                    concurrency=concurrency,
                    started_at=started_at,
                    config=config,
                    output_dir=self.output_dir,
                ),
            )
            if self.backend == "ray":
                from .distributed import run_on_ray

                await run_on_ray(
                    state,
                    agent=agent,
                    concurrency=concurrency,
                    n_workers=self.n_workers,
                    address=self.ray_address,
                    actor_options=self.ray_actor_options,
                    shared_output_dir=self.output_dir if self.shared_output_dir else None,
                )
            else:
                await run_workers(state, min(concurrency, max(len(indices), 1)))
        finally:
            result = finish()
            # File sinks drain their write queue here: allow them time.
            with anyio.move_on_after(RUN_END_TIMEOUT_S, shield=True):
                await sinks.call("on_run_end", result)
        return result

    @classmethod
    def from_config(cls, cfg: Any) -> RolloutRunner:
        """A runner with a composed config's settings (``runner``, ``seeding``, ``output_dir``).

        Raises:
            ConfigError: A setting is invalid; the message names its key.
        """
        runner = make_runner(cls, cfg)
        runner.setup(cfg)
        return runner

    def setup(self, cfg: Any) -> None:
        """Keep the config (its ``env``, ``wrappers``, ``agent``, ``input_dir``) for :meth:`run`."""
        missing = [key for key in ("env", "agent") if key not in cfg]
        if missing:
            raise ConfigError(f"the config has no {missing[0]!r} section", key=missing[0])
        self._cfg = cfg

    async def run(self, cfg: Any = None) -> RolloutResult:
        """Run the rollout a config describes (``cfg``, or the one given to :meth:`setup`).

        The resolved config goes to the sinks (and into ``stats.json``).
        """
        if cfg is not None:
            self.setup(cfg)
        cfg = getattr(self, "_cfg", None)
        if cfg is None:
            raise RuntimeError("run() needs a config: pass one, or call setup(cfg) first")
        factory, agent = await self.init_env_and_agent(
            cfg.get("env"), cfg.get("wrappers"), None, cfg.get("agent"), cfg.get("input_dir")
        )
        return await self._run(factory, (), agent, (), config=to_container(cfg))

    @staticmethod
    async def init_env_and_agent(
        env_config: Any,
        wrappers_config: Any,
        max_episode_steps: int | None,
        agent_config: Any,
        input_dir: str | None,
    ) -> tuple[EnvFactory, AsyncPolicy]:
        """Build ``(env_factory, agent)`` from configs (see :func:`init_env_and_agent`)."""
        return await init_env_and_agent(
            env_config, wrappers_config, max_episode_steps, agent_config, input_dir
        )

    @classmethod
    async def run_interaction_loop(
        cls,
        env: Any,
        agent: Any,
        n_episodes: int,
        env_seeds: Sequence[int],
        agent_seeds: Sequence[int],
        deterministic: bool,
        render: bool = False,
        after_reset_callback: Callable[[], Awaitable[Any] | Any] | None = None,
        *,
        concurrency: int = 1,
        max_episode_steps: int | None = None,
    ) -> list[EpisodeResult]:
        """Run the loop alone, without sinks, and return the episodes sorted by index.

        Runs ``min(n_episodes, len(env_seeds), len(agent_seeds))`` episodes.
        ``after_reset_callback`` is called with no arguments after each reset
        (and awaited if it returns an awaitable). ``env`` is an env spec or an
        env instance (which needs ``concurrency=1`` and is not closed).
        """
        n = min(_check_int("n_episodes", n_episodes, 0), len(env_seeds), len(agent_seeds))
        concurrency = _check_int("concurrency", concurrency, 1)
        owns_envs = not _is_env_instance(env)
        if not owns_envs and concurrency > 1:
            raise ValueError("one env instance cannot run episodes concurrently: pass a spec")
        make = env_factory(env) if owns_envs else (lambda _=0: wrap_env(env))
        first_env, policy = await _first_env_and_policy(make, agent, owns_envs)
        results: list[EpisodeResult] = []

        async def keep(result: EpisodeResult) -> None:
            results.append(result)

        state = LoopState(
            make_env=make,
            policy=policy,
            settings=LoopSettings(
                deterministic=deterministic,
                max_episode_steps=check_max_episode_steps(max_episode_steps),
                render=render,
                after_reset=after_reset_callback,
            ),
            sinks=None,
            episodes=iter([_Episode(i, int(env_seeds[i]), int(agent_seeds[i])) for i in range(n)]),
            on_result=keep,
            owns_envs=owns_envs,
            spare_env=first_env,
        )
        await run_workers(state, min(concurrency, max(n, 1)))
        return sorted(results, key=lambda ep: ep.index)

    @staticmethod
    async def run_episode(
        env: Any,
        obs: Any,
        agent: Any,
        deterministic: bool,
        render: bool,
        *,
        rng: np.random.Generator | None = None,
        max_episode_steps: int | None = None,
    ) -> EpisodeResult:
        """Play one episode from an env that was already reset to ``obs``.

        Raises:
            Exception: Whatever the env or the policy raised.
        """
        env = wrap_env(env)
        policy = PolicyCaller(wrap_policy(agent))
        settings = LoopSettings(
            deterministic=deterministic,
            max_episode_steps=check_max_episode_steps(max_episode_steps),
            render=render,
        )
        ctx = EpisodeContext(0, None, None)
        tally = _Tally()
        started = time.perf_counter()
        try:
            await play(
                env,
                obs,
                policy,
                ctx,
                rng if rng is not None else np.random.default_rng(),
                settings,
                tally,
                None,
                _Yielder(),
            )
        except _Failure as failure:
            raise failure.exc from None
        return EpisodeResult(
            index=0,
            env_seed=None,
            agent_seed=None,
            total_reward=tally.total_reward,
            length=tally.length,
            terminated=tally.terminated,
            truncated=tally.truncated,
            wall_time_s=time.perf_counter() - started,
            env_time_s=tally.env_time_s,
            policy_time_s=tally.policy_time_s,
        )
