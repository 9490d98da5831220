from __future__ import annotations

import math
from functools import partial
from typing import Any

import anyio
import gymnasium as gym
import numpy as np
import pytest
import trio.testing
from helpers import cartpole_heuristic, episode_key

from async_rollout import (
    EpisodeContext,
    EpisodeResult,
    RandomPolicy,
    RolloutResult,
    RolloutRunner,
    Sink,
)
from async_rollout._seeding import derive_seed
from async_rollout.testing import EnvTracker, ScriptedEnv

pytestmark = pytest.mark.anyio


def scripted(**kwargs: Any) -> partial[ScriptedEnv]:
    return partial(ScriptedEnv, **kwargs)


async def _rollout(concurrency: int, **env_kwargs: Any) -> RolloutResult:
    runner = RolloutRunner(
        24, 0, record_trajectory=True, concurrency=concurrency, seed=123
    )
    return await runner.run_with(scripted(episode_length=7, **env_kwargs))


async def test_same_episodes_for_any_concurrency() -> None:
    """Concurrency 1, 8 and 64 give identical episodes: returns, actions, observations."""
    results = [await _rollout(c) for c in (1, 8, 64)]
    keys = [[episode_key(ep) for ep in r.episodes] for r in results]
    assert keys[0] == keys[1] == keys[2]
    assert [ep.index for ep in results[0].episodes] == list(range(24))


async def test_dict_observations_reproducible() -> None:
    results = [await _rollout(c, dict_obs=True) for c in (1, 5)]
    assert [episode_key(e) for e in results[0].episodes] == [
        episode_key(e) for e in results[1].episodes
    ]


def test_same_episodes_on_both_backends() -> None:
    """asyncio and Trio give the same episodes for the same seeds."""
    by_backend = {
        backend: anyio.run(_rollout, 8, backend=backend) for backend in ("asyncio", "trio")
    }
    assert [episode_key(e) for e in by_backend["asyncio"].episodes] == [
        episode_key(e) for e in by_backend["trio"].episodes
    ]


async def test_seeds_follow_the_contract_formula() -> None:
    result = await RolloutRunner(5, seed=42, concurrency=3).run_with(scripted())
    for ep in result.episodes:
        assert ep.env_seed == int(
            np.random.SeedSequence(42, spawn_key=(0, ep.index)).generate_state(1)[0]
        )
        assert ep.agent_seed == derive_seed(42, 1, ep.index)
    assert result.seed == 42


async def test_explicit_seeds_and_fresh_seed() -> None:
    result = await RolloutRunner(3, env_seeds=[7, 8, 9], agent_seeds=[1, 2, 3]).run_with(
        scripted()
    )
    assert [(e.env_seed, e.agent_seed) for e in result.episodes] == [(7, 1), (8, 2), (9, 3)]
    fresh = await RolloutRunner(2, seed=None).run_with(scripted())
    assert isinstance(fresh.seed, int)
    again = await RolloutRunner(2, seed=fresh.seed).run_with(scripted())
    assert fresh.returns == again.returns


async def test_cartpole_matches_plain_gymnasium_loop() -> None:
    """A deterministic policy on CartPole gives exactly the returns of a plain loop."""
    runner = RolloutRunner(10, 500, deterministic=True, concurrency=4, seed=5)
    result = await runner.run_with("CartPole-v1", [], cartpole_heuristic)
    env = gym.make("CartPole-v1")
    expected = []
    for ep in result.episodes:
        obs, _ = env.reset(seed=ep.env_seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(cartpole_heuristic(obs))
            total += float(reward)
            done = terminated or truncated
        expected.append(total)
    env.close()
    assert result.returns == expected
    assert max(expected) > 100  # the heuristic actually balances


@pytest.mark.parametrize(
    ("concurrency", "virtual_s"), [(32, 0.2), (1, 6.4)], ids=["concurrent", "sequential"]
)
def test_latency_overlaps_on_mock_clock(concurrency: int, virtual_s: float) -> None:
    """32 episodes x 20 steps x 10 ms take 0.2 s of virtual time at concurrency 32, 6.4 s at 1."""

    async def main() -> float:
        start = anyio.current_time()
        runner = RolloutRunner(32, concurrency=concurrency)
        result = await runner.run_with(scripted(episode_length=20, step_latency=0.01))
        assert result.summary["total_steps"] == 32 * 20
        return anyio.current_time() - start

    clock = trio.testing.MockClock(autojump_threshold=0)
    elapsed = anyio.run(main, backend="trio", backend_options={"clock": clock})
    assert elapsed == pytest.approx(virtual_s, rel=1e-6)


async def test_every_env_closed_on_success() -> None:
    tracker = EnvTracker()
    await RolloutRunner(20, concurrency=6).run_with(scripted(tracker=tracker))
    assert len(tracker.created) == 6
    assert not tracker.open


async def test_env_error_raises_original_type_and_closes_envs() -> None:
    """Under "raise" the user's own exception arrives, not an ExceptionGroup; envs are closed."""
    tracker = EnvTracker()
    runner = RolloutRunner(20, concurrency=4, seed=1)
    bad_seed = derive_seed(1, 0, 6)
    env = scripted(tracker=tracker, fail_at_step=3, fail_seeds={bad_seed}, exception=KeyError)
    with pytest.raises(KeyError) as info:
        await runner.run_with(env)
    assert any("episode 6" in note for note in info.value.__notes__)
    assert not tracker.open
    assert runner.result is not None
    failed = [ep for ep in runner.result.episodes if ep.outcome == "env_error"]
    assert [ep.index for ep in failed] == [6]
    assert failed[0].length == 2
    assert "KeyError" in (failed[0].error or "")
    assert runner.result.summary["n_failed"] == 1


async def test_policy_error_outcome() -> None:
    def policy(obs: Any) -> int:
        raise ValueError("bad policy")

    runner = RolloutRunner(3, concurrency=1)
    with pytest.raises(ValueError, match="bad policy"):
        await runner.run_with(scripted(), [], policy)
    assert runner.result is not None
    assert runner.result.episodes[0].outcome == "policy_error"


async def test_every_env_closed_on_cancellation() -> None:
    """A cancel scope around run_with closes every env and records in-flight episodes."""
    tracker = EnvTracker()
    with anyio.CancelScope() as scope:

        class CancelWhenAllStarted(Sink):
            started = 0

            def on_episode_start(self, episode: EpisodeContext) -> None:
                self.started += 1
                if self.started == 12:  # 8 in flight, 4 completed
                    scope.cancel()

        runner = RolloutRunner(100, concurrency=8, sinks=[CancelWhenAllStarted()])
        await runner.run_with(scripted(tracker=tracker, episode_length=5, step_latency=0.001))
    assert scope.cancelled_caught
    assert tracker.created
    assert not tracker.open
    assert runner.result is not None
    outcomes = runner.result.summary["outcomes"]
    # Each worker had exactly one episode in flight; episodes that were at their last
    # step when the scope was cancelled may still complete.
    assert outcomes["cancelled"] == 8
    assert outcomes["completed"] >= 4
    assert runner.result.summary["n_episodes"] == outcomes["completed"] + 8


async def test_cancellation_propagates() -> None:
    runner = RolloutRunner(10, concurrency=2)
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await runner.run_with(scripted(step_latency=1.0))
            pytest.fail("the cancelled run returned normally")

        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()


async def test_env_instance_runs_sequentially_and_is_not_closed() -> None:
    env = ScriptedEnv(episode_length=4)
    with pytest.warns(RuntimeWarning, match="concurrency 1"):
        result = await RolloutRunner(3, concurrency=4).run_with(env)
    assert result.summary["n_episodes"] == 3
    assert env.resets == 3
    assert not env.closed
    gym_env = gym.make("CartPole-v1")
    result = await RolloutRunner(2, 20, concurrency=1).run_with(gym_env)
    assert result.summary["n_episodes"] == 2
    gym_env.close()


async def test_max_episode_steps_truncates() -> None:
    result = await RolloutRunner(3, 5).run_with(scripted(episode_length=50))
    assert all(ep.length == 5 and ep.truncated and not ep.terminated for ep in result.episodes)
    assert all(ep.outcome == "completed" for ep in result.episodes)
    # An episode that terminates exactly at the limit is terminated, not truncated.
    result = await RolloutRunner(2, 50).run_with(scripted(episode_length=50))
    assert all(ep.terminated and not ep.truncated for ep in result.episodes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_episodes": -1}, "n_episodes must be >= 0; got -1"),
        ({"n_episodes": 2, "max_episode_steps": -3}, "max_episode_steps must be >= 0"),
        ({"n_episodes": 2, "concurrency": 0}, "concurrency must be >= 1; got 0"),
        ({"n_episodes": 2, "seed": -1}, "seed must be >= 0"),
        ({"n_episodes": 2, "on_env_error": "ignore"}, "on_env_error must be one of"),
        ({"n_episodes": 2, "step_timeout": 0}, "step_timeout must be > 0"),
        ({"n_episodes": 2, "max_retries": -1}, "max_retries must be >= 0"),
        ({"n_episodes": 2, "env_seeds": [1, -2]}, r"env_seeds\[1\] must be >= 0"),
        ({"n_episodes": 2, "backend": "spark"}, "backend must be one of"),
    ],
)
def test_argument_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RolloutRunner(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_episodes": "3"}, "n_episodes must be an int"),
        ({"n_episodes": 2, "concurrency": 2.5}, "concurrency must be an int"),
        ({"n_episodes": True}, "n_episodes must be an int"),
        ({"n_episodes": 2, "reset_timeout": "1s"}, "reset_timeout must be a number"),
        ({"n_episodes": 2, "sinks": [object()]}, r"sinks\[0\] must be a Sink"),
    ],
)
def test_argument_types(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        RolloutRunner(**kwargs)


async def test_heartbeat_keeps_running_during_inline_rollout() -> None:
    """The loop yields on a time budget: a host task keeps ticking during a CPU-bound rollout.

    CartPole inline never suspends; without the budget the heartbeat would only run
    before the first episode and after the last. Checked by progress, not by time.
    """
    finished = 0
    progress_at_ticks: list[int] = []
    done = anyio.Event()

    class Count(Sink):
        def on_episode_end(self, result: EpisodeResult) -> None:
            nonlocal finished
            finished += 1

    async def heartbeat() -> None:
        while not done.is_set():
            progress_at_ticks.append(finished)
            await anyio.sleep(0.005)

    n = 400
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        runner = RolloutRunner(n, 500, concurrency=16, sinks=[Count()])
        result = await runner.run_with("CartPole-v1")
        done.set()
    assert result.summary["n_episodes"] == n
    during = {p for p in progress_at_ticks if 0 < p < n}
    assert len(during) >= 3, progress_at_ticks


class RecordingSink(Sink):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.steps = 0

    def on_run_start(self, run: Any) -> None:
        self.events.append(f"run_start {run.n_episodes}")

    async def on_episode_start(self, episode: EpisodeContext) -> None:
        self.events.append(f"start {episode.index}")

    def on_step(self, episode: EpisodeContext, *args: Any) -> None:
        self.steps += 1

    async def on_episode_end(self, result: EpisodeResult) -> None:
        self.events.append(f"end {result.index}")

    def on_run_end(self, result: RolloutResult) -> None:
        self.events.append(f"run_end {result.summary['n_episodes']}")


async def test_sinks_observe_the_run() -> None:
    sink = RecordingSink()
    await RolloutRunner(3, concurrency=1, sinks=[sink]).run_with(scripted(episode_length=4))
    assert sink.events == [
        "run_start 3",
        "start 0",
        "end 0",
        "start 1",
        "end 1",
        "start 2",
        "end 2",
        "run_end 3",
    ]
    assert sink.steps == 12


async def test_stream_yields_in_completion_order() -> None:
    """Episodes arrive as they end: the short episodes of the fastest worker come first."""
    runner = RolloutRunner(6, concurrency=3)
    lengths = [9, 3, 6]

    def make(worker_index: int) -> ScriptedEnv:
        return ScriptedEnv(episode_length=lengths[worker_index], step_latency=0.01)

    seen = []
    async with runner.stream(make) as episodes:
        async for ep in episodes:
            seen.append((ep.index, ep.length))
    # Worker 1's 3-step episodes end first (30 ms); worker 2's second 6-step one last (120 ms).
    assert seen[0][1] == 3
    assert seen[-1][1] == 6
    assert sorted(index for index, _ in seen) == list(range(6))
    assert runner.result is not None
    assert [ep.index for ep in runner.result.episodes] == list(range(6))


async def test_stream_backpressure_loses_nothing() -> None:
    """A slow consumer slows the rollout: at most concurrency episodes wait, none is lost."""
    runner = RolloutRunner(12, concurrency=2)
    tracker = EnvTracker()
    received = []
    async with runner.stream(scripted(tracker=tracker, episode_length=2)) as episodes:
        async for ep in episodes:
            await anyio.wait_all_tasks_blocked()
            resets = sum(env.resets for env in tracker.created)
            # The producer cannot run ahead of the consumer by more than the workers in flight.
            assert resets <= len(received) + 1 + 2
            received.append(ep.index)
    assert sorted(received) == list(range(12))


async def test_stream_early_exit_cancels_and_closes() -> None:
    tracker = EnvTracker()
    runner = RolloutRunner(1000, concurrency=4)
    async with runner.stream(scripted(tracker=tracker, step_latency=0.001)) as episodes:
        async for ep in episodes:
            if ep.index >= 2:
                break
    assert not tracker.open
    assert runner.result is not None
    assert runner.result.summary["n_episodes"] < 1000
    assert runner.result.summary["outcomes"]["cancelled"] >= 1


async def _consume(runner: RolloutRunner, env: Any, fail: bool = False) -> None:
    async with runner.stream(env) as episodes:
        async for _ in episodes:
            if fail:
                raise LookupError("consumer gave up")


async def test_stream_raises_original_error() -> None:
    runner = RolloutRunner(5, concurrency=2)
    with pytest.raises(RuntimeError, match="scripted failure"):
        await _consume(runner, scripted(fail_at_step=2))


async def test_run_interaction_loop() -> None:
    calls = 0

    def after_reset() -> None:
        nonlocal calls
        calls += 1

    results = await RolloutRunner.run_interaction_loop(
        scripted(episode_length=3),
        RandomPolicy(ScriptedEnv().action_space),
        5,
        [1, 2, 3, 4],
        [5, 6, 7, 8, 9],
        False,
        after_reset_callback=after_reset,
        concurrency=2,
    )
    assert [ep.index for ep in results] == [0, 1, 2, 3]
    assert [ep.env_seed for ep in results] == [1, 2, 3, 4]
    assert calls == 4


async def test_run_episode_from_reset_env() -> None:
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    result = await RolloutRunner.run_episode(env, obs, cartpole_heuristic, True, False)
    assert result.terminated or result.truncated
    assert result.length == result.total_reward
    env.close()


async def test_policy_receives_info_and_episode() -> None:
    seen: list[tuple[int, int, int]] = []
    starts: list[int] = []
    ends: list[float] = []

    class Policy:
        async def compute_action(
            self,
            observation: Any,
            *,
            deterministic: bool,
            rng: np.random.Generator,
            info: dict[str, Any],
            episode: EpisodeContext,
        ) -> int:
            episode.state["n"] = episode.state.get("n", 0) + 1
            seen.append((episode.index, episode.step, info["step"]))
            return 0

        def on_episode_start(self, ctx: EpisodeContext) -> None:
            starts.append(ctx.index)

        async def on_episode_end(self, ctx: EpisodeContext, result: EpisodeResult) -> None:
            assert ctx.state["n"] == result.length
            ends.append(result.total_reward)

    await RolloutRunner(2, concurrency=1).run_with(scripted(episode_length=3), [], Policy())
    assert seen == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 0), (1, 1, 1), (1, 2, 2)]
    assert starts == [0, 1]
    assert len(ends) == 2


async def test_summary_without_completed_episodes() -> None:
    runner = RolloutRunner(0)
    result = await runner.run_with(scripted())
    assert result.summary["n_episodes"] == 0
    assert result.summary["mean_return"] is None
    assert result.summary["std_length"] is None


async def test_summary_statistics() -> None:
    result = await RolloutRunner(4, concurrency=2).run_with(scripted(episode_length=5))
    returns = result.returns
    s = result.summary
    assert s["mean_return"] == pytest.approx(np.mean(returns))
    assert s["std_return"] == pytest.approx(np.std(returns))
    assert s["mean_length"] == 5
    assert s["std_length"] == 0.0
    assert s["total_steps"] == 20
    assert s["metrics"] == {"final_step": 5.0}
    assert s["outcomes"] == {
        "completed": 4,
        "env_error": 0,
        "policy_error": 0,
        "timeout": 0,
        "cancelled": 0,
    }
    assert math.isfinite(s["steps_per_s"])


async def test_runner_runs_again_independently() -> None:
    runner = RolloutRunner(4, concurrency=2)
    first = await runner.run_with(scripted())
    second = await runner.run_with(scripted())
    assert first.returns == second.returns
    assert runner.result is second


async def test_worker_index_reaches_factory() -> None:
    indices = []

    def make(worker_index: int) -> ScriptedEnv:
        indices.append(worker_index)
        return ScriptedEnv()

    await RolloutRunner(10, concurrency=3).run_with(make)
    assert sorted(indices) == [0, 1, 2]


async def test_stream_consumer_error_reaches_caller_unwrapped() -> None:
    tracker = EnvTracker()
    runner = RolloutRunner(50, concurrency=3)
    with pytest.raises(LookupError, match="consumer"):
        await _consume(runner, scripted(tracker=tracker), fail=True)
    assert not tracker.open
