"""The testing toolkit: check_async_env, FunctionPolicy and ChaosWrapper."""

from __future__ import annotations

import inspect
import re
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import gymnasium as gym
import numpy as np
import pytest
import trio.testing
from gymnasium import spaces
from helpers import episode_key
from omegaconf import OmegaConf

import async_rollout.testing
from async_rollout import AsyncEnvWrapper, AsyncPolicy, RolloutRunner, env_factory, wrap_env
from async_rollout.testing import (
    ChaosSchedule,
    ChaosWrapper,
    EnvTracker,
    FunctionPolicy,
    ScriptedEnv,
    check_async_env,
)

pytestmark = pytest.mark.anyio

CHAOS_YAML = Path(__file__).resolve().parents[1] / "conf" / "wrappers" / "chaos.yaml"


@pytest.fixture(params=[pytest.param("trio", id="trio-mockclock"), "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    # A fresh clock per test: virtual time then starts at zero every time.
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return request.param


def run_on_mock_clock(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on trio with a virtual clock that jumps over every sleep."""
    return anyio.run(
        fn, backend="trio", backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)}
    )


def test_public_names() -> None:
    """The contract's names are importable from async_rollout.testing."""
    for name in ("ScriptedEnv", "ChaosWrapper", "check_async_env", "FunctionPolicy"):
        assert name in async_rollout.testing.__all__


# --- check_async_env: envs that conform --------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(ScriptedEnv, id="box"),
        pytest.param(partial(ScriptedEnv, dict_obs=True), id="dict"),
        # Shorter episodes than the check's steps: the unseeded reset in between is checked too.
        pytest.param(partial(ScriptedEnv, episode_length=3, step_latency=0.01), id="short"),
    ],
)
async def test_check_passes_scripted_env(make: Callable[[], ScriptedEnv]) -> None:
    env = make()
    await check_async_env(env)
    assert env.closed


@pytest.mark.parametrize("n_steps", [20, 200])
async def test_check_passes_wrapped_cartpole(n_steps: int) -> None:
    """CartPole adapted inline conforms, across several episodes."""
    await check_async_env(wrap_env(gym.make("CartPole-v1")), seed=3, n_steps=n_steps)


async def test_check_passes_chaos_latency() -> None:
    """Chaos latency changes timing only: the env stays deterministic."""
    env = ChaosWrapper(ScriptedEnv(), seed=1, step_latency={"dist": "exponential", "mean": 0.01})
    await check_async_env(env, n_steps=30)


async def test_check_accepts_numpy_scalars() -> None:
    """numpy rewards and flags are as good as Python's."""

    class NumpyTyped(AsyncEnvWrapper):
        async def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = await self.env.step(action)
            return obs, np.float32(reward), np.bool_(terminated), np.bool_(truncated), info

    await check_async_env(NumpyTyped(ScriptedEnv(episode_length=4)))


async def test_check_argument_validation() -> None:
    with pytest.raises(ValueError, match="n_steps must be an int >= 1; got 0"):
        await check_async_env(ScriptedEnv(), n_steps=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0; got -1"):
        await check_async_env(ScriptedEnv(), seed=-1)


# --- check_async_env: envs that do not ---------------------------------------------------------


class _Broken(AsyncEnvWrapper):
    """A ScriptedEnv with one thing wrong, chosen by ``how``."""

    def __init__(self, how: str, **kwargs: Any) -> None:
        super().__init__(ScriptedEnv(**kwargs))
        self.how = how
        self.closes = 0
        self._noise = np.random.default_rng()

    @property
    def observation_space(self) -> Any:
        if self.how == "not_a_space":
            return "Box(4)"
        if self.how == "bounded":
            return spaces.Box(-0.1, 0.1, shape=(4,), dtype=np.float32)
        return self.env.observation_space

    async def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        if self.how == "unseeded_reset":
            seed = None
        obs, info = await self.env.reset(seed=seed, options=options)
        if self.how == "reset_obs_only":
            return obs
        if self.how == "reset_info_list":
            return obs, [info]
        return obs, info

    async def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = await self.env.step(action)
        how = self.how
        if how == "four_tuple":
            return obs, reward, terminated or truncated, info
        if how == "wrong_shape":
            obs = np.zeros(5, dtype=np.float32)
        if how == "wrong_dtype":
            obs = obs.astype(np.float64)
        if how == "noisy_step":
            obs = obs + self._noise.standard_normal(obs.shape).astype(np.float32)
        if how == "info_list":
            info = list(info.items())
        if how == "reward_none":
            reward = None
        if how == "reward_nan":
            reward = float("nan")
        if how == "terminated_int":
            terminated = int(terminated)
        if how == "step_raises":
            raise ConnectionResetError("simulator went away")
        return obs, reward, terminated, truncated, info

    async def close(self) -> None:
        self.closes += 1
        if self.how == "close_twice_fails" and self.closes > 1:
            raise RuntimeError("already closed")
        await self.env.close()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("four_tuple", r"expected step\(\) to return a 5-tuple .*got a tuple of length 4"),
        ("wrong_shape", r"observation from step 1 to be in observation_space .*shape \(5,\)"),
        ("wrong_dtype", r"dtype float64 does not cast safely to float32"),
        ("bounded", r"reset\(seed=0\) to be in observation_space .*outside the bounds"),
        ("unseeded_reset", r"reset\(seed=0\) to give the same first observation every time"),
        ("noisy_step", r"same trajectory .* the observation at step 1 differs"),
        ("info_list", r"expected the info at step 1 to be a dict; got list"),
        ("reset_info_list", r"expected the info from reset\(seed=0\) to be a dict; got list"),
        ("reset_obs_only", r"reset\(seed=0\) to return a tuple \(observation, info\); got ndarray"),
        ("reward_none", r"reward at step 1 to be a real number .*got NoneType"),
        ("reward_nan", r"reward at step 1 to be a real number .*not NaN"),
        ("terminated_int", r"expected terminated at step 1 to be a bool; got int"),
        ("step_raises", r"it raised ConnectionResetError: simulator went away"),
        ("close_twice_fails", r"a second close\(\) .*idempotent.*raised RuntimeError"),
        ("not_a_space", r"observation_space to be a gymnasium.spaces.Space; got str"),
    ],
)
async def test_check_rejects_broken_env(how: str, message: str) -> None:
    """Each broken env fails with a message saying what was expected and what came."""
    tracker = EnvTracker()
    env = _Broken(how, tracker=tracker)
    with pytest.raises(AssertionError, match=message):
        await check_async_env(env)
    assert tracker.open == [], "a failed check closes the env"


async def test_check_chains_the_env_exception() -> None:
    with pytest.raises(AssertionError) as caught:
        await check_async_env(_Broken("step_raises"))
    assert isinstance(caught.value.__cause__, ConnectionResetError)


class _SyncStep:
    """Async reset and close, but a sync step: half-adapted."""

    observation_space = spaces.Box(-1, 1, shape=(2,))
    action_space = spaces.Discrete(2)

    async def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: Any) -> Any:
        return np.zeros(2, dtype=np.float32), 0.0, False, False, {}

    async def close(self) -> None:
        pass


async def test_check_rejects_sync_step() -> None:
    with pytest.raises(AssertionError, match=r"_SyncStep.step to be a coroutine function"):
        await check_async_env(_SyncStep())


async def test_check_rejects_unadapted_gymnasium_env() -> None:
    """A gymnasium env is named as such, with the way out."""
    env = gym.make("CartPole-v1")
    with pytest.raises(AssertionError, match=r"coroutine function .*wrap_env\(env\)"):
        await check_async_env(env)
    env.close()


# --- FunctionPolicy ----------------------------------------------------------------------------


async def test_function_policy_sync_and_async() -> None:
    async def async_fn(obs: Any, rng: np.random.Generator) -> int:
        await anyio.lowlevel.checkpoint()
        return 1

    class AsyncCallable:
        async def __call__(self, obs: Any, rng: np.random.Generator) -> int:
            return 2

    rng = np.random.default_rng(0)
    for fn, expected in ((lambda obs, rng: 0, 0), (async_fn, 1), (AsyncCallable(), 2)):
        policy = FunctionPolicy(fn)
        assert isinstance(policy, AsyncPolicy)
        assert await policy.compute_action(None, deterministic=False, rng=rng) == expected
        assert await policy.compute_action(None, deterministic=True, rng=rng) == expected
        assert policy.calls == 2


def test_function_policy_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="needs a callable"):
        FunctionPolicy(42)  # type: ignore[arg-type]


async def test_function_policy_in_a_rollout() -> None:
    """It is called once per step, and an rng-only policy replays at any concurrency."""
    results = []
    for concurrency in (1, 6):
        policy = FunctionPolicy(lambda obs, rng: int(rng.integers(2)))
        runner = RolloutRunner(12, concurrency=concurrency, record_trajectory=True, seed=5)
        result = await runner.run_with(partial(ScriptedEnv, episode_length=6), agent=policy)
        assert policy.calls == result.summary["total_steps"] == 72
        results.append([episode_key(ep) for ep in result.episodes])
    assert results[0] == results[1]


# --- ChaosWrapper ------------------------------------------------------------------------------


async def _drive(env: ChaosWrapper, env_seed: int, n_steps: int = 30) -> list[str]:
    """Reset with ``env_seed`` and step on, noting what happened at each call."""
    seen = []
    try:
        await env.reset(seed=env_seed)
        seen.append("reset")
    except RuntimeError:
        return ["reset_error"]
    for _ in range(n_steps):
        try:
            await env.step(0)
            seen.append("ok")
        except RuntimeError:
            seen.append("error")
    return seen


def _errors(**kwargs: Any) -> ChaosWrapper:
    return ChaosWrapper(
        ScriptedEnv(episode_length=1000), step_error_prob=0.2, reset_error_prob=0.1, **kwargs
    )


async def test_chaos_replays_per_env_seed() -> None:
    """An episode's faults depend on the chaos seed and its env seed, not on the env's past."""
    fresh = await _drive(_errors(seed=4), 11)
    used = _errors(seed=4)
    await _drive(used, 12)
    await _drive(used, 13)
    assert await _drive(used, 11) == fresh
    assert "error" in fresh
    assert await _drive(_errors(seed=5), 11) != fresh


async def test_chaos_without_schedule_retry_fails_alike() -> None:
    """Without a shared schedule a retry on a fresh wrapper sees the same faults."""
    first, retry = _errors(seed=4), _errors(seed=4)
    assert await _drive(first, 11) == await _drive(retry, 11)
    assert first.attempt == retry.attempt == 0


async def test_chaos_shared_schedule_gives_retries_fresh_faults() -> None:
    """With a shared schedule the n-th reset with a seed is attempt n, with its own faults."""
    schedule = ChaosSchedule()
    attempts = [_errors(seed=4, schedule=schedule) for _ in range(3)]
    seen = [await _drive(env, 11) for env in attempts]
    assert [env.attempt for env in attempts] == [0, 1, 2]
    assert schedule.attempts(11) == 3
    assert seen[0] != seen[1]
    # The attempts replay too: a fresh schedule gives the same three in the same order.
    again = ChaosSchedule()
    assert [await _drive(_errors(seed=4, schedule=again), 11) for _ in range(3)] == seen
    assert again.faults == schedule.faults
    schedule.clear()
    assert schedule.attempts(11) == 0
    assert schedule.faults == []


async def test_chaos_error_positions_ignore_other_settings() -> None:
    """Adding latency or hangs elsewhere does not move the injected errors."""
    plain = await _drive(_errors(seed=2), 9)
    slow = _errors(seed=2, step_latency={"dist": "uniform", "low": 0.0, "high": 0.01})
    assert await _drive(slow, 9) == plain


async def test_chaos_fault_log() -> None:
    env = _errors(seed=4)
    seen = await _drive(env, 11)
    steps = [i for i, what in enumerate(seen) if what == "error"]
    assert [(f.kind, f.env_seed, f.attempt, f.step) for f in env.faults] == [
        ("step_error", 11, 0, step) for step in steps
    ]
    assert env.schedule.counts()["step_error"] == len(steps)


async def test_chaos_exception_type_and_message() -> None:
    for exception in (ConnectionError, "ConnectionError", "builtins.ConnectionError"):
        env = ChaosWrapper(ScriptedEnv(), seed=3, step_error_prob=1.0, exception=exception)
        await env.reset(seed=8)
        with pytest.raises(ConnectionError, match=r"chaos: injected step 1 error .*env_seed=8"):
            await env.step(0)


async def test_chaos_reset_faults() -> None:
    env = ChaosWrapper(ScriptedEnv(), reset_error_prob=1.0)
    with pytest.raises(RuntimeError, match="injected reset error"):
        await env.reset(seed=1)
    assert env.unwrapped.resets == 0, "the wrapped env is not reset"
    hanging = ChaosWrapper(ScriptedEnv(), reset_hang_prob=1.0)
    with anyio.move_on_after(0.05) as scope:
        await hanging.reset(seed=1)
    assert scope.cancelled_caught
    assert [f.kind for f in hanging.faults] == ["reset_hang"]


async def test_chaos_step_hang_waits_for_a_deadline() -> None:
    env = ChaosWrapper(ScriptedEnv(), hang_prob=1.0)
    await env.reset(seed=1)
    with anyio.move_on_after(0.05) as scope:
        await env.step(0)
    assert scope.cancelled_caught
    assert [(f.kind, f.step) for f in env.faults] == [("step_hang", 1)]


async def test_chaos_slow_close(anyio_backend_name: str) -> None:
    """A slow close delays, then closes the wrapped env, even when interrupted; once only."""
    tracker = EnvTracker()
    env = ChaosWrapper(ScriptedEnv(tracker=tracker), close_latency=0.05)
    start = anyio.current_time()
    await env.close()
    if anyio_backend_name == "trio":
        assert anyio.current_time() - start == pytest.approx(0.05)
    await env.close()
    assert tracker.open == []
    assert len(tracker.closed) == 1
    assert [f.kind for f in env.faults] == ["slow_close"]

    stuck = ChaosWrapper(ScriptedEnv(tracker=tracker), close_latency=100.0)
    with anyio.move_on_after(0.05):
        await stuck.close()
    assert tracker.open == [], "an interrupted close still closes the wrapped env"


async def test_chaos_forwards_the_env() -> None:
    inner = ScriptedEnv(dict_obs=True)
    env = ChaosWrapper(inner)
    assert isinstance(env, AsyncEnvWrapper)
    assert env.observation_space is inner.observation_space
    assert env.action_space is inner.action_space
    assert env.episode_length == inner.episode_length
    assert env.unwrapped is inner
    assert env.render() == inner.render()


def _step_durations(latency: Any, n: int = 400) -> list[float]:
    async def main() -> list[float]:
        env = ChaosWrapper(ScriptedEnv(episode_length=n + 1), seed=1, step_latency=latency)
        await env.reset(seed=0)
        durations = []
        for _ in range(n):
            start = anyio.current_time()
            await env.step(0)
            durations.append(anyio.current_time() - start)
        return durations

    return run_on_mock_clock(main)  # type: ignore[no-any-return]


def test_chaos_latency_distributions() -> None:
    """Each latency form delays steps as it says (measured on a virtual clock)."""
    assert _step_durations(0.02, 10) == pytest.approx([0.02] * 10)
    assert _step_durations({"dist": "fixed", "value": 0.03}, 10) == pytest.approx([0.03] * 10)
    assert _step_durations(None, 10) == [0.0] * 10

    lognormal = _step_durations({"dist": "lognormal", "median": 0.01, "sigma": 0.5})
    assert statistics.median(lognormal) == pytest.approx(0.01, rel=0.15)
    capped = _step_durations({"dist": "lognormal", "median": 0.01, "sigma": 2.0, "max": 0.02})
    assert max(capped) == pytest.approx(0.02)

    uniform = _step_durations({"dist": "uniform", "low": 0.01, "high": 0.03})
    assert 0.01 <= min(uniform)
    assert max(uniform) <= 0.03 + 1e-9
    assert statistics.fmean(uniform) == pytest.approx(0.02, rel=0.1)

    exponential = _step_durations({"dist": "exponential", "mean": 0.01})
    assert statistics.fmean(exponential) == pytest.approx(0.01, rel=0.15)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seed": -1}, ValueError, "seed must be an int >= 0; got -1"),
        ({"seed": 1.5}, TypeError, "seed must be an int >= 0; got float 1.5"),
        ({"hang_prob": 1.5}, ValueError, r"hang_prob must be in \[0, 1\]; got 1.5"),
        ({"step_error_prob": "often"}, TypeError, "step_error_prob must be a probability"),
        ({"step_latency": -0.1}, ValueError, "step_latency must be a finite number >= 0"),
        ({"step_latency": "slow"}, TypeError, "step_latency must be seconds, None, or a mapping"),
        ({"reset_latency": {"dist": "gamma"}}, ValueError, r"reset_latency\['dist'\] must be one"),
        (
            {"step_latency": {"dist": "lognormal", "median": 0.01}},
            ValueError,
            "step_latency: a 'lognormal' latency takes median, sigma, max .*missing sigma",
        ),
        (
            {"step_latency": {"dist": "uniform", "low": 0, "high": 1, "mean": 2}},
            ValueError,
            "unknown mean",
        ),
        (
            {"step_latency": {"dist": "uniform", "low": 2, "high": 1}},
            ValueError,
            r"'high' \(1.0\) must be >= 'low' \(2.0\)",
        ),
        ({"close_latency": {"dist": "lognormal", "median": 0, "sigma": 1}}, ValueError, "median"),
        ({"exception": KeyboardInterrupt}, TypeError, "exception must be an Exception subclass"),
        ({"exception": "nowhere.Error"}, ValueError, "exception: cannot import 'nowhere.Error'"),
        ({"schedule": 3}, TypeError, "schedule must be a ChaosSchedule, a name or None"),
    ],
)
def test_chaos_validation(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ChaosWrapper(ScriptedEnv(), **kwargs)


def test_chaos_named_schedules_are_shared() -> None:
    name = "test_testing.named"
    a = ChaosWrapper(ScriptedEnv(), schedule=name)
    b = ChaosWrapper(ScriptedEnv(), schedule=name)
    assert a.schedule is b.schedule is ChaosSchedule.named(name)


def test_chaos_yaml_comments_every_key() -> None:
    """conf/wrappers/chaos.yaml sets every ChaosWrapper keyword, each under a comment."""
    lines = CHAOS_YAML.read_text().splitlines()
    keys = []
    for i, line in enumerate(lines):
        match = re.match(r"^\s+(\w+):", line)
        if match:
            keys.append(match.group(1))
            assert lines[i - 1].lstrip().startswith("#"), f"{match.group(1)} has no comment"
    params = inspect.signature(ChaosWrapper).parameters
    assert sorted(keys) == sorted(name for name in params if name != "env")


async def test_chaos_yaml_builds_wrappers() -> None:
    """The config's wrapper list goes through env_factory and a rollout as it is."""
    wrappers = OmegaConf.load(CHAOS_YAML)
    ChaosSchedule.named("chaos").clear()
    try:
        make = env_factory(partial(ScriptedEnv, episode_length=5), wrappers=wrappers)
        env = make()
        assert isinstance(env, ChaosWrapper)
        assert env.schedule is ChaosSchedule.named("chaos")
        await env.close()
        # A small rollout: faults may be injected, and "skip" keeps the run going.
        runner = RolloutRunner(8, concurrency=4, on_env_error="skip")
        result = await runner.run_with(partial(ScriptedEnv, episode_length=5), wrappers)
        assert result.summary["n_episodes"] == 8
    finally:
        ChaosSchedule.named("chaos").clear()


async def test_async_env_class_is_an_env_spec() -> None:
    """A class is a callable returning an env: run_with(ScriptedEnv) works."""
    result = await RolloutRunner(2, concurrency=2).run_with(ScriptedEnv)
    assert result.summary["outcomes"]["completed"] == 2
