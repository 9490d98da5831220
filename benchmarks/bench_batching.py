"""B4: batching: ``BatchedPolicy`` at concurrency 256 vs ``batch_fn`` on full batches directly.

The policy costs ``a + b·n`` of CPU per batch of ``n`` rows (a busy-wait on
``time.perf_counter``: a model's fixed cost per call plus its cost per row).

Candidates, for the same number of rows (policy calls):

- ``batched``: ``RolloutRunner(256, concurrency=256).run_with(NullEnv factory,
  agent=BatchedPolicy(batch_fn, max_batch_size=B))``: 256 episodes in flight at
  once, each asking the policy for one action a step; the env does no work but
  yields once a call;
- ``direct``: ``batch_fn`` called back to back on full batches of ``B``
  pre-stacked observations, as many rows: the ceiling, what a perfect batcher
  with free envs would reach.

Throughput is rows per wall-clock second; the row's ratio is ``batched / direct``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from async_rollout import BatchedPolicy, RolloutRunner

from ._common import Row, Section, Settings, at_least, interleaved, median, run_anyio, spread
from ._envs import NullEnv

CONCURRENCY = 256
PER_ROW_S = 5e-6
# (fixed cost a, max_batch_size)
CONFIGS = ((200e-6, 32), (500e-6, 32), (1e-3, 32), (200e-6, 64))
BACKENDS = ("asyncio", "trio")


def cost_fn(fixed_s: float, per_row_s: float) -> Callable[..., np.ndarray]:
    """A ``batch_fn`` burning ``fixed_s + per_row_s * n`` of CPU, returning action 0 per row."""

    def batch_fn(observations: Any, *, deterministic: bool, rngs: list[Any]) -> np.ndarray:
        n = len(observations)
        end = time.perf_counter() + fixed_s + per_row_s * n
        while time.perf_counter() < end:
            pass
        return np.zeros(n, np.int64)

    return batch_fn


def _length(quick: bool) -> int:
    """Steps per episode: 256 episodes x 40 steps = 10,240 rows a repetition."""
    return 10 if quick else 40


def candidates(
    backend: str, fixed_s: float, batch_size: int, quick: bool
) -> tuple[dict[str, Callable[[], float]], list[tuple[float, float]]]:
    """Each candidate returns its wall time for the same number of rows; stats per batched run."""
    length = _length(quick)
    rows = CONCURRENCY * length
    assert rows % batch_size == 0
    batch_fn = cost_fn(fixed_s, PER_ROW_S)
    envs = [NullEnv(length) for _ in range(CONCURRENCY)]
    stats: list[tuple[float, float]] = []  # (mean batch size, p95 queue latency s)

    def factory(worker_index: int) -> NullEnv:
        return envs[worker_index]

    async def batched_main() -> float:
        policy = BatchedPolicy(batch_fn, max_batch_size=batch_size)
        t0 = time.perf_counter()
        result = await RolloutRunner(CONCURRENCY, concurrency=CONCURRENCY).run_with(
            factory, agent=policy
        )
        elapsed = time.perf_counter() - t0
        assert result.summary["total_steps"] == rows, result.summary
        s = policy.statistics()
        assert s.n_requests == rows, s
        stats.append((s.mean_batch_size, s.p95_queue_latency_s))
        return elapsed

    observations = np.zeros((batch_size, 4), np.float32)
    rngs = [np.random.default_rng(i) for i in range(batch_size)]

    def direct() -> float:
        t0 = time.perf_counter()
        for _ in range(rows // batch_size):
            batch_fn(observations, deterministic=False, rngs=rngs)
        return time.perf_counter() - t0

    return {"batched": lambda: run_anyio(batched_main, backend), "direct": direct}, stats


def run(settings: Settings) -> Section:
    section = Section("B4", f"Batching: BatchedPolicy at concurrency {CONCURRENCY}")
    backends = [b for b in BACKENDS if b in settings.backends] or list(BACKENDS)
    reps = max(settings.reps, 7)
    rows = CONCURRENCY * _length(settings.quick)
    missed = False
    for fixed_s, batch_size in CONFIGS:
        for backend in backends:
            label = f"B4 a={fixed_s * 1e6:.0f}us B={batch_size} {backend}"
            cands, stats = candidates(backend, fixed_s, batch_size, settings.quick)
            got = interleaved(cands, reps, log=settings.log, label=label)
            t_batched, t_direct = median(got["batched"]), median(got["direct"])
            # The warm-up run's statistics are dropped.
            measured_stats = stats[-reps:]
            mean_batch = median(s[0] for s in measured_stats)
            p95_queue = median(s[1] for s in measured_stats)
            ratio = t_direct / t_batched
            met = at_least(ratio, 0.8)
            missed = missed or met is False
            extra_us = (t_batched - t_direct) / rows * 1e6
            note = (
                f"cause: {extra_us:.1f} us/row spent outside batch_fn: the per-request cost "
                f"of suspending and waking each caller (~{3 if backend == 'asyncio' else 5}"
                f" us/request on {backend}, measured by the author of _batching.py), the rest "
                "the runner's and env's per-step cost, which the direct baseline does not pay; "
                "a minimal hand-written asyncio batcher scored about 0.77 at a=200 us"
                if met is False
                else ""
            )
            section.rows.append(
                Row(
                    "B4",
                    f"a={fixed_s * 1e6:.0f}us+{PER_ROW_S * 1e6:.0f}us*n, c={CONCURRENCY}, "
                    f"max_batch_size={batch_size}, {backend}: BatchedPolicy vs batch_fn direct",
                    f"{rows / t_batched / 1e3:.1f} vs {rows / t_direct / 1e3:.1f} k rows/s "
                    f"({spread(got['batched'])}/{spread(got['direct'])}); "
                    f"mean batch {mean_batch:.1f}; p95 queue {p95_queue * 1e3:.2f} ms",
                    ratio,
                    ">= 0.8x",
                    met,
                    note,
                )
            )
    section.notes.append(
        f"batch_fn busy-waits a + b*n on time.perf_counter (b = {PER_ROW_S * 1e6:.0f} us per "
        f"row) and returns zeros. batched: {CONCURRENCY} NullEnv episodes of "
        f"{_length(settings.quick)} steps, all in flight at once, through RolloutRunner with "
        "BatchedPolicy (default max_delay_s=2 ms), wall time of run_with. direct: batch_fn "
        "called back to back on full, pre-stacked batches of the same size, for the same "
        f"number of rows ({rows:,}). Ratio = batched rows/s / direct rows/s. Mean batch size "
        "and p95 queue latency (first request of a batch to its start) are "
        "BatchedPolicy.statistics() of each repetition, medians."
    )
    section.notes.append(
        "The gap to the direct ceiling is everything that is not batch_fn: per step the "
        "runner, the env's yield, and BatchedPolicy suspending and waking each caller "
        "(~3 us per request on asyncio, ~5 us on trio, measured by the author of "
        "_batching.py); a minimal hand-written asyncio batcher scored about 0.77 at a=200 us."
    )
    if missed:
        section.notes.append(
            "Cause of the B4 misses: the per-request cost of suspending and waking each caller "
            "(~3 us/request on asyncio, ~5 us on trio, per the author of _batching.py) plus the "
            "runner's and env's per-step cost are paid outside batch_fn and shrink the fraction "
            "most when a is small; a minimal hand-written asyncio batcher scored about 0.77 at "
            "a=200 us."
        )
    return section
