"""The interaction loop: workers that each own one env and play episodes concurrently."""

from __future__ import annotations

import inspect
import logging
import numbers
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np

from ._env import AsyncEnv
from ._policy import AsyncPolicy, EpisodeContext, hook
from ._results import EpisodeResult, Trajectory
from ._sinks import SinkSet
from ._types import OnEnvError, Outcome
from ._validate import Validator
from .errors import EnvError, RolloutError, RolloutTimeout, TimeoutPhase

logger = logging.getLogger("async_rollout")

#: How long the loop may run without yielding to the event loop, in seconds.
YIELD_BUDGET_S = 0.005
#: How long a graceful env close may take before the env is abandoned.
CLOSE_TIMEOUT_S = 5.0
#: Factory failures in a row that stop the run.
MAX_FACTORY_FAILURES = 5

_clock = time.perf_counter


@dataclass(slots=True)
class LoopSettings:
    """How episodes are played; fixed for one run."""

    deterministic: bool = False
    max_episode_steps: int = 0
    render: bool = False
    record_trajectory: bool = False
    after_reset: Callable[[], Any] | None = None
    validate: bool = False
    reset_timeout: float | None = None
    step_timeout: float | None = None
    policy_timeout: float | None = None
    episode_timeout: float | None = None
    on_env_error: OnEnvError = "raise"
    max_retries: int = 2
    retry_backoff_s: float = 0.05


class _Yielder:
    """Makes the loop yield to the event loop at least every ``YIELD_BUDGET_S`` or so.

    Envs and policies that never suspend would otherwise keep the event loop
    to themselves. A ticker task counts the rounds in which the event loop got
    to it (at most one every half budget) and pushes ``deadline`` on. A worker
    whose step ends past the deadline yields only if no tick happened since
    its previous such check: then the event loop has not gone round, and the
    worker is what starves it. Envs that suspend on their own keep the ticker
    running and never pay for a forced yield, however many run at once.
    """

    __slots__ = ("deadline", "steps", "ticks")

    def __init__(self) -> None:
        self.deadline = _clock() + YIELD_BUDGET_S
        self.ticks = 0
        #: Steps taken by all workers. A worker that sees it move while it awaited
        #: its policy and env was suspended: the event loop went round meanwhile.
        self.steps = 0

    async def tick(self) -> None:
        """Count the event loop's rounds and push the deadline on (run until cancelled)."""
        while True:
            self.ticks += 1
            self.deadline = _clock() + YIELD_BUDGET_S
            await anyio.sleep(YIELD_BUDGET_S / 2)


class _Failure(Exception):
    """An episode failed: carries the outcome and the original exception."""

    def __init__(self, outcome: Outcome, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.outcome = outcome
        self.exc = exc

    @classmethod
    def of(cls, outcome: Outcome, exc: Exception) -> _Failure:
        """``exc`` as a failure with ``outcome``, unless it is one already."""
        return exc if isinstance(exc, _Failure) else cls(outcome, exc)


class _Recorder:
    """Collects an episode's steps for its :class:`Trajectory`.

    One tuple appended per step, transposed once at the end: cheaper on the
    loop than six appends a step.
    """

    __slots__ = ("info", "obs", "steps")

    def __init__(self, obs: Any, info: dict[str, Any]) -> None:
        self.obs = obs
        self.info = info
        #: ``(action, obs, reward, terminated, truncated, info)`` per step.
        self.steps: list[tuple[Any, Any, Any, bool, bool, dict[str, Any]]] = []

    def trajectory(self) -> Trajectory:
        if self.steps:
            actions, observations, rewards, terminated, truncated, infos = zip(
                *self.steps, strict=True
            )
        else:
            actions = observations = rewards = terminated = truncated = infos = ()
        return Trajectory(
            observations=[self.obs, *observations],
            actions=list(actions),
            rewards=np.array(rewards, dtype=np.float64),
            terminated=np.array(terminated, dtype=np.bool_),
            truncated=np.array(truncated, dtype=np.bool_),
            infos=[self.info, *infos],
        )


@dataclass(slots=True)
class _Tally:
    """What an episode accumulated; kept up to date on every exit path."""

    total_reward: float = 0.0
    length: int = 0
    terminated: bool = False
    truncated: bool = False
    env_time_s: float = 0.0
    policy_time_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    recorder: _Recorder | None = None


def _metrics(info: dict[str, Any]) -> dict[str, float]:
    raw = info.get("metrics") if isinstance(info, dict) else None
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, value in raw.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _timeout(
    phase: TimeoutPhase, limit: float, ctx: EpisodeContext, step: int | None = None
) -> RolloutTimeout:
    where = f"step {step}" if phase == "step" else phase if phase != "episode" else "the episode"
    if phase == "policy":
        where = f"the policy at step {step}"
    return RolloutTimeout(
        f"episode {ctx.index} (env_seed={ctx.env_seed}): {where} exceeded {phase}_timeout={limit}s",
        phase=phase,
        limit=limit,
        step=step,
        episode_index=ctx.index,
        env_seed=ctx.env_seed,
        agent_seed=ctx.agent_seed,
    )


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class PolicyCaller:
    """Calls a policy's ``compute_action`` with the keywords it accepts (decided once)."""

    __slots__ = ("compute", "on_end", "on_start", "wants")

    def __init__(self, policy: AsyncPolicy) -> None:
        from ._policy import _keywords

        self.compute = policy.compute_action
        keywords = _keywords(self.compute)
        self.wants = tuple(k for k in ("info", "episode") if k in keywords)
        self.on_start = hook(policy, "on_episode_start")
        self.on_end = hook(policy, "on_episode_end")


_REALS = frozenset({float, int, np.float64, np.float32, np.int64, np.int32, bool, np.bool_})


def _bad_step(out: Any, ctx: EpisodeContext, step: int) -> EnvError:
    if not isinstance(out, tuple | list) or len(out) != 5:
        got = (
            f"a {type(out).__name__} of {len(out)} items"
            if isinstance(out, tuple | list)
            else type(out).__name__
        )
        what = f"env.step returned {got}; expected (obs, reward, terminated, truncated, info)"
    else:
        what = f"env.step returned the reward {out[1]!r}; expected a real number"
    return EnvError(
        f"episode {ctx.index} (env_seed={ctx.env_seed}), step {step}: {what}",
        episode_index=ctx.index,
        env_seed=ctx.env_seed,
        agent_seed=ctx.agent_seed,
    )


async def play(
    env: AsyncEnv,
    obs: Any,
    policy: PolicyCaller,
    ctx: EpisodeContext,
    rng: np.random.Generator,
    settings: LoopSettings,
    tally: _Tally,
    sinks: SinkSet | None,
    yielder: _Yielder,
) -> None:
    """Play from an already reset env until the episode ends; results go into ``tally``.

    Raises:
        _Failure: The env or the policy raised or misbehaved, or a deadline fired.
    """
    deterministic = settings.deterministic
    max_steps = settings.max_episode_steps
    step_timeout, policy_timeout = settings.step_timeout, settings.policy_timeout
    compute, wants = policy.compute, policy.wants
    step = env.step
    render = env.render if settings.render else None  # type: ignore[attr-defined]
    validator = Validator(env, ctx) if settings.validate else None
    on_step = sinks if sinks is not None and sinks.has_step_hooks else None
    recorder = tally.recorder
    record = recorder.steps.append if recorder is not None else None
    info = tally.info
    total = 0.0
    length = 0
    env_time = policy_time = 0.0
    terminated = truncated = False
    ticks_seen = yielder.ticks
    extras = bool(max_steps) or record is not None or on_step is not None
    t2 = _clock()
    try:
        while True:
            steps_before = yielder.steps
            t0 = t2  # the previous step's end: one clock read per step saved
            try:
                if wants:
                    given = {"info": info, "episode": ctx}
                    pending = compute(
                        obs, deterministic=deterministic, rng=rng, **{k: given[k] for k in wants}
                    )
                else:
                    pending = compute(obs, deterministic=deterministic, rng=rng)
                if policy_timeout is None:
                    action = await pending
                else:
                    with anyio.move_on_after(policy_timeout) as scope:
                        action = await pending
                    if _overran(scope):
                        raise _Failure("timeout", _timeout("policy", policy_timeout, ctx, length))
                if validator is not None:
                    validator.action(action, length)
            except Exception as exc:
                raise _Failure.of("policy_error", exc) from exc
            t1 = _clock()
            policy_time += t1 - t0
            try:
                if step_timeout is None:
                    out = await step(action)
                else:
                    with anyio.move_on_after(step_timeout) as scope:
                        out = await step(action)
                    if _overran(scope):
                        raise _Failure("timeout", _timeout("step", step_timeout, ctx, length))
                if render is not None:
                    await _maybe_await(render())
            except Exception as exc:
                raise _Failure.of("env_error", exc) from exc
            t2 = _clock()
            env_time += t2 - t1
            # Cheap checks on every step; the Validator does the thorough ones.
            try:
                obs, reward, terminated, truncated, info = out
                if type(reward) not in _REALS and not isinstance(reward, numbers.Real):
                    raise TypeError(reward)
            except (TypeError, ValueError) as exc:
                raise _Failure("env_error", _bad_step(out, ctx, length + 1)) from exc
            if validator is not None:
                try:
                    validator.step(obs, terminated, truncated, info, length + 1)
                except EnvError as exc:
                    raise _Failure("env_error", exc) from exc
            total += reward  # type: ignore[operator]  # a real number, checked above
            length += 1
            ctx.step = length
            if extras:  # the rarely used per-step features, behind one test
                if max_steps and length >= max_steps and not terminated:
                    truncated = True
                if record is not None:
                    record((action, obs, reward, terminated, truncated, info))
                if on_step is not None:
                    await on_step.call(
                        "on_step", ctx, action, obs, reward, terminated, truncated, info
                    )
            if terminated or truncated:
                break
            steps = yielder.steps + 1
            yielder.steps = steps
            if t2 > yielder.deadline:
                # The ticker ticks at most once per loop round and only every half
                # budget, so with long rounds (thousands of workers) it misses every
                # other round: other workers' steps during this one's awaits are the
                # sure sign that the loop went round.
                if yielder.ticks == ticks_seen and steps == steps_before + 1:
                    await anyio.lowlevel.checkpoint()
                ticks_seen = yielder.ticks
    finally:
        tally.total_reward = float(total)
        tally.length = length
        tally.terminated = bool(terminated)
        tally.truncated = bool(truncated)
        tally.env_time_s += env_time
        tally.policy_time_s = policy_time
        tally.info = info


@dataclass(slots=True)
class _Episode:
    index: int
    env_seed: int | None
    agent_seed: int | None


@dataclass
class LoopState:
    """One run of the loop: the work queue, the results, the first fatal error."""

    make_env: Callable[[int], AsyncEnv]
    policy: PolicyCaller
    settings: LoopSettings
    sinks: SinkSet | None
    episodes: Iterator[_Episode]
    on_result: Callable[[EpisodeResult], Awaitable[None]]
    owns_envs: bool = True
    spare_env: AsyncEnv | None = None
    error: BaseException | None = None
    factory_failures: int = 0
    yielder: _Yielder = field(default_factory=_Yielder)
    scope: anyio.CancelScope | None = None
    results: list[EpisodeResult] = field(default_factory=list)


def _result(
    ep: _Episode,
    tally: _Tally,
    started: float,
    outcome: Outcome = "completed",
    error: str | None = None,
) -> EpisodeResult:
    return EpisodeResult(
        index=ep.index,
        env_seed=ep.env_seed,
        agent_seed=ep.agent_seed,
        total_reward=tally.total_reward,
        length=tally.length,
        terminated=tally.terminated,
        truncated=tally.truncated,
        outcome=outcome,
        error=error,
        wall_time_s=_clock() - started,
        env_time_s=tally.env_time_s,
        policy_time_s=tally.policy_time_s,
        metrics=_metrics(tally.info),
        trajectory=tally.recorder.trajectory() if tally.recorder is not None else None,
    )


def describe(exc: BaseException) -> str:
    """``"TypeName: message"``, the text kept in :attr:`EpisodeResult.error`."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run_episode_on(
    env: AsyncEnv, ep: _Episode, state: LoopState
) -> tuple[EpisodeResult, BaseException | None]:
    """Reset ``env`` with the episode's seed and play it; return its result and failure.

    A cancellation records the episode as ``"cancelled"`` and propagates. An
    exception from a sink or ``after_reset`` is not the episode's failure: it
    propagates and stops the run.
    """
    settings = state.settings
    policy = state.policy
    ctx = EpisodeContext(ep.index, ep.env_seed, ep.agent_seed)
    rng = np.random.default_rng(ep.agent_seed)
    tally = _Tally()
    started = _clock()
    try:
        # A cancel scope costs a little on every resumption: only when a deadline needs one.
        episode_scope = (
            anyio.move_on_after(settings.episode_timeout)
            if settings.episode_timeout is not None
            else nullcontext(None)
        )
        with episode_scope as scope:
            obs, info = await _reset(env, ep, settings, ctx)
            tally.env_time_s = _clock() - started
            tally.info = info
            if settings.record_trajectory:
                tally.recorder = _Recorder(obs, info)
            if settings.after_reset is not None:
                await _maybe_await(settings.after_reset())
            if policy.on_start is not None:
                try:
                    await _maybe_await(policy.on_start(ctx))
                except Exception as exc:
                    raise _Failure("policy_error", exc) from exc
            if state.sinks is not None and state.sinks.has_start_hooks:
                await state.sinks.call("on_episode_start", ctx)
            await play(env, obs, policy, ctx, rng, settings, tally, state.sinks, state.yielder)
        if scope is not None and scope.cancelled_caught:
            assert settings.episode_timeout is not None
            raise _Failure("timeout", _timeout("episode", settings.episode_timeout, ctx))
        result = _result(ep, tally, started)
        if policy.on_end is not None:
            try:
                await _maybe_await(policy.on_end(ctx, result))
            except Exception as exc:
                raise _Failure("policy_error", exc) from exc
        return result, None
    except _Failure as failure:
        error = failure.exc
        error.add_note(
            f"in episode {ep.index} (env_seed={ep.env_seed}, agent_seed={ep.agent_seed}) "
            f"at step {tally.length}"
        )
        result = _result(ep, tally, started, failure.outcome, describe(error))
        await _end_hook_quietly(policy, ctx, result)
        return result, error
    except anyio.get_cancelled_exc_class():
        result = _result(ep, tally, started, "cancelled", "cancelled")
        with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await _end_hook_quietly(policy, ctx, result)
            await state.on_result(result)
        raise


def _overran(scope: anyio.CancelScope) -> bool:
    """True when a deadline fired, or passed while a call blocked without awaiting."""
    return scope.cancelled_caught or anyio.current_time() >= scope.deadline


async def _reset(
    env: AsyncEnv, ep: _Episode, settings: LoopSettings, ctx: EpisodeContext
) -> tuple[Any, dict[str, Any]]:
    limit = settings.reset_timeout
    try:
        if limit is None:
            out = await env.reset(seed=ep.env_seed)
        else:
            with anyio.move_on_after(limit) as scope:
                out = await env.reset(seed=ep.env_seed)
            if _overran(scope):
                raise _Failure("timeout", _timeout("reset", limit, ctx))
        if not (isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[1], dict)):
            got = type(out).__name__
            if isinstance(out, tuple | list):
                got = f"a {got} of {len(out)} items"
            raise EnvError(
                f"episode {ep.index} (env_seed={ep.env_seed}): env.reset returned {got}; "
                "expected (observation, info dict)",
                episode_index=ep.index,
                env_seed=ep.env_seed,
                agent_seed=ep.agent_seed,
            )
        if settings.validate:
            Validator(env, ctx).reset(out[0])
    except Exception as exc:
        raise _Failure.of("env_error", exc) from exc
    return out[0], out[1]


async def _end_hook_quietly(
    policy: PolicyCaller, ctx: EpisodeContext, result: EpisodeResult
) -> None:
    """Tell the policy a failed or cancelled episode ended; its own failure is only logged."""
    if policy.on_end is None:
        return
    try:
        await _maybe_await(policy.on_end(ctx, result))
    except Exception:
        logger.warning("on_episode_end failed for episode %d", ctx.index, exc_info=True)


async def close_env(env: AsyncEnv) -> None:
    """Close ``env`` under a shielded deadline; log and abandon it when that fails."""
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True) as scope:
        try:
            await env.close()
        except Exception:
            logger.warning("closing %r failed", env, exc_info=True)
    if scope.cancelled_caught:
        logger.warning("closing %r took over %ss; abandoned", env, CLOSE_TIMEOUT_S)


async def _new_env(state: LoopState, worker: int) -> AsyncEnv:
    if worker == 0 and state.spare_env is not None:
        # Made by worker 0's index to read the spaces: reuse it rather than make another.
        env, state.spare_env = state.spare_env, None
        return env
    while True:
        try:
            new_env = state.make_env(worker)
        except Exception as exc:
            state.factory_failures += 1
            logger.warning("worker %d: the env factory failed: %s", worker, describe(exc))
            if state.factory_failures >= MAX_FACTORY_FAILURES:
                raise RolloutError(
                    f"the env factory failed {state.factory_failures} times in a row; "
                    f"last error: {describe(exc)}"
                ) from exc
            await anyio.sleep(state.settings.retry_backoff_s)
            continue
        state.factory_failures = 0
        return new_env


def _fail(state: LoopState, exc: BaseException) -> None:
    if state.error is None:
        state.error = exc
    assert state.scope is not None
    state.scope.cancel()


async def _record_unplayed(state: LoopState, ep: _Episode) -> None:
    result = EpisodeResult(
        ep.index, ep.env_seed, ep.agent_seed, 0.0, 0, False, False, "cancelled", "cancelled"
    )
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
        await state.on_result(result)


async def worker(state: LoopState, index: int) -> None:
    """Take episodes from the shared queue until it is empty; own one env at a time.

    Every episode taken from the queue gets exactly one result, whatever happens.
    """
    settings = state.settings
    env: AsyncEnv | None = None
    try:
        for ep in state.episodes:
            # True once the episode's result (or its "cancelled" record) is on its way.
            accounted = False
            try:
                attempt = 0
                while True:
                    if env is None:
                        env = await _new_env(state, index)
                    accounted = True
                    result, failure = await run_episode_on(env, ep, state)
                    accounted = False
                    if failure is None:
                        break
                    if settings.on_env_error == "raise":
                        accounted = True
                        await state.on_result(result)
                        _fail(state, failure)
                        return
                    logger.warning("episode %d failed: %s", ep.index, result.error)
                    if result.outcome != "policy_error" and state.owns_envs:
                        # The env may be broken or stuck: replace it.
                        await close_env(env)
                        env = None
                    if settings.on_env_error == "retry" and attempt < settings.max_retries:
                        attempt += 1
                        delay = settings.retry_backoff_s * 2 ** (attempt - 1)
                        logger.info("retrying episode %d (re-run %d)", ep.index, attempt)
                        if state.sinks is not None:
                            await state.sinks.call("on_retry", result, attempt, delay)
                        await anyio.sleep(delay)
                        continue
                    break
                accounted = True
                await state.on_result(result)
            except anyio.get_cancelled_exc_class():
                if not accounted:
                    await _record_unplayed(state, ep)
                raise
    except Exception as exc:
        # Not an episode's failure (a sink, a callback, an exhausted env factory): stop the run.
        _fail(state, exc)
    finally:
        if env is not None and state.owns_envs:
            await close_env(env)


async def run_workers(state: LoopState, concurrency: int) -> None:
    """Run ``concurrency`` workers in one task group until every episode has a result.

    Raises:
        BaseException: The first episode failure under ``on_env_error="raise"``,
            unwrapped (never an ExceptionGroup).
    """
    try:
        async with anyio.create_task_group() as tg:
            state.scope = tg.cancel_scope
            tg.start_soon(state.yielder.tick)
            async with anyio.create_task_group() as workers:
                for k in range(concurrency):
                    workers.start_soon(worker, state, k)
            # Every episode has its result: stop the ticker.
            tg.cancel_scope.cancel()
    finally:
        if state.spare_env is not None and state.owns_envs:
            await close_env(state.spare_env)
            state.spare_env = None
    if state.error is not None:
        raise state.error
