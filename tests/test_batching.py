"""BatchedPolicy: batching, per-row delivery, errors, cancellation, statistics."""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from async_rollout._batching import BatchedPolicy, BatchingStatistics, _LatencyWindow
from async_rollout._policy import AsyncPolicy, wrap_policy
from async_rollout.errors import PolicyError
from async_rollout.policies_batched import MLPBatchFn, batched_mlp_policy

pytestmark = pytest.mark.anyio

# Generous hang guard: on trio the mock clock makes it virtual, on asyncio it is wall time.
HANG_GUARD_S = 10.0
# asyncio may fire a timer up to its clock resolution early.
CLOCK_SLACK_S = 1e-3
# Long enough for a test to arrange its callers before the batch goes on asyncio's real
# clock (anyio.wait_all_tasks_blocked polls every 0.1 s there); instant on trio's mock clock.
ARRANGE_DELAY_S = 0.5


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Both backends; trio on a mock clock that jumps whenever every task is blocked."""
    if request.param == "trio":
        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    return "asyncio"


# Tests that run worker threads need a real clock (a mock one jumps ahead of the thread).
real_clock_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


class Recorder:
    """A row-wise batch_fn (``10 * observation``) that records every batch it sees."""

    def __init__(self) -> None:
        self.batches: list[tuple[Any, bool, list[np.random.Generator]]] = []

    @property
    def sizes(self) -> list[int]:
        return [len(rngs) for _, _, rngs in self.batches]

    def __call__(
        self, observations: Any, *, deterministic: bool, rngs: list[np.random.Generator]
    ) -> Any:
        self.batches.append((copy.deepcopy(observations), deterministic, list(rngs)))
        return observations * 10


class Caller:
    """One compute_action call in its own cancel scope, keeping its result or error."""

    def __init__(
        self,
        policy: BatchedPolicy,
        observation: Any,
        *,
        deterministic: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.policy = policy
        self.observation = observation
        self.deterministic = deterministic
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.scope = anyio.CancelScope()
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.finished_at = math.nan

    async def __call__(self) -> None:
        with self.scope:
            try:
                self.result = await self.policy.compute_action(
                    self.observation, deterministic=self.deterministic, rng=self.rng
                )
            except Exception as exc:
                self.error = exc
            self.done = True
            self.finished_at = anyio.current_time()


async def run_all(callers: list[Caller]) -> None:
    """Start ``callers`` one after another, each once the previous ones are blocked."""
    with anyio.fail_after(HANG_GUARD_S):
        async with anyio.create_task_group() as tg:
            for caller in callers:
                tg.start_soon(caller)
                await anyio.wait_all_tasks_blocked()


def row_policy(observation: Any, rng: np.random.Generator) -> Any:
    """A per-row policy whose output depends on its own observation and rng only."""
    return observation * 0.5 + rng.normal(size=np.shape(observation))


def batched_row_policy(
    observations: Any, *, deterministic: bool, rngs: list[np.random.Generator]
) -> Any:
    return np.stack([row_policy(obs, rng) for obs, rng in zip(observations, rngs, strict=True)])


async def test_is_an_async_policy() -> None:
    """The runner takes a BatchedPolicy as it is, without an adapter."""
    policy = BatchedPolicy(Recorder())
    assert isinstance(policy, AsyncPolicy)
    assert wrap_policy(policy) is policy


async def test_concurrent_requests_form_batches() -> None:
    """Concurrent requests share batches; a full batch goes, the rest at the delay."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=4, max_delay_s=0.05)
    callers = [Caller(policy, np.full(2, i, dtype=float)) for i in range(10)]
    await run_all(callers)
    assert recorder.sizes == [4, 4, 2]
    for i, caller in enumerate(callers):
        np.testing.assert_array_equal(caller.result, np.full(2, 10.0 * i))


async def test_full_batch_goes_without_waiting_for_the_delay() -> None:
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=4, max_delay_s=1000.0)
    start = anyio.current_time()
    await run_all([Caller(policy, np.zeros(1)) for _ in range(4)])
    assert recorder.sizes == [4]
    assert anyio.current_time() - start < 1.0


async def test_lone_request_goes_after_max_delay() -> None:
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=8, max_delay_s=0.05)
    caller = Caller(policy, np.ones(3))
    start = anyio.current_time()
    await run_all([caller])
    assert recorder.sizes == [1]
    assert caller.finished_at - start >= 0.05 - CLOCK_SLACK_S
    np.testing.assert_array_equal(caller.result, np.full(3, 10.0))


async def test_max_batch_size_one_never_waits() -> None:
    """With max_batch_size=1 each request is its own batch, run at once."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=1, max_delay_s=1000.0)
    start = anyio.current_time()
    await run_all([Caller(policy, np.full(1, i)) for i in range(3)])
    assert recorder.sizes == [1, 1, 1]
    assert anyio.current_time() - start < 1.0


async def test_rows_reach_their_own_callers() -> None:
    """Each caller gets the row computed from its own observation and its own rng."""
    seen_rngs: list[np.random.Generator] = []

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> list[Any]:
        seen_rngs.extend(rngs)
        # A list of rows, each naming the observation and the generator it came from.
        return [(float(obs[0]), id(rng)) for obs, rng in zip(observations, rngs, strict=True)]

    policy = BatchedPolicy(batch_fn, max_batch_size=5, max_delay_s=0.01)
    callers = [
        Caller(policy, np.array([float(i)]), rng=np.random.default_rng(i)) for i in range(12)
    ]
    async with anyio.create_task_group() as tg:
        for caller in callers:
            tg.start_soon(caller)
    for i, caller in enumerate(callers):
        assert caller.result == (float(i), id(caller.rng))
    assert len(seen_rngs) == 12


async def test_failing_batch_fn_raises_in_every_caller() -> None:
    """Every caller of a failing batch gets the error's type and note, as its own object."""

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        raise ValueError("no actions today")

    policy = BatchedPolicy(batch_fn, max_batch_size=4, max_delay_s=0.05)
    callers = [Caller(policy, np.zeros(2)) for _ in range(4)]
    await run_all(callers)
    errors = [caller.error for caller in callers]
    for error in errors:
        assert isinstance(error, ValueError)
        assert str(error) == "no actions today"
        assert any("batch of 4 observations" in note for note in error.__notes__)
        assert error.__traceback__ is not None
    # Distinct objects: a note one episode adds does not show up in the others.
    assert len({id(error) for error in errors}) == 4
    errors[0].add_note("episode 0")
    assert all("episode 0" not in error.__notes__ for error in errors[1:])


async def test_uncopyable_error_still_reaches_every_caller() -> None:
    """An exception that cannot be copied is raised as is in every caller."""

    class Stubborn(Exception):
        def __init__(self, *, code: int) -> None:
            super().__init__(f"code {code}")

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        raise Stubborn(code=7)

    policy = BatchedPolicy(batch_fn, max_batch_size=3, max_delay_s=0.05)
    callers = [Caller(policy, np.zeros(1)) for _ in range(3)]
    await run_all(callers)
    assert all(isinstance(caller.error, Stubborn) for caller in callers)


async def test_wrong_number_of_actions_is_a_policy_error() -> None:
    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        return np.zeros(len(rngs) + 1)

    policy = BatchedPolicy(batch_fn, max_batch_size=2, max_delay_s=0.05)
    callers = [Caller(policy, np.zeros(1)) for _ in range(2)]
    await run_all(callers)
    for caller in callers:
        assert isinstance(caller.error, PolicyError)
        assert "returned 3 actions for a batch of 2" in str(caller.error)


async def test_scalar_result_is_a_policy_error() -> None:
    policy = BatchedPolicy(lambda obs, *, deterministic, rngs: 0, max_batch_size=1)
    caller = Caller(policy, np.zeros(1))
    await run_all([caller])
    assert isinstance(caller.error, PolicyError)
    assert "batch of actions" in str(caller.error)


async def test_cancelled_follower_does_not_disturb_the_others() -> None:
    """A follower cancelled while waiting drops out of the batch; its rng is left untouched."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=8, max_delay_s=ARRANGE_DELAY_S)
    leader, follower, other = (Caller(policy, np.full(1, float(i))) for i in range(3))
    async with anyio.create_task_group() as tg:
        for caller in (leader, follower, other):
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
        follower.scope.cancel()
    assert follower.scope.cancelled_caught
    assert not follower.done
    [(observations, _, rngs)] = recorder.batches
    np.testing.assert_array_equal(observations, [[0.0], [2.0]])
    assert rngs == [leader.rng, other.rng]
    np.testing.assert_array_equal(leader.result, [0.0])
    np.testing.assert_array_equal(other.result, [20.0])


async def test_cancelled_leader_hands_over_and_keeps_the_deadline(anyio_backend_name: str) -> None:
    """When the first caller is cancelled, the others still get their rows at the deadline."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=8, max_delay_s=ARRANGE_DELAY_S)
    leader, second, third = (Caller(policy, np.full(1, float(i))) for i in range(3))
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for caller in (leader, second, third):
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
        leader.scope.cancel()
    assert leader.scope.cancelled_caught
    [(observations, _, rngs)] = recorder.batches
    np.testing.assert_array_equal(observations, [[1.0], [2.0]])
    assert rngs == [second.rng, third.rng]
    np.testing.assert_array_equal(second.result, [10.0])
    np.testing.assert_array_equal(third.result, [20.0])
    # The successor flushes at the original deadline, not a fresh one.
    elapsed = second.finished_at - start
    if anyio_backend_name == "trio":
        assert elapsed == pytest.approx(ARRANGE_DELAY_S)
    else:
        assert elapsed >= ARRANGE_DELAY_S - CLOCK_SLACK_S


async def test_leadership_passes_down_a_chain_of_cancellations() -> None:
    """Leader and its successor both cancelled: the third caller still gets its row."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=8, max_delay_s=ARRANGE_DELAY_S)
    callers = [Caller(policy, np.full(1, float(i))) for i in range(3)]
    async with anyio.create_task_group() as tg:
        for caller in callers:
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
        callers[0].scope.cancel()
        await anyio.wait_all_tasks_blocked()
        callers[1].scope.cancel()
    assert callers[0].scope.cancelled_caught
    assert callers[1].scope.cancelled_caught
    assert recorder.sizes == [1]
    np.testing.assert_array_equal(callers[2].result, [20.0])


async def test_leader_and_follower_cancelled_together() -> None:
    """Cancelling the leader and a follower at once leaves the last follower its row."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=8, max_delay_s=ARRANGE_DELAY_S)
    callers = [Caller(policy, np.full(1, float(i))) for i in range(3)]
    async with anyio.create_task_group() as tg:
        for caller in callers:
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
        callers[0].scope.cancel()
        callers[1].scope.cancel()
    assert recorder.sizes == [1]
    np.testing.assert_array_equal(callers[2].result, [20.0])


async def test_newcomer_after_leader_cancellation_joins_the_batch() -> None:
    """A request arriving after the leader left joins its batch and is served with the rest."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=8, max_delay_s=ARRANGE_DELAY_S)
    leader, follower, newcomer = (Caller(policy, np.full(1, float(i))) for i in range(3))
    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(follower)
        await anyio.wait_all_tasks_blocked()
        leader.scope.cancel()
        tg.start_soon(newcomer)
    assert recorder.sizes == [2]
    np.testing.assert_array_equal(follower.result, [10.0])
    np.testing.assert_array_equal(newcomer.result, [20.0])


async def test_lone_cancelled_leader_leaves_no_stale_batch() -> None:
    """A batch whose only request was cancelled is dropped; the next request starts afresh."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=8, max_delay_s=ARRANGE_DELAY_S)
    first = Caller(policy, np.zeros(1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        first.scope.cancel()
    assert first.scope.cancelled_caught
    second = Caller(policy, np.ones(1))
    await run_all([second])
    assert recorder.sizes == [1]
    np.testing.assert_array_equal(second.result, [10.0])
    assert policy.statistics().n_batches == 1


async def test_withdrawn_requests_do_not_count_towards_a_full_batch() -> None:
    """A batch is full when it holds max_batch_size live requests."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=3, max_delay_s=1000.0)
    first, cancelled, third, fourth = (Caller(policy, np.full(1, float(i))) for i in range(4))
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for caller in (first, cancelled):
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
        cancelled.scope.cancel()
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert recorder.sizes == []  # three requests so far, one of them withdrawn
        tg.start_soon(fourth)
    assert recorder.sizes == [3]
    assert anyio.current_time() - start < 100.0
    assert [float(c.result[0]) for c in (first, third, fourth)] == [0.0, 20.0, 30.0]


async def test_runner_of_an_async_batch_cancelled_midway_still_delivers() -> None:
    """Cancelling the caller running an async batch_fn neither loses nor breaks the others."""
    release = anyio.Event()
    started = anyio.Event()

    async def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        started.set()
        await release.wait()
        return observations + 1

    policy = BatchedPolicy(batch_fn, max_batch_size=3, max_delay_s=1000.0)
    callers = [Caller(policy, np.full(1, float(i))) for i in range(3)]
    async with anyio.create_task_group() as tg:
        for caller in callers:
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
        await started.wait()
        callers[2].scope.cancel()  # the one that filled the batch and runs it
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert callers[2].scope.cancelled_caught
    assert not callers[2].done
    np.testing.assert_array_equal(callers[0].result, [1.0])
    np.testing.assert_array_equal(callers[1].result, [2.0])


async def test_lone_async_batch_fn_is_cancelled_at_once() -> None:
    """With nobody else waiting, a cancelled caller interrupts its own async batch_fn."""

    async def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        await anyio.sleep_forever()

    policy = BatchedPolicy(batch_fn, max_batch_size=1)
    caller = Caller(policy, np.zeros(1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        caller.scope.cancel()
    assert caller.scope.cancelled_caught
    assert policy.statistics().n_batches == 1


async def test_cancelled_after_its_batch_started_is_harmless() -> None:
    """A follower cancelled while the batch runs just loses its row; the others get theirs."""
    release = anyio.Event()

    async def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        await release.wait()
        return observations * 2

    policy = BatchedPolicy(batch_fn, max_batch_size=3, max_delay_s=1000.0)
    callers = [Caller(policy, np.full(1, float(i))) for i in range(3)]
    async with anyio.create_task_group() as tg:
        for caller in callers:
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
        callers[1].scope.cancel()
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert callers[1].scope.cancelled_caught
    np.testing.assert_array_equal(callers[0].result, [0.0])
    np.testing.assert_array_equal(callers[2].result, [4.0])


async def episodes(
    policy: Callable[[Any, np.random.Generator], Any] | BatchedPolicy,
    n_episodes: int,
    n_steps: int,
    seed: int,
) -> list[list[Any]]:
    """Run toy episodes (the action becomes the next observation) concurrently."""
    trajectories: list[list[Any]] = [[] for _ in range(n_episodes)]

    async def episode(i: int) -> None:
        rng = np.random.default_rng([seed, i])
        obs = np.full(3, float(i))
        for _ in range(n_steps):
            if isinstance(policy, BatchedPolicy):
                obs = await policy.compute_action(obs, deterministic=False, rng=rng)
            else:
                obs = policy(obs, rng)
            trajectories[i].append(obs)

    async with anyio.create_task_group() as tg:
        for i in range(n_episodes):
            tg.start_soon(episode, i)
    return trajectories


@pytest.mark.parametrize(("n_episodes", "max_batch_size"), [(1, 4), (7, 3), (16, 16), (9, 32)])
async def test_batched_and_unbatched_runs_agree(n_episodes: int, max_batch_size: int) -> None:
    """Same rngs, same actions: batching changes nothing for a row-wise policy."""
    policy = BatchedPolicy(batched_row_policy, max_batch_size=max_batch_size, max_delay_s=0.001)
    batched = await episodes(policy, n_episodes, n_steps=5, seed=3)
    unbatched = await episodes(row_policy, n_episodes, n_steps=5, seed=3)
    for got, want in zip(batched, unbatched, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    assert policy.statistics().mean_batch_size > 1 or n_episodes == 1


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n_episodes=st.integers(1, 12),
    max_batch_size=st.integers(1, 8),
    n_steps=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
async def test_batching_never_changes_the_actions(
    n_episodes: int, max_batch_size: int, n_steps: int, seed: int
) -> None:
    """For any concurrency and batch size, batched episodes equal unbatched ones."""
    policy = BatchedPolicy(batched_row_policy, max_batch_size=max_batch_size, max_delay_s=0.001)
    batched = await episodes(policy, n_episodes, n_steps, seed)
    unbatched = await episodes(row_policy, n_episodes, n_steps, seed)
    for got, want in zip(batched, unbatched, strict=True):
        np.testing.assert_array_equal(np.stack(got), np.stack(want))


async def test_dict_and_tuple_observations_are_stacked_per_key() -> None:
    """Dict observations arrive as a dict of stacked arrays; dict actions go back per row."""
    seen: list[Any] = []

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        seen.append(observations)
        position, (count, flag) = observations["position"], observations["extra"]
        return {"move": position * 2, "pair": (count + 1, ~flag)}

    policy = BatchedPolicy(batch_fn, max_batch_size=3, max_delay_s=0.05)
    callers = [
        Caller(
            policy,
            {"position": np.full(2, float(i)), "extra": (i, np.array(i % 2 == 0))},
        )
        for i in range(3)
    ]
    await run_all(callers)
    [observations] = seen
    assert set(observations) == {"position", "extra"}
    assert observations["position"].shape == (3, 2)
    np.testing.assert_array_equal(observations["extra"][0], [0, 1, 2])
    np.testing.assert_array_equal(observations["extra"][1], [True, False, True])
    for i, caller in enumerate(callers):
        np.testing.assert_array_equal(caller.result["move"], np.full(2, 2.0 * i))
        count, flag = caller.result["pair"]
        assert count == i + 1
        assert bool(flag) == (i % 2 == 1)


async def test_scalar_observations_become_a_1d_batch() -> None:
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=3, max_delay_s=0.05)
    callers = [Caller(policy, i) for i in range(3)]
    await run_all(callers)
    [(observations, _, _)] = recorder.batches
    assert observations.shape == (3,)
    assert [caller.result for caller in callers] == [0, 10, 20]


async def test_deterministic_and_sampled_requests_never_share_a_batch() -> None:
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=4, max_delay_s=0.05)
    callers = [Caller(policy, np.full(1, float(i)), deterministic=i % 2 == 0) for i in range(6)]
    await run_all(callers)
    assert sorted(recorder.sizes) == [3, 3]
    for observations, deterministic, _ in recorder.batches:
        assert all((int(obs[0]) % 2 == 0) == deterministic for obs in observations)
    for i, caller in enumerate(callers):
        np.testing.assert_array_equal(caller.result, [10.0 * i])


async def test_async_batch_fn() -> None:
    async def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        await anyio.lowlevel.checkpoint()
        return observations - 1

    policy = BatchedPolicy(batch_fn, max_batch_size=4, max_delay_s=0.05)
    callers = [Caller(policy, np.full(1, float(i))) for i in range(5)]
    await run_all(callers)
    assert [float(caller.result[0]) for caller in callers] == [-1.0, 0.0, 1.0, 2.0, 3.0]
    assert policy.statistics().n_batches == 2


async def test_async_callable_object_is_awaited() -> None:
    """An object with ``async def __call__`` is detected as an async batch_fn."""

    class AsyncModel:
        async def __call__(self, observations: Any, *, deterministic: bool, rngs: Any) -> Any:
            await anyio.lowlevel.checkpoint()
            return observations + 100

    policy = BatchedPolicy(AsyncModel(), max_batch_size=2, max_delay_s=0.05)
    callers = [Caller(policy, np.zeros(1)) for _ in range(2)]
    await run_all(callers)
    assert all(float(caller.result[0]) == 100.0 for caller in callers)


@real_clock_backends
async def test_offloaded_batch_fn_runs_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        threads.append(threading.get_ident())
        return observations * 3

    policy = BatchedPolicy(batch_fn, max_batch_size=4, max_delay_s=0.01, offload_thread=True)
    callers = [Caller(policy, np.full(1, float(i))) for i in range(6)]
    await run_all(callers)
    assert len(threads) == 2
    assert loop_thread not in threads
    assert [float(caller.result[0]) for caller in callers] == [0.0, 3.0, 6.0, 9.0, 12.0, 15.0]


@real_clock_backends
async def test_offloaded_batch_survives_its_runner_being_cancelled() -> None:
    """A worker thread cannot be stopped: its batch completes for the callers still waiting."""
    entered = threading.Event()
    release = threading.Event()

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> Any:
        entered.set()
        release.wait(HANG_GUARD_S)
        return observations + 5

    policy = BatchedPolicy(batch_fn, max_batch_size=2, max_delay_s=1000.0, offload_thread=True)
    first, second = (Caller(policy, np.full(1, float(i))) for i in range(2))
    with anyio.fail_after(HANG_GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(second)
            await anyio.to_thread.run_sync(entered.wait, HANG_GUARD_S)
            second.scope.cancel()  # the one that filled the batch runs it
            release.set()
    assert second.scope.cancelled_caught
    np.testing.assert_array_equal(first.result, [5.0])


async def test_statistics() -> None:
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=4, max_delay_s=0.05)
    assert policy.statistics() == BatchingStatistics(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    await run_all([Caller(policy, np.zeros(1)) for _ in range(10)])
    stats = policy.statistics()
    assert (stats.n_batches, stats.n_requests) == (3, 10)
    assert stats.mean_batch_size == pytest.approx(10 / 3)
    assert 0.0 <= stats.p50_queue_latency_s <= stats.p95_queue_latency_s
    assert 0.0 < stats.p50_call_latency_s <= stats.p95_call_latency_s
    with pytest.raises(AttributeError):
        stats.n_batches = 0  # type: ignore[misc]


def test_latency_window_keeps_memory_flat() -> None:
    """Only the most recent samples are kept, in a buffer of fixed size."""
    window = _LatencyWindow(8)
    buffer = window._buffer
    for value in range(100):
        window.add(float(value))
    window.extend(np.arange(1000.0, 1005.0))
    assert len(window) == 8
    assert window._buffer is buffer
    assert sorted(window._buffer) == [97.0, 98.0, 99.0, 1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    window.extend(np.arange(20.0))
    assert sorted(window._buffer) == list(np.arange(12.0, 20.0))
    p50, p95 = window.percentiles()
    assert p50 == pytest.approx(15.5)
    assert p50 <= p95 <= 19.0


def test_constructor_checks_its_arguments() -> None:
    async def async_fn(observations: Any, *, deterministic: bool, rngs: Any) -> Any:
        return observations

    with pytest.raises(TypeError, match="callable"):
        BatchedPolicy("not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchedPolicy(Recorder(), max_batch_size=0)
    with pytest.raises(TypeError, match="max_batch_size"):
        BatchedPolicy(Recorder(), max_batch_size=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_delay_s"):
        BatchedPolicy(Recorder(), max_delay_s=-1.0)
    with pytest.raises(ValueError, match="max_delay_s"):
        BatchedPolicy(Recorder(), max_delay_s=math.inf)
    with pytest.raises(ValueError, match="offload_thread"):
        BatchedPolicy(async_fn, offload_thread=True)


async def test_cancelling_every_caller_leaves_the_policy_usable() -> None:
    """A whole task group cancelled mid-batch neither hangs nor leaves a stale batch behind."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=8, max_delay_s=ARRANGE_DELAY_S)
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(Caller(policy, np.full(1, float(i))))
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert recorder.sizes == []
    callers = [Caller(policy, np.full(1, float(i))) for i in range(2)]
    await run_all(callers)
    assert recorder.sizes == [2]


def test_one_policy_serves_successive_event_loops() -> None:
    """No state outlives a run: the same policy serves an asyncio run, then a trio run."""
    recorder = Recorder()
    policy = BatchedPolicy(recorder, max_batch_size=4, max_delay_s=0.01)

    async def run() -> list[Any]:
        callers = [Caller(policy, np.full(1, float(i))) for i in range(6)]
        async with anyio.create_task_group() as tg:
            for caller in callers:
                tg.start_soon(caller)
        return [float(caller.result[0]) for caller in callers]

    expected = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert anyio.run(run, backend="asyncio") == expected
    assert anyio.run(run, backend="trio") == expected
    assert policy.statistics().n_requests == 12


CARTPOLE_SPACES = (
    gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32),
    gym.spaces.Discrete(2),
)


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize(
    "action_space",
    [
        gym.spaces.Discrete(3, start=-1),
        gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32),
        gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32),
    ],
)
def test_mlp_rows_equal_one_row_calls(action_space: Any, deterministic: bool) -> None:
    """The example MLP is row-wise: a batch gives what each row gives alone."""
    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32)
    mlp = MLPBatchFn(observation_space, action_space, hidden=16, seed=1)
    observations = np.random.default_rng(0).uniform(-1, 1, size=(9, 5)).astype(np.float32)
    batch = mlp(
        observations,
        deterministic=deterministic,
        rngs=[np.random.default_rng(i) for i in range(9)],
    )
    assert len(batch) == 9
    for i, obs in enumerate(observations):
        [alone] = mlp(obs[None], deterministic=deterministic, rngs=[np.random.default_rng(i)])
        assert action_space.contains(batch[i])
        np.testing.assert_allclose(batch[i], alone, rtol=1e-6)


def test_mlp_rejects_spaces_it_cannot_handle() -> None:
    with pytest.raises(TypeError, match="Box observation space"):
        MLPBatchFn(gym.spaces.Discrete(4), gym.spaces.Discrete(2))
    with pytest.raises(TypeError, match="Discrete or Box action space"):
        MLPBatchFn(CARTPOLE_SPACES[0], gym.spaces.MultiBinary(3))


async def test_runner_episodes_are_the_same_batched_or_not() -> None:
    """Through the runner, batching changes neither returns nor lengths of the episodes."""
    from async_rollout._runner import RolloutRunner

    results = []
    for concurrency in (1, 16):
        policy = batched_mlp_policy(*CARTPOLE_SPACES, max_batch_size=concurrency)
        runner = RolloutRunner(n_episodes=16, max_episode_steps=200, concurrency=concurrency)
        result = await runner.run_with("CartPole-v1", [], policy)
        results.append([(ep.index, ep.total_reward, ep.length) for ep in result.episodes])
        stats = policy.statistics()
        assert stats.n_requests == result.summary["total_steps"]
        if concurrency > 1:
            assert stats.mean_batch_size > 1
    assert results[0] == results[1]
