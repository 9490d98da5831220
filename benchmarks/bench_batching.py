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
        assert s.n_requests == rows, s
        stats.append((s.mean_batch_size, s.p95_queue_latency_s))

    async def policy_main() -> float:
        policy = new_policy()
        rngs = [np.random.default_rng(i) for i in range(CONCURRENCY)]

        async def caller(rng: np.random.Generator) -> None:
            for _ in range(length):
                await policy.compute_action(observation, deterministic=False, rng=rng)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for rng in rngs:
                tg.start_soon(caller, rng)
        elapsed = time.perf_counter() - t0
        keep_statistics(policy)
        return elapsed

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

    return {
        "policy": lambda: run_anyio(policy_main, backend),
        "runner": lambda: run_anyio(runner_main, backend),
        "direct": direct,
    }, stats


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
                    f"cause: {outside_us:.1f} us/row outside batch_fn: suspending and waking "
                    f"each caller on {backend} plus the per-batch stacking and bookkeeping"
                    if met is False
                    else "",
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
        f"compute_action {_length(settings.quick)} times with its own generator; wall time. "
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
        "for everything else: the policy alone can stay inside it, a rollout through the runner "
        "(B1: ~3-4 us a step on its own) cannot. An accelerator-like batch_fn in a worker thread "
        "overlaps with the loop, and the rollout approaches the ceiling."
    )
    return section
