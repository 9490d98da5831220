"""Reliability: deadlines, error policies, retries, closing envs, cancellation, factory failures.

On trio the tests run on ``MockClock(autojump_threshold=0)``: virtual time jumps
to the next deadline whenever every task waits, so deadline tests take
milliseconds and their timings are exact. On asyncio the same tests run in real
time with small deadlines.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import gymnasium as gym
import numpy as np
import pytest
import trio.lowlevel
import trio.testing
from gymnasium import spaces
from helpers import episode_key

from async_rollout import (
    AsyncEnvWrapper,
    EpisodeContext,
    RolloutError,
    RolloutResult,
    RolloutRunner,
    RolloutTimeout,
    env_factory,
)
from async_rollout.testing import (
    ChaosSchedule,
    ChaosWrapper,
    EnvTracker,
    FunctionPolicy,
    ScriptedEnv,
)

pytestmark = pytest.mark.anyio

#: Deadlines used with envs that hang: real seconds on asyncio, virtual on trio.
LIMIT = 0.05
#: Explicit seeds, so a test knows which episode a seed belongs to.
ENV_SEEDS = [1000 + i for i in range(8)]
AGENT_SEEDS = [2000 + i for i in range(8)]


@pytest.fixture(params=[pytest.param("trio", id="trio-mockclock"), "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    # A fresh clock per test: virtual time then starts at zero every time.
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return request.param


@pytest.fixture
def mock_clock(anyio_backend_name: str) -> bool:
    """True when virtual time makes timings exact (trio's MockClock)."""
    return anyio_backend_name == "trio"


def runner(n: int = 8, **kwargs: Any) -> RolloutRunner:
    kwargs.setdefault("concurrency", 3)
    return RolloutRunner(n, env_seeds=ENV_SEEDS[:n], agent_seeds=AGENT_SEEDS[:n], **kwargs)


def outcomes(result: RolloutResult | None) -> dict[str, int]:
    assert result is not None
    return {k: v for k, v in result.summary["outcomes"].items() if v}


class SimulatorCrashed(Exception):
    """A user's own exception type, which "raise" must surface as it is."""


class Planned(AsyncEnvWrapper):
    """Fails the episodes of given env seeds in given ways.

    ``plan`` maps an env seed to ``"reset_error"``, ``"step_error"`` (at step
    3) or ``"hang"`` (at step 3); ``resets`` counts resets per seed, across
    every env sharing it.
    """

    def __init__(self, env: ScriptedEnv, plan: Mapping[int, str], resets: Counter[int]) -> None:
        super().__init__(env)
        self.plan = plan
        self.resets = resets
        self._seed: int | None = None
        self._t = 0

    async def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        assert seed is not None
        self._seed, self._t = seed, 0
        self.resets[seed] += 1
        if self.plan.get(seed) == "reset_error":
            raise SimulatorCrashed(f"reset failed (seed={seed})")
        return await self.env.reset(seed=seed, options=options)

    async def step(self, action: Any) -> Any:
        self._t += 1
        if self._t == 3:
            fault = self.plan.get(self._seed)  # type: ignore[arg-type]
            if fault == "step_error":
                raise SimulatorCrashed(f"step failed (seed={self._seed})")
            if fault == "hang":
                await anyio.sleep_forever()
        return await self.env.step(action)


def planned(
    plan: Mapping[int, str], tracker: EnvTracker, resets: Counter[int] | None = None, **kw: Any
) -> Callable[[], Planned]:
    counts = resets if resets is not None else Counter()
    return lambda: Planned(ScriptedEnv(tracker=tracker, **kw), plan, counts)


class PickyPolicy:
    """Acts 0, but raises at step 2 of the episodes whose index is in ``bad``."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    async def compute_action(
        self,
        observation: Any,
        *,
        deterministic: bool,
        rng: np.random.Generator,
        episode: EpisodeContext,
    ) -> int:
        if episode.index in self.bad and episode.step == 2:
            raise LookupError(f"no action for episode {episode.index}")
        return 0


# --- deadlines ---------------------------------------------------------------------------------


def _hang_on_third_call() -> FunctionPolicy:
    async def act(observation: Any, rng: np.random.Generator) -> int:
        if policy.calls == 3:
            await anyio.sleep_forever()
        return 0

    policy = FunctionPolicy(act)
    return policy


DEADLINES = {
    # phase: (runner keyword, env keywords, policy, RolloutTimeout.step)
    "reset": ("reset_timeout", {"reset_latency": 1000.0}, None, None),
    # Steps are counted before the one that hung: hang_at_step=3 is 1-based.
    "step": ("step_timeout", {"hang_at_step": 3}, None, 2),
    "policy": ("policy_timeout", {}, _hang_on_third_call, 2),
    # No single call is slow: the steps add up past the episode's deadline.
    "episode": ("episode_timeout", {"step_latency": LIMIT / 4}, None, None),
}


@pytest.mark.parametrize("phase", list(DEADLINES))
async def test_deadline_fires_in_its_phase(phase: str, mock_clock: bool) -> None:
    """Each deadline ends its episode as "timeout", with a RolloutTimeout naming the phase."""
    keyword, env_kwargs, make_policy, step = DEADLINES[phase]
    tracker = EnvTracker()
    run = runner(1, concurrency=1, **{keyword: LIMIT})
    start = anyio.current_time()
    with pytest.raises(RolloutTimeout) as caught:
        await run.run_with(
            partial(ScriptedEnv, tracker=tracker, **env_kwargs),
            agent=make_policy() if make_policy else None,
        )
    error = caught.value
    assert (error.phase, error.limit, error.step) == (phase, LIMIT, step)
    assert (error.episode_index, error.env_seed, error.agent_seed) == (0, 1000, 2000)
    assert f"exceeded {phase}_timeout={LIMIT}s" in str(error)
    assert any("in episode 0 (env_seed=1000, agent_seed=2000)" in n for n in error.__notes__)
    if mock_clock:
        # It fired on the event, at the deadline exactly: no polling.
        assert anyio.current_time() - start == pytest.approx(LIMIT)
    (episode,) = run.result.episodes  # type: ignore[union-attr]
    assert episode.outcome == "timeout"
    assert episode.error is not None
    assert f"{phase}_timeout" in episode.error
    assert tracker.open == []


async def test_deadlines_that_are_met_do_not_fire() -> None:
    """Deadlines longer than the calls they guard leave every episode completed."""
    run = runner(
        4,
        reset_timeout=1.0,
        step_timeout=1.0,
        policy_timeout=1.0,
        episode_timeout=5.0,
    )
    result = await run.run_with(
        partial(ScriptedEnv, episode_length=5, step_latency=0.002, reset_latency=0.002)
    )
    assert outcomes(result) == {"completed": 4}


@pytest.mark.parametrize("phase", list(DEADLINES))
async def test_timeouts_are_skipped(phase: str) -> None:
    """Under "skip" a timeout is one more outcome; the other episodes go on."""
    keyword, env_kwargs, _, _ = DEADLINES[phase]
    tracker = EnvTracker()

    def make() -> ScriptedEnv:
        # Only episode 0 is slow: a hang is scripted for its seed; latency, which
        # cannot be, goes to the first env made (episode 0's at concurrency 1).
        if phase == "step":
            return ScriptedEnv(tracker=tracker, fail_seeds={ENV_SEEDS[0]}, **env_kwargs)
        return ScriptedEnv(tracker=tracker, **(env_kwargs if not tracker.created else {}))

    policy = _hang_on_third_call() if phase == "policy" else None
    result = await runner(4, concurrency=1, on_env_error="skip", **{keyword: LIMIT}).run_with(
        make, agent=policy
    )
    assert outcomes(result) == {"timeout": 1, "completed": 3}
    assert result.episodes[0].outcome == "timeout"
    assert tracker.open == []


# --- error policies ----------------------------------------------------------------------------

# Episode 1 fails at step 3, episode 3 on reset, episode 4 hangs at step 3 (a step
# timeout); the policy fails in episode 6.
PLAN = {ENV_SEEDS[1]: "step_error", ENV_SEEDS[3]: "reset_error", ENV_SEEDS[4]: "hang"}
BAD_POLICY_EPISODES = {6}


@pytest.mark.parametrize("on_env_error", ["skip", "retry"])
async def test_outcome_accounting(on_env_error: str) -> None:
    """Every episode gets exactly one result, and the summary counts each outcome."""
    tracker = EnvTracker()
    resets: Counter[int] = Counter()
    run = runner(8, on_env_error=on_env_error, max_retries=2, step_timeout=LIMIT, concurrency=3)
    result = await run.run_with(
        planned(PLAN, tracker, resets, episode_length=5), agent=PickyPolicy(BAD_POLICY_EPISODES)
    )
    assert [ep.index for ep in result.episodes] == list(range(8))
    assert outcomes(result) == {"completed": 4, "env_error": 2, "timeout": 1, "policy_error": 1}
    assert result.summary["n_failed"] == 4
    assert result.summary["n_episodes"] == 8
    assert [ep.outcome for ep in result.episodes] == [
        "completed", "env_error", "completed", "env_error",
        "timeout", "completed", "policy_error", "completed",
    ]  # fmt: skip
    assert result.episodes[1].error == f"SimulatorCrashed: step failed (seed={ENV_SEEDS[1]})"
    assert result.episodes[6].error == "LookupError: no action for episode 6"
    # Completed episodes count in the return statistics, failed ones do not.
    assert result.summary["mean_length"] == 5
    attempts = 3 if on_env_error == "retry" else 1
    failing = {ENV_SEEDS[i] for i in (1, 3, 4, 6)}
    assert {seed: resets[seed] for seed in failing} == dict.fromkeys(failing, attempts)
    assert all(resets[seed] == 1 for seed in ENV_SEEDS if seed not in failing)
    assert tracker.open == []
    # Env failures replace the env (when more work follows); a policy error does not.
    assert 3 < len(tracker.created) <= 3 + len(PLAN) * attempts


async def test_outcome_accounting_under_raise() -> None:
    """Under "raise" the run stops at the first failure; runner.result keeps what finished."""
    tracker = EnvTracker()
    run = runner(8, concurrency=1)
    with pytest.raises(SimulatorCrashed):
        await run.run_with(planned(PLAN, tracker, episode_length=5))
    assert outcomes(run.result) == {"completed": 1, "env_error": 1}
    assert [ep.outcome for ep in run.result.episodes] == ["completed", "env_error"]  # type: ignore[union-attr]
    assert run.result.summary["n_failed"] == 1  # type: ignore[union-attr]
    assert tracker.open == []


@pytest.mark.parametrize(
    ("plan", "policy", "error", "where"),
    [
        ({ENV_SEEDS[1]: "step_error"}, None, SimulatorCrashed, "at step 2"),
        ({ENV_SEEDS[1]: "reset_error"}, None, SimulatorCrashed, "at step 0"),
        ({}, PickyPolicy({1}), LookupError, "at step 2"),
    ],
    ids=["step", "reset", "policy"],
)
async def test_raise_surfaces_the_users_exception(
    plan: dict[int, str], policy: Any, error: type[Exception], where: str
) -> None:
    """Under "raise" the env's or policy's own exception surfaces, with a note; no group."""
    tracker = EnvTracker()
    with pytest.raises(error) as caught:
        await runner(4, concurrency=1).run_with(
            planned(plan, tracker, episode_length=5), agent=policy or PickyPolicy(set())
        )
    assert type(caught.value) is error
    assert caught.value.__notes__ == [
        f"in episode 1 (env_seed={ENV_SEEDS[1]}, agent_seed={AGENT_SEEDS[1]}) {where}"
    ]
    assert tracker.open == []


async def test_raise_with_simultaneous_failures_is_not_a_group() -> None:
    """Several episodes failing at once still surface one exception, the user's."""
    tracker = EnvTracker()
    plan = dict.fromkeys(ENV_SEEDS, "step_error")
    with pytest.raises(SimulatorCrashed) as caught:
        await runner(8, concurrency=8).run_with(planned(plan, tracker, episode_length=5))
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert tracker.open == []


# --- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        {"step_error_prob": 0.04, "reset_error_prob": 0.1},
        {"hang_prob": 0.04, "step_latency": {"dist": "lognormal", "median": 0.002, "sigma": 0.5}},
    ],
    ids=["errors", "hangs"],
)
async def test_retried_episode_equals_unfailed_run(faults: dict[str, Any]) -> None:
    """An episode that failed and was retried gives what a run without faults gives."""
    n = 16
    baseline = await RolloutRunner(n, concurrency=4, seed=7, record_trajectory=True).run_with(
        partial(ScriptedEnv, episode_length=10)
    )
    schedule = ChaosSchedule()
    tracker = EnvTracker()
    chaotic = RolloutRunner(
        n,
        concurrency=4,
        seed=7,
        record_trajectory=True,
        on_env_error="retry",
        max_retries=4,
        step_timeout=LIMIT,
    )
    result = await chaotic.run_with(
        partial(ScriptedEnv, episode_length=10, tracker=tracker),
        {ChaosWrapper: {"seed": 3, "schedule": schedule, **faults}},
    )
    retried = [ep.index for ep in result.episodes if schedule.attempts(ep.env_seed) > 1]  # type: ignore[arg-type]
    assert len(retried) >= 3, "the scenario must retry some episodes"
    assert outcomes(result) == {"completed": n}
    assert [episode_key(ep) for ep in result.episodes] == [
        episode_key(ep) for ep in baseline.episodes
    ]
    assert tracker.open == []


async def test_retry_without_a_shared_schedule_fails_alike() -> None:
    """Without a shared ChaosSchedule every retry meets the same fault, and the episode fails."""
    made: list[ChaosWrapper] = []
    tracker = EnvTracker()

    def make() -> ChaosWrapper:
        made.append(ChaosWrapper(ScriptedEnv(tracker=tracker), seed=3, step_error_prob=0.1))
        return made[-1]

    result = await runner(6, on_env_error="retry", max_retries=2).run_with(make)
    failed = [ep for ep in result.episodes if ep.outcome == "env_error"]
    assert failed, "the scenario must fail some episodes"
    for ep in failed:
        faults = [f for env in made for f in env.faults if f.env_seed == ep.env_seed]
        assert len(faults) == 3, "max_retries + 1 attempts"
        assert len(set(faults)) == 1, "each attempt is attempt 0 and fails at the same step"
    assert tracker.open == []


async def test_chaos_run_replays_at_any_concurrency() -> None:
    """A failure scenario gives the same outcomes whatever the concurrency."""

    async def scenario(concurrency: int) -> tuple[list[Any], list[Any]]:
        schedule = ChaosSchedule()
        faults = {
            "seed": 11,
            "schedule": schedule,
            "step_error_prob": 0.03,
            "hang_prob": 0.02,
            "reset_error_prob": 0.05,
            "step_latency": {"dist": "exponential", "mean": 0.002},
        }
        result = await RolloutRunner(
            12,
            concurrency=concurrency,
            seed=1,
            on_env_error="retry",
            max_retries=1,
            step_timeout=LIMIT,
            record_trajectory=True,
        ).run_with(partial(ScriptedEnv, episode_length=8), {ChaosWrapper: faults})
        keys = [(episode_key(ep), ep.error) for ep in result.episodes]
        return keys, sorted(schedule.faults, key=repr)

    first = await scenario(1)
    assert first == await scenario(6)
    assert first[1], "the scenario must inject faults"


# --- closing envs ------------------------------------------------------------------------------

SCENARIOS = {
    "clean": {},
    "step_errors": {"fail_at_step": 3, "fail_seeds": {ENV_SEEDS[2], ENV_SEEDS[5]}},
    "reset_errors": {"fail_on_reset": True, "fail_seeds": {ENV_SEEDS[2]}},
    "hangs": {"hang_at_step": 2, "fail_seeds": {ENV_SEEDS[1], ENV_SEEDS[6]}},
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("on_env_error", ["raise", "skip", "retry"])
async def test_every_env_closed(on_env_error: str, scenario: str) -> None:
    """Every env the runner made is closed, whatever happened and whatever the policy."""
    tracker = EnvTracker()
    run = runner(8, on_env_error=on_env_error, step_timeout=LIMIT, concurrency=3)
    make = partial(ScriptedEnv, tracker=tracker, episode_length=4, **SCENARIOS[scenario])
    if scenario == "clean" or on_env_error != "raise":
        result = await run.run_with(make)
        assert result.summary["n_episodes"] == 8
    else:
        with pytest.raises((RuntimeError, RolloutTimeout)):
            await run.run_with(make)
    assert tracker.open == []
    assert len(tracker.closed) == len(tracker.created)
    if scenario != "clean" and on_env_error == "retry":
        assert len(tracker.created) > 3, "a retry runs on a fresh env"


async def test_slow_close_is_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """An env whose close overruns the close deadline does not hold up the run."""
    import async_rollout._loop

    monkeypatch.setattr(async_rollout._loop, "CLOSE_TIMEOUT_S", LIMIT)
    tracker = EnvTracker()
    run = runner(4, on_env_error="skip", concurrency=2)
    wrappers = {ChaosWrapper: {"close_latency": 1000.0}}
    with anyio.fail_after(30):
        result = await run.run_with(
            partial(ScriptedEnv, tracker=tracker, fail_at_step=2, fail_seeds={ENV_SEEDS[0]}),
            wrappers,
        )
    assert outcomes(result) == {"completed": 3, "env_error": 1}
    # The chaos close was cut, and the inner env still got its close.
    assert tracker.open == []


# --- cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("on_env_error", ["raise", "skip", "retry"])
async def test_cancellation_closes_envs_and_records_cancelled(
    on_env_error: str, mock_clock: bool
) -> None:
    """A cancel scope around run_with ends it promptly; in-flight episodes are "cancelled"."""
    tracker = EnvTracker()
    run = runner(8, on_env_error=on_env_error, concurrency=4)
    # Each episode takes 20 x 10 ms: the first four end at 0.2 s, the next four are in flight.
    start = anyio.current_time()
    with anyio.move_on_after(0.3) as scope:
        await run.run_with(
            partial(ScriptedEnv, tracker=tracker, episode_length=20, step_latency=0.01)
        )
    assert scope.cancelled_caught
    assert tracker.open == []
    counts = outcomes(run.result)
    assert counts.get("cancelled", 0) >= 1
    assert set(counts) <= {"completed", "cancelled"}
    for ep in run.result.episodes:  # type: ignore[union-attr]
        if ep.outcome == "cancelled":
            assert ep.error == "cancelled"
            assert ep.length < 20
    if mock_clock:
        assert counts == {"completed": 4, "cancelled": 4}
        assert anyio.current_time() - start == pytest.approx(0.3)


async def test_cancelling_a_hang_without_deadline() -> None:
    """With no deadline a hang waits for the caller, whose cancellation ends it cleanly."""
    tracker = EnvTracker()
    run = runner(2, concurrency=2)
    with anyio.move_on_after(LIMIT) as scope:
        await run.run_with(partial(ScriptedEnv, tracker=tracker, hang_at_step=2))
    assert scope.cancelled_caught
    assert outcomes(run.result) == {"cancelled": 2}
    assert tracker.open == []


class _CancelOnLog(logging.Handler):
    """Cancels a scope when the loop logs a given message: an exact point in the run."""

    def __init__(self, scope: anyio.CancelScope, prefix: str) -> None:
        super().__init__()
        self.scope = scope
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.scope.cancel()


@pytest.fixture
def cancel_on_log() -> Iterator[Callable[[anyio.CancelScope, str], None]]:
    logger = logging.getLogger("async_rollout")
    handlers: list[logging.Handler] = []

    def install(scope: anyio.CancelScope, prefix: str) -> None:
        handler = _CancelOnLog(scope, prefix)
        handlers.append(handler)
        logger.addHandler(handler)

    yield install
    for handler in handlers:
        logger.removeHandler(handler)


async def test_cancelled_during_retry_backoff_is_recorded(
    cancel_on_log: Callable[[anyio.CancelScope, str], None],
) -> None:
    """An episode waiting to be retried is in flight: cancelling it records "cancelled"."""
    tracker = EnvTracker()
    run = runner(1, concurrency=1, on_env_error="retry")
    with anyio.CancelScope() as scope:
        # The loop logs the failure just before it closes the env and sleeps the backoff.
        cancel_on_log(scope, "episode 0 failed")
        await run.run_with(partial(ScriptedEnv, tracker=tracker, fail_at_step=2))
    assert scope.cancelled_caught
    assert tracker.open == []
    assert outcomes(run.result) == {"cancelled": 1}


# --- the env factory ---------------------------------------------------------------------------


async def test_five_factory_failures_in_a_row_stop_the_run() -> None:
    """A factory that keeps failing stops the run with a RolloutError, not a hang or a loop."""
    tracker = EnvTracker()
    calls = 0

    def make() -> ScriptedEnv:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionRefusedError(f"simulator pool exhausted (call {calls})")
        return ScriptedEnv(tracker=tracker, step_latency=0.01)

    run = runner(8, concurrency=2, on_env_error="skip")
    with pytest.raises(RolloutError, match="the env factory failed 5 times in a row") as caught:
        await run.run_with(make)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert "simulator pool exhausted (call 6)" in str(caught.value)
    assert calls == 6
    assert tracker.open == []
    assert run.result is not None


async def test_factory_failures_not_in_a_row_are_survived() -> None:
    """Four failures, then a success, resets the count: the run goes on."""
    tracker = EnvTracker()
    calls = 0

    def make() -> ScriptedEnv:
        nonlocal calls
        calls += 1
        # The first env is made while setting up; after that, every fifth call succeeds.
        if calls > 1 and (calls - 1) % 5 != 0:
            raise ConnectionRefusedError("simulator busy")
        return ScriptedEnv(tracker=tracker, fail_at_step=2)

    # Every episode fails and needs a fresh env, made on the fifth try.
    result = await runner(3, concurrency=1, on_env_error="skip").run_with(make)
    assert outcomes(result) == {"env_error": 3}
    assert tracker.open == []


async def test_first_env_is_made_before_the_loop_and_its_failure_raises_at_once() -> None:
    """The env made to read the spaces fails before any episode: its own error, no retries."""
    calls = 0

    def make() -> ScriptedEnv:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("simulator down")

    run = runner(4, on_env_error="retry")
    with pytest.raises(ConnectionRefusedError, match="simulator down"):
        await run.run_with(make)
    assert calls == 1


# --- what a deadline can interrupt -------------------------------------------------------------


def block(seconds: float) -> None:
    """Hold the event loop for ``seconds`` without awaiting (virtual seconds on a MockClock)."""
    try:
        clock = trio.lowlevel.current_clock()
    except RuntimeError:  # not running on trio
        time.sleep(seconds)
        return
    if isinstance(clock, trio.testing.MockClock):
        clock.jump(seconds)
    else:
        time.sleep(seconds)


class BlocksThenAwaits(ScriptedEnv):
    """An async env whose step 2 blocks past the deadline, then awaits."""

    async def step(self, action: Any) -> Any:
        if self._t == 1:
            block(2 * LIMIT)
            await anyio.lowlevel.checkpoint()
        return await super().step(action)


class BlockingGymEnv(gym.Env[np.ndarray, int]):
    """A gymnasium env whose step 2 blocks for ``2 * LIMIT`` without awaiting (run inline)."""

    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action: int) -> Any:
        self.t += 1
        if self.t == 2:
            block(2 * LIMIT)
        return np.zeros(4, np.float32), 1.0, self.t >= 4, False, {}


async def test_blocked_async_env_times_out_at_its_next_await(mock_clock: bool) -> None:
    """A call that blocks cannot be interrupted; its deadline fires at the call's next await."""
    tracker = EnvTracker()
    run = runner(1, concurrency=1, on_env_error="skip", step_timeout=LIMIT)
    start = anyio.current_time()
    result = await run.run_with(partial(BlocksThenAwaits, tracker=tracker))
    (episode,) = result.episodes
    assert episode.outcome == "timeout"
    assert episode.length == 1
    assert "step 1 exceeded step_timeout" in (episode.error or "")
    if mock_clock:
        # Not at the deadline (the loop was blocked) but as soon as the call awaited.
        assert anyio.current_time() - start == pytest.approx(2 * LIMIT)
    assert tracker.open == []


async def test_inline_call_blocking_past_its_deadline_is_a_timeout() -> None:
    run = runner(1, concurrency=1, on_env_error="skip", step_timeout=LIMIT)
    result = await run.run_with(BlockingGymEnv)
    assert [ep.outcome for ep in result.episodes] == ["timeout"]


class StuckGymEnv(gym.Env[np.ndarray, int]):
    """A gymnasium env whose step 2 blocks its thread until ``release`` is set."""

    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, release: threading.Event, made: list[StuckGymEnv]) -> None:
        self.release = release
        self.returned = threading.Event()
        self.closed = False
        self.t = 0
        made.append(self)

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action: int) -> Any:
        self.t += 1
        if self.t == 2:
            self.release.wait()
            self.returned.set()
        return np.zeros(4, np.float32), 1.0, self.t >= 4, False, {}

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])  # real clocks, see below
async def test_thread_offload_deadline_abandons_the_call(
    request: pytest.FixtureRequest, anyio_backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread cannot be killed: at the deadline its call is abandoned and its env replaced.

    Real clocks: on a MockClock with autojump the loop counts as idle while a
    thread works, so virtual time would jump to the deadline during any call.
    """
    import async_rollout._loop

    limit = 0.2
    monkeypatch.setattr(async_rollout._loop, "CLOSE_TIMEOUT_S", 1.0)
    release = threading.Event()
    made: list[StuckGymEnv] = []
    run = runner(2, concurrency=1, on_env_error="skip", step_timeout=limit)
    start = anyio.current_time()
    try:
        result = await run.run_with(
            env_factory(partial(StuckGymEnv, release, made), offload="thread")
        )
        elapsed = anyio.current_time() - start
    finally:
        release.set()
        # Let the abandoned threads finish their calls before the event loop closes.
        stuck = [env for env in made if env.t == 2]
        await anyio.to_thread.run_sync(lambda: all(env.returned.wait(5) for env in stuck))
    assert outcomes(result) == {"timeout": 2}
    assert [env.t for env in made] == [2, 2], "each env stuck in step 2; a fresh one for episode 1"
    assert all(env.closed for env in made)
    # Two deadlines and little else: no close waited for a stuck thread.
    assert elapsed < 2 * limit + 0.5


# --- the docs ----------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"


def doc_example(name: str) -> str:
    """The code block after ``<!-- example: name ... -->`` in docs/RELIABILITY.md."""
    text = DOCS.read_text()
    start = text.index(f"<!-- example: {name} ")
    block = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no python block after the {name!r} marker"
    return block.group(1)


async def test_chaos_example_in_the_docs_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The ChaosWrapper example of docs/RELIABILITY.md runs as written (it cannot rot)."""
    namespace: dict[str, Any] = {"__name__": "reliability_doc_example"}
    exec(compile(doc_example("chaos"), str(DOCS), "exec"), namespace)
    await namespace["main"]()
    printed = capsys.readouterr().out
    assert "'completed':" in printed
    assert "step_hang" in printed


# --- known gaps (bugs in the loop) -------------------------------------------------------------


class _HookFails:
    """A policy whose on_episode_start hook raises in episode 1."""

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> int:
        return 0

    def on_episode_start(self, ctx: EpisodeContext) -> None:
        if ctx.index == 1:
            raise LookupError("hook failed")


async def test_policy_hook_failure_under_raise_is_the_users_exception() -> None:
    tracker = EnvTracker()
    run = runner(4, concurrency=1)
    with pytest.raises(LookupError):
        await run.run_with(partial(ScriptedEnv, tracker=tracker), agent=_HookFails())
    assert outcomes(run.result) == {"completed": 1, "policy_error": 1}


async def test_policy_hook_failure_under_skip_is_a_policy_error() -> None:
    tracker = EnvTracker()
    result = await runner(4, concurrency=1, on_env_error="skip").run_with(
        partial(ScriptedEnv, tracker=tracker), agent=_HookFails()
    )
    assert outcomes(result) == {"completed": 3, "policy_error": 1}


class _NoneReward(AsyncEnvWrapper):
    """Returns None for a reward in the episode of the second seed."""

    seed: int | None = None

    async def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        self.seed = seed
        return await self.env.reset(seed=seed, options=options)

    async def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = await self.env.step(action)
        if self.seed == ENV_SEEDS[1]:
            reward = None
        return obs, reward, terminated, truncated, info


async def test_non_numeric_reward_is_an_env_error() -> None:
    result = await runner(4, concurrency=1, on_env_error="skip").run_with(
        lambda: _NoneReward(ScriptedEnv())
    )
    assert outcomes(result) == {"completed": 3, "env_error": 1}
