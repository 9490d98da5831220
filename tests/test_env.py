from __future__ import annotations

import threading
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from async_rollout import (
    AsyncEnv,
    AsyncEnvWrapper,
    ConfigError,
    RolloutRunner,
    env_factory,
    wrap_env,
)
from async_rollout.testing import ScriptedEnv

pytestmark = pytest.mark.anyio


class Recorder(AsyncEnvWrapper):
    """An async wrapper that notes what it wraps and scales rewards."""

    def __init__(self, env: AsyncEnv, scale: float = 1.0) -> None:
        super().__init__(env)
        self.scale = scale

    async def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = await self.env.step(action)
        return obs, float(reward) * self.scale, terminated, truncated, info


class DoubleReward(gym.RewardWrapper[Any, Any]):
    def reward(self, reward: Any) -> Any:
        return 2 * reward


async def test_wrap_env_inline_and_thread() -> None:
    for offload in ("inline", "thread"):
        env = wrap_env(gym.make("CartPole-v1"), offload=offload)  # type: ignore[arg-type]
        assert isinstance(env, AsyncEnv)
        obs, _ = await env.reset(seed=1)
        assert env.observation_space.contains(obs)
        obs, reward, *_ = await env.step(0)
        assert reward == 1.0
        await env.close()
        await env.close()  # closing twice is harmless


def test_wrap_env_returns_async_env_unchanged() -> None:
    env = ScriptedEnv()
    assert wrap_env(env) is env


def test_wrap_env_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match=r"expected a gymnasium.Env or an AsyncEnv.*got int"):
        wrap_env(3)
    with pytest.raises(ValueError, match="offload must be one of"):
        wrap_env(gym.make("CartPole-v1"), offload="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use env_factory"):
        wrap_env(gym.make("CartPole-v1"), offload="process")


class BlockingEnv(gym.Env[np.ndarray, int]):
    """Blocks in step until every env of the run is inside step at the same time."""

    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> Any:
        self.barrier.wait()
        return np.zeros(1, np.float32), 1.0, True, False, {}


async def test_thread_offload_is_not_capped_at_anyio_default_of_40() -> None:
    """64 thread-offloaded envs all run their step at once (the limiter follows concurrency)."""
    barrier = threading.Barrier(64, timeout=20)
    factory = env_factory(lambda: BlockingEnv(barrier), offload="thread")
    result = await RolloutRunner(64, concurrency=64).run_with(factory)
    assert result.summary["outcomes"]["completed"] == 64
    assert not barrier.broken


async def test_env_factory_from_gym_id_and_callable() -> None:
    for spec in ("CartPole-v1", lambda: gym.make("CartPole-v1")):
        factory = env_factory(spec)
        a, b = factory(), factory()
        assert a is not b
        obs_a, _ = await a.reset(seed=3)
        obs_b, _ = await b.reset(seed=3)
        np.testing.assert_array_equal(obs_a, obs_b)
        await a.close()
        await b.close()


async def test_env_factory_from_async_env_class() -> None:
    env = env_factory(ScriptedEnv)()
    assert isinstance(env, ScriptedEnv)
    result = await RolloutRunner(3, concurrency=2).run_with(ScriptedEnv)
    assert result.summary["n_episodes"] == 3


async def test_env_factory_from_target_mapping() -> None:
    factory = env_factory({"_target_": "async_rollout.testing.ScriptedEnv", "episode_length": 3})
    env = factory()
    assert isinstance(env, ScriptedEnv)
    assert env.episode_length == 3
    indexed = env_factory(
        {"_target_": "async_rollout.testing.ScriptedEnv", "episode_length": 3}
    )(worker_index=5)
    assert indexed.worker_index == 5  # type: ignore[attr-defined]


async def test_wrappers_in_order_gym_before_async() -> None:
    """Gymnasium wrappers wrap the gymnasium env, async ones the adapted env, in list order."""
    factory = env_factory(
        "CartPole-v1",
        wrappers=[DoubleReward, {"_target_": f"{__name__}.Recorder", "scale": 10.0}],
    )
    env = factory()
    assert isinstance(env, Recorder)
    await env.reset(seed=0)
    _, reward, *_ = await env.step(0)
    assert reward == 20.0
    await env.close()


async def test_maze_style_wrapper_mapping() -> None:
    factory = env_factory(
        "CartPole-v1",
        wrappers={f"{__name__}.DoubleReward": {}, Recorder: {"scale": 3.0}},
    )
    env = factory()
    await env.reset(seed=0)
    _, reward, *_ = await env.step(1)
    assert reward == 6.0
    await env.close()


def test_gym_wrapper_after_async_wrapper_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"wrappers\[1\].*DoubleReward.*must come first"):
        env_factory("CartPole-v1", wrappers=[Recorder, DoubleReward])


def test_unknown_wrapper_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no_such_module"):
        env_factory("CartPole-v1", wrappers=["no_such_module.Wrapper"])


def test_env_factory_rejects_bad_specs() -> None:
    with pytest.raises(TypeError, match="expected an env spec"):
        env_factory(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="_target_ is missing"):
        env_factory({"id": "CartPole-v1"})
    with pytest.raises(ValueError, match="max_episode_steps must be >= 0"):
        env_factory("CartPole-v1", max_episode_steps=-1)


async def test_env_factory_step_limit() -> None:
    env = env_factory(lambda: ScriptedEnv(episode_length=100), max_episode_steps=4)()
    await env.reset(seed=0)
    for step in range(1, 5):
        *_, terminated, truncated, _ = await env.step(0)
        assert truncated == (step == 4)
        assert not terminated
    await env.close()


async def test_async_wrapper_forwards_attributes() -> None:
    inner = ScriptedEnv(episode_length=3)
    env = Recorder(inner)
    assert env.episode_length == 3
    assert env.unwrapped is inner
    assert env.action_space is inner.action_space
    assert env.render() == "step 0/3"
