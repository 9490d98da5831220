"""B4: batching: ``BatchedPolicy`` at concurrency 256 vs ``batch_fn`` on full batches directly.

The policy costs ``a + b·n`` per batch of ``n`` rows, in one of two ways:

- ``cpu``: a busy-wait on ``time.perf_counter`` holding the GIL, like a model
  evaluated in Python or in numpy on small arrays; ``BatchedPolicy`` runs it
  inline, on the event loop;
- ``accelerator``: ``time.sleep`` under a lock, one call at a time, like a
  GPU or an inference server (the GIL released while it works);
  ``BatchedPolicy(offload_thread=True)`` runs it in a worker thread.

Candidates, for the same number of rows (policy calls), wall time:

- ``policy``: 256 tasks, each asking ``BatchedPolicy.compute_action`` for one
  action after another with its own generator: the policy's own throughput,
  what the target is about;
- ``runner``: ``RolloutRunner(256, concurrency=256).run_with(NullEnv factory,
  agent=BatchedPolicy(...))``: the same requests made by a rollout, which adds
  the runner's and the env's per-step cost (informational);
- ``direct``: ``batch_fn`` called back to back on full batches of pre-stacked
  observations: the ceiling, what a perfect batcher with free callers reaches.

Each row is ``rows/s of the candidate / rows/s of direct``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np

from async_rollout import BatchedPolicy, RolloutRunner

from ._common import Row, Section, Settings, at_least, interleaved, median, run_anyio, spread
from ._envs import NullEnv

CONCURRENCY = 256
PER_ROW_S = 5e-6
# (kind, fixed cost a, max_batch_size)
CONFIGS = (
    ("cpu", 200e-6, 32),
    ("cpu", 500e-6, 32),
    ("cpu", 1e-3, 32),
    ("cpu", 200e-6, 64),
    ("accelerator", 200e-6, 32),
    ("accelerator", 1e-3, 32),
)
BACKENDS = ("asyncio", "trio")
TARGET = 0.8


def cost_fn(fixed_s: float, per_row_s: float) -> Callable[..., np.ndarray]:
    """A ``batch_fn`` burning ``fixed_s + per_row_s * n`` of CPU, returning action 0 per row."""

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> np.ndarray:
        n = len(observations)
        end = time.perf_counter() + fixed_s + per_row_s * n
        while time.perf_counter() < end:
            pass
        return np.zeros(n, np.int64)

    return batch_fn


def accelerator_fn(fixed_s: float, per_row_s: float) -> Callable[..., np.ndarray]:
    """A ``batch_fn`` sleeping ``fixed_s + per_row_s * n`` under a lock: one call at a time."""
    lock = threading.Lock()

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> np.ndarray:
        n = len(observations)
        with lock:
            time.sleep(fixed_s + per_row_s * n)
        return np.zeros(n, np.int64)

    return batch_fn


class FloorBatcher:
    """The least a batcher with one task per caller can do: the control of the B4 rows.

    Batches of ``batch_size`` rows (fewer once callers have finished, so the
    last batch goes too), the filling caller running ``batch_fn``, each
    waiting caller parked on the leanest wake-up its backend has (an asyncio
    future; on Trio the task itself, rescheduled with its row). No deadline,
    no statistics, no stacking of dicts, no withdrawal on cancellation: what
    is left is waking the callers.
    """

    def __init__(self, batch_fn: Callable[..., Any], batch_size: int, callers: int) -> None:
        self.batch_fn, self.batch_size, self.active = batch_fn, batch_size, callers
        self.observations: list[Any] = []
        self.rngs: list[np.random.Generator] = []
        self.waiters: list[Any] = []
        try:
            asyncio.get_running_loop()
            self.asyncio = True
        except RuntimeError:  # Trio
            self.asyncio = False
        if not self.asyncio:
            import outcome
            import trio.lowlevel

            self.lowlevel, self.value = trio.lowlevel, outcome.Value

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> Any:
        self.observations.append(observation)
        self.rngs.append(rng)
        if len(self.observations) >= min(self.batch_size, self.active):
            return self._flush()[-1]
        if self.asyncio:
            future = asyncio.get_running_loop().create_future()
            self.waiters.append(future)
            return await future
        lowlevel = self.lowlevel
        self.waiters.append(lowlevel.current_task())
        return await lowlevel.wait_task_rescheduled(lambda _: lowlevel.Abort.FAILED)

    def finished(self) -> None:
        """One caller is done: the others may be waiting for a batch it will never join."""
        self.active -= 1
        if self.observations and len(self.observations) >= self.active:
            self._flush()

    def _flush(self) -> Any:
        observations, rngs, waiters = self.observations, self.rngs, self.waiters
        self.observations, self.rngs, self.waiters = [], [], []
        actions = self.batch_fn(np.stack(observations), deterministic=False, rngs=rngs)
        for row, waiter in enumerate(waiters):
            if self.asyncio:
                waiter.set_result(actions[row])
            else:
                self.lowlevel.reschedule(waiter, self.value(actions[row]))
        return actions


def _length(quick: bool) -> int:
    """Requests per caller: 256 callers x 40 = 10,240 rows a repetition."""
    return 10 if quick else 40


def candidates(
    kind: str, backend: str, fixed_s: float, batch_size: int, quick: bool
) -> tuple[dict[str, Callable[[], float]], list[tuple[float, float]]]:
    """Each candidate returns its wall time for the same rows; statistics of the policy runs."""
    length = _length(quick)
    rows = CONCURRENCY * length
    assert rows % batch_size == 0
    offload = kind == "accelerator"
    batch_fn = (accelerator_fn if offload else cost_fn)(fixed_s, PER_ROW_S)
    observation = np.zeros(4, np.float32)
    envs = [NullEnv(length) for _ in range(CONCURRENCY)]
    stats: list[tuple[float, float]] = []  # (mean batch size, p95 queue latency s)

    def new_policy() -> BatchedPolicy:
        return BatchedPolicy(batch_fn, max_batch_size=batch_size, offload_thread=offload)

    def keep_statistics(policy: BatchedPolicy) -> None:
        s = policy.statistics()
        assert s.n_requests >= rows, s
        stats.append((s.mean_batch_size, s.p95_queue_latency_s))

    async def callers_main(policy: BatchedPolicy | FloorBatcher) -> float:
        """Wall time from the start signal to the moment ``rows`` actions have been served.

        Callers keep asking until then, so the policy serves all 256 the whole
        time: throughput at concurrency 256. (With a fixed count per caller,
        callers that drift apart, as Trio's scheduling order makes them, end
        in a tail of part-filled batches that each wait out max_delay_s.)
        """
        rngs = [np.random.default_rng(i) for i in range(CONCURRENCY)]
        start = anyio.Event()
        served = 0
        end = 0.0

        async def caller(rng: np.random.Generator) -> None:
            nonlocal served, end
            await start.wait()
            while served < rows:
                await policy.compute_action(observation, deterministic=False, rng=rng)
                served += 1
                if served == rows:
                    end = time.perf_counter()
            if isinstance(policy, FloorBatcher):
                policy.finished()

        # The callers exist before the clock starts: making 256 tasks (3-5 ms) is
        # the harness's cost, not the policy's.
        async with anyio.create_task_group() as tg:
            for rng in rngs:
                tg.start_soon(caller, rng)
            await anyio.wait_all_tasks_blocked()
            t0 = time.perf_counter()
            start.set()
        return end - t0

    async def policy_main() -> float:
        policy = new_policy()
        elapsed = await callers_main(policy)
        keep_statistics(policy)
        return elapsed

    async def floor_main() -> float:
        return await callers_main(FloorBatcher(batch_fn, batch_size, CONCURRENCY))

    async def runner_main() -> float:
        policy = new_policy()
        t0 = time.perf_counter()
        result = await RolloutRunner(CONCURRENCY, concurrency=CONCURRENCY).run_with(
            lambda worker_index: envs[worker_index], agent=policy
        )
        elapsed = time.perf_counter() - t0
        assert result.summary["total_steps"] == rows, result.summary
        return elapsed

    observations = np.zeros((batch_size, 4), np.float32)
    rngs = [np.random.default_rng(i) for i in range(batch_size)]

    def direct() -> float:
        t0 = time.perf_counter()
        for _ in range(rows // batch_size):
            batch_fn(observations, deterministic=False, rngs=rngs)
        return time.perf_counter() - t0

    chosen = {
        "policy": lambda: run_anyio(policy_main, backend),
        "runner": lambda: run_anyio(runner_main, backend),
        "direct": direct,
    }
    if not offload:
        chosen["floor"] = lambda: run_anyio(floor_main, backend)
    return chosen, stats


def _describe(kind: str, fixed_s: float, batch_size: int, backend: str) -> str:
    how = "inline" if kind == "cpu" else "offload_thread"
    return (
        f"{kind} a={fixed_s * 1e6:.0f}us+{PER_ROW_S * 1e6:.0f}us*n, c={CONCURRENCY}, "
        f"max_batch_size={batch_size}, {how}, {backend}"
    )


def run(settings: Settings) -> Section:
    section = Section("B4", f"Batching: BatchedPolicy at concurrency {CONCURRENCY}")
    backends = [b for b in BACKENDS if b in settings.backends] or list(BACKENDS)
    reps = max(settings.reps, 7)
    rows = CONCURRENCY * _length(settings.quick)
    for kind, fixed_s, batch_size in CONFIGS:
        for backend in backends:
            what = _describe(kind, fixed_s, batch_size, backend)
            cands, stats = candidates(kind, backend, fixed_s, batch_size, settings.quick)
            got = interleaved(cands, reps, log=settings.log, label=f"B4 {what}")
            t_policy, t_runner = median(got["policy"]), median(got["runner"])
            t_direct = median(got["direct"])
            # The warm-up run's statistics are dropped.
            measured = stats[-reps:]
            mean_batch = median(s[0] for s in measured)
            p95_queue = median(s[1] for s in measured)
            ratio = t_direct / t_policy
            met = at_least(ratio, TARGET)
            outside_us = (t_policy - t_direct) / rows * 1e6
            cause = ""
            if met is False:
                cause = (
                    f"cause: {outside_us:.1f} us/row outside batch_fn, mostly suspending and "
                    f"waking each caller on {backend}"
                )
                if "floor" in got:
                    floor_us = (median(got["floor"]) - t_direct) / rows * 1e6
                    budget_us = (1 / TARGET - 1) * t_direct / rows * 1e6
                    cause += (
                        f"; the control batcher spends {floor_us:.1f} us/row on that alone, "
                        f"{'over' if floor_us > budget_us else 'within'} the "
                        f"{budget_us:.1f} us/row the target leaves"
                    )
            section.rows.append(
                Row(
                    "B4",
                    f"{what}: BatchedPolicy (256 callers) vs batch_fn direct",
                    f"{rows / t_policy / 1e3:.1f} vs {rows / t_direct / 1e3:.1f} k rows/s "
                    f"({spread(got['policy'])}/{spread(got['direct'])}); "
                    f"mean batch {mean_batch:.1f}; p95 queue {p95_queue * 1e3:.2f} ms",
                    ratio,
                    f">= {TARGET}x",
                    met,
                    cause,
                )
            )
            if "floor" in got:
                t_floor = median(got["floor"])
                section.rows.append(
                    Row(
                        "B4",
                        f"{what}: control: a minimal batcher (FloorBatcher) vs batch_fn direct",
                        f"{rows / t_floor / 1e3:.1f} k rows/s ({spread(got['floor'])}); "
                        f"BatchedPolicy spends {(t_policy - t_floor) / rows * 1e6:.1f} us/row "
                        "more",
                        t_direct / t_floor,
                    )
                )
            section.rows.append(
                Row(
                    "B4",
                    f"{what}: RolloutRunner + BatchedPolicy (NullEnv) vs batch_fn direct",
                    f"{rows / t_runner / 1e3:.1f} vs {rows / t_direct / 1e3:.1f} k rows/s "
                    f"({spread(got['runner'])}); "
                    f"{(t_runner - t_policy) / rows * 1e6:.1f} us/row more than the policy alone",
                    t_direct / t_runner,
                )
            )
    section.notes.append(
        f"cpu: batch_fn busy-waits a + b*n on time.perf_counter (b = {PER_ROW_S * 1e6:.0f} us "
        "per row) holding the GIL, and BatchedPolicy runs it inline. accelerator: batch_fn "
        "sleeps a + b*n under a lock (one call at a time, the GIL released, like a GPU or an "
        "inference server), and BatchedPolicy(offload_thread=True) runs it in a worker thread, "
        "so the loop serves callers while a batch computes. Every policy keeps the default "
        "max_delay_s=2 ms."
    )
    section.notes.append(
        f"policy (the target's row): {CONCURRENCY} tasks in one task group, each awaiting "
        "compute_action with its own generator, one request after another; wall time from a "
        f"start signal until {rows:,} actions have been served (the tasks are made before the "
        "clock starts; callers keep asking until the count is reached, so the policy serves "
        "256 callers throughout). control (cpu rows): the same callers on FloorBatcher. "
        f"runner (informational): {CONCURRENCY} NullEnv episodes of the same length through "
        "RolloutRunner.run_with, all in flight at once: what a rollout gets, the runner's and "
        "the env's per-step cost included. direct: batch_fn called back to back on full, "
        f"pre-stacked batches, as many rows ({rows:,}). Ratio = rows/s / direct rows/s. Mean "
        "batch size and p95 queue latency (request to the start of its batch) are "
        "BatchedPolicy.statistics() of the policy runs, medians."
    )
    section.notes.append(
        "With a cpu batch_fn nothing overlaps: every microsecond spent outside batch_fn (waking "
        "a caller, and in a rollout the runner's step and the env) adds to the batch's. At "
        "a=200 us and batches of 32, batch_fn costs 11.25 us a row, so 80% leaves 2.8 us a row "
        "for everything else, 2.0 us at batches of 64. The control row (FloorBatcher in "
        "benchmarks/bench_batching.py: a batcher with one task per caller and nothing else, no "
        "deadline, no statistics) shows what waking the callers alone costs on each backend: "
        "where it takes more than the target leaves, no batcher that serves one task per caller "
        "can meet the target, and a rollout through the runner (B1: ~3-4 us a step on its own) "
        "cannot either. An accelerator-like batch_fn in a worker thread overlaps with the loop, "
        "and the rollout approaches the ceiling."
    )
    return section
