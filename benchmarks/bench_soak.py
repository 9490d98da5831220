"""S: soak: 10,000 episodes through ChaosWrapper at 1% hangs and 0.1% crashes per step.

Not a test: a long run that shows the reliability machinery holding up. Run
by hand from the repository root::

    python -m benchmarks.bench_soak [--episodes 10000] [--concurrency 64]
        [--step-timeout 0.2] [--latency 0.005] [--length 10] [--backend asyncio] [--quick]

``run(settings)`` returns the same rows as a section of ``python -m benchmarks``.

The run: ``ScriptedEnv`` episodes of ``LENGTH`` steps awaiting ``latency``
each, wrapped in ``ChaosWrapper(hang_prob=0.01, step_error_prob=0.001)`` with
one ``ChaosSchedule`` shared by every env (a retried episode draws fresh
faults and may succeed), under ``RolloutRunner(on_env_error="retry",
step_timeout=...)``. A hang awaits forever: only the step deadline ends it.

What it checks and reports:

- the run completes, and each episode index has exactly one result (a sink
  counts ``on_episode_end`` per index; none is ``"cancelled"``);
- no env is left open: an ``EnvTracker`` counts every ``ScriptedEnv`` made
  and closed (the replacements of failed envs included);
- memory stays flat: a sink samples the process's RSS every ``SAMPLE_EVERY``
  episodes; the first sample and the last are compared;
- episodes/s and steps/s;
- time to detect a hang: a probe wrapper outside the ChaosWrapper stamps
  each step call; when the call is cancelled by the step deadline it keeps
  the time since the call started ("fired"); the sink then sees the failed
  attempt (``on_retry`` or ``on_episode_end``) and keeps the time from the
  call's start to then ("recorded"). Both are compared with the configured
  ``step_timeout``: the excess is what the event loop added;
- counts per outcome, re-runs, and the faults the ChaosSchedule injected.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from async_rollout import AsyncEnvWrapper, EpisodeResult, RolloutRunner, Sink
from async_rollout.testing import ChaosSchedule, ChaosWrapper, EnvTracker, ScriptedEnv

from ._common import BACKENDS, Row, Section, Settings, at_most, run_anyio, table_lines

MODULE = "benchmarks.bench_soak"
EPISODES = 10_000
LENGTH = 10
LATENCY_S = 0.005
CONCURRENCY = 64
STEP_TIMEOUT_S = 0.2
HANG_PROB = 0.01
CRASH_PROB = 0.001
MAX_RETRIES = 2
CHAOS_SEED = 2024
SAMPLE_EVERY = 500
#: Hang detection may exceed the deadline by this factor (the loop's scheduling delay).
DETECT_TARGET = 1.1
#: Memory counts as flat when RSS grows, beyond what the run keeps by design, by at most this
#: fraction of the first sample.
UNEXPLAINED_TARGET = 0.05


def rss_kib() -> int:
    """Resident set size of this process, in KiB (``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and what it holds (containers, dataclasses), each object counted once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_size(x, seen) for x in obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        size += sum(deep_size(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return size


class GcWatch:
    """Times the garbage collector's pauses during a run (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((int(info["generation"]), time.perf_counter() - self._start))

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


@dataclass
class SoakConfig:
    """The knobs of one soak run."""

    episodes: int = EPISODES
    concurrency: int = CONCURRENCY
    step_timeout: float = STEP_TIMEOUT_S
    latency: float = LATENCY_S
    length: int = LENGTH
    backend: str = "asyncio"


@dataclass
class Probe:
    """What the probe wrapper and the sink saw, shared by both."""

    #: Start of the step call the step deadline cancelled, per env seed (one attempt at a time).
    pending: dict[int, float] = field(default_factory=dict)
    fired: list[float] = field(default_factory=list)
    recorded: list[float] = field(default_factory=list)
    unmatched: int = 0


class DeadlineProbe(AsyncEnvWrapper):
    """Outermost wrapper: notes when a step call is cancelled, and how long after it started."""

    def __init__(self, env: Any, probe: Probe) -> None:
        super().__init__(env)
        self.probe = probe
        self.seed: int | None = None

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        self.seed = seed
        return await self.env.reset(seed=seed, options=options)

    async def step(self, action: Any) -> Any:
        started = anyio.current_time()
        try:
            return await self.env.step(action)
        except anyio.get_cancelled_exc_class():
            assert self.seed is not None
            self.probe.fired.append(anyio.current_time() - started)
            self.probe.pending[self.seed] = started
            raise


class SoakSink(Sink):
    """Counts results per index, retries and outcomes; samples RSS; matches timeouts to hangs.

    At each RSS sample it also drops the closed envs from the ``EnvTracker``'s
    lists (counting them), so the tracker does not keep every env ever made alive.
    """

    def __init__(self, probe: Probe, tracker: EnvTracker, sample_every: int) -> None:
        self.probe = probe
        self.tracker = tracker
        self.sample_every = sample_every
        self.made = 0
        self.closed = 0
        self.env_steps = 0
        self.results_per_index: Counter[int] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.rss: list[tuple[int, int]] = []

    def _timed_out(self, result: EpisodeResult) -> None:
        if result.outcome != "timeout" or result.env_seed is None:
            return
        started = self.probe.pending.pop(result.env_seed, None)
        if started is None:
            self.probe.unmatched += 1
        else:
            self.probe.recorded.append(anyio.current_time() - started)

    def on_retry(self, failed: EpisodeResult, attempt: int, delay_s: float) -> None:
        self.retries[failed.outcome] += 1
        self._timed_out(failed)

    def on_episode_end(self, result: EpisodeResult) -> None:
        self._timed_out(result)
        self.results_per_index[result.index] += 1
        self.outcomes[result.outcome] += 1
        done = sum(self.outcomes.values())
        if done % self.sample_every == 0:
            self.prune()
            self.rss.append((done, rss_kib()))

    def prune(self) -> None:
        """Count the closed envs and drop them from the tracker's lists."""
        tracker = self.tracker
        self.closed += len(tracker.closed)
        tracker.closed.clear()
        still_open = tracker.open
        self.made += len(tracker.created) - len(still_open)
        self.env_steps += sum(env.steps for env in tracker.created if env.closed)
        tracker.created[:] = still_open


@dataclass
class SoakResult:
    """Everything one soak run measured."""

    config: SoakConfig
    wall_s: float
    total_steps: int
    env_steps: int
    summary_outcomes: dict[str, int]
    sink: SoakSink
    probe: Probe
    tracker: EnvTracker
    faults: Counter[str]
    rss_before_kib: int
    rss_after_kib: int
    retained_bytes: int
    gc_pauses: list[tuple[int, float]]
    indices_ok: bool
    missing: int
    duplicated: int


def soak(config: SoakConfig) -> SoakResult:
    """Run one soak rollout (in its own event loop) and collect what it showed."""
    probe = Probe()
    tracker = EnvTracker()
    schedule = ChaosSchedule()
    sink = SoakSink(probe, tracker, SAMPLE_EVERY)

    def make() -> DeadlineProbe:
        env = ScriptedEnv(config.length, step_latency=config.latency, tracker=tracker)
        chaos = ChaosWrapper(
            env,
            seed=CHAOS_SEED,
            hang_prob=HANG_PROB,
            step_error_prob=CRASH_PROB,
            schedule=schedule,
        )
        return DeadlineProbe(chaos, probe)

    runner = RolloutRunner(
        config.episodes,
        concurrency=config.concurrency,
        step_timeout=config.step_timeout,
        on_env_error="retry",
        max_retries=MAX_RETRIES,
        sinks=[sink],
    )

    async def main() -> tuple[float, Any]:
        t0 = time.perf_counter()
        result = await runner.run_with(make)
        return time.perf_counter() - t0, result

    # Every failed attempt logs a warning: keep the soak's output to its figures.
    log = logging.getLogger("async_rollout")
    level = log.level
    log.setLevel(logging.ERROR)
    gc.collect()
    rss_before = rss_kib()
    try:
        with GcWatch() as watch:
            wall, result = run_anyio(main, config.backend)
    finally:
        log.setLevel(level)
    gc.collect()
    rss_after = rss_kib()
    indices = [ep.index for ep in result.episodes]
    expected = set(range(config.episodes))
    per_index = sink.results_per_index
    missing = len(expected - set(per_index))
    duplicated = sum(1 for n in per_index.values() if n > 1)
    indices_ok = (
        indices == sorted(expected)
        and missing == 0
        and duplicated == 0
        and set(per_index) == expected
    )
    return SoakResult(
        config=config,
        wall_s=wall,
        total_steps=int(result.summary["total_steps"]),
        env_steps=sink.env_steps + sum(env.steps for env in tracker.created),
        summary_outcomes={k: v for k, v in result.summary["outcomes"].items() if v},
        sink=sink,
        probe=probe,
        tracker=tracker,
        faults=schedule.counts(),
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        # Kept by design, growing with the episodes: the results and the schedule's counts.
        retained_bytes=deep_size(result.episodes)
        + deep_size(schedule._attempts)
        + deep_size(schedule.faults),
        gc_pauses=watch.pauses,
        indices_ok=indices_ok,
        missing=missing,
        duplicated=duplicated,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _detect_row(name: str, values: list[float], limit: float, gc_note: str) -> Row:
    if not values:
        return Row("S", name, "no hang was detected", None)
    arr = np.asarray(values)
    mean = float(arr.mean())
    p50, p99 = np.percentile(arr, [50, 99])
    measured = (
        f"deadline {_ms(limit)}: mean {_ms(mean)} (+{_ms(mean - limit)}), p50 {_ms(p50)}, "
        f"p99 {_ms(p99)}, max {_ms(float(arr.max()))}; n={arr.size}; {gc_note}"
    )
    ratio = mean / limit
    return Row("S", name, measured, ratio, f"<= {DETECT_TARGET}x", at_most(ratio, DETECT_TARGET))


def rows(res: SoakResult) -> list[Row]:
    """The section's rows for one soak run."""
    c = res.config
    what = (
        f"{c.episodes:,} eps x {c.length} x {c.latency * 1e3:g} ms, c={c.concurrency}, {c.backend}"
    )
    sink, probe, tracker = res.sink, res.probe, res.tracker
    made = sink.made + len(tracker.created)
    closed = sink.closed + len(tracker.closed)
    left_open = len(tracker.open)
    rss = sink.rss
    first_n, first_kib = rss[0] if rss else (0, res.rss_before_kib)
    last_n, last_kib = rss[-1] if rss else (c.episodes, res.rss_after_kib)
    peak = max(k for _, k in rss) if rss else res.rss_after_kib
    growth_kib = last_kib - first_kib
    # What the run keeps grows with the episodes: its share between the two samples.
    kept_kib = res.retained_bytes / 1024 * (last_n - first_n) / max(c.episodes, 1)
    unexplained = (growth_kib - kept_kib) / first_kib if first_kib else None
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(res.summary_outcomes.items()))
    retries = ", ".join(f"after {k} {v:,}" for k, v in sorted(sink.retries.items()))
    faults = ", ".join(f"{k} {v:,}" for k, v in sorted(res.faults.items()))
    cancelled = sink.outcomes.get("cancelled", 0)
    gen2 = [p for g, p in res.gc_pauses if g == 2]
    longest = max((p for _, p in res.gc_pauses), default=0.0)
    gc_note = (
        f"longest GC pause {_ms(longest)} ({len(gen2)} full collections, longest "
        f"{_ms(max(gen2, default=0.0))})"
    )
    return [
        Row(
            "S",
            f"soak {what}: run completes, one result per index",
            f"{sum(sink.results_per_index.values()):,} results for {c.episodes:,} indices; "
            f"{res.missing} missing, {res.duplicated} duplicated, {cancelled} cancelled",
            None,
            "exactly one each",
            res.indices_ok and cancelled == 0,
        ),
        Row(
            "S",
            f"soak {what}: throughput",
            f"{c.episodes / res.wall_s:,.0f} eps/s, {res.env_steps / res.wall_s:,.0f} env steps/s "
            f"({res.wall_s:.1f} s wall; {res.env_steps:,} env steps, failed attempts included, "
            f"{res.total_steps:,} in the results); fault-free latency bound "
            f"{c.concurrency / (c.length * c.latency):,.0f} eps/s",
            None,
        ),
        _detect_row(
            f"soak {what}: hang detection, call start -> deadline fired",
            probe.fired,
            c.step_timeout,
            gc_note,
        ),
        _detect_row(
            f"soak {what}: hang detection, call start -> timeout result recorded",
            probe.recorded,
            c.step_timeout,
            f"{probe.unmatched} timeouts not matched to a hang",
        ),
        Row(
            "S",
            f"soak {what}: outcomes",
            f"{outcomes}; re-runs {sum(sink.retries.values()):,} ({retries}); "
            f"faults injected: {faults}",
            None,
        ),
        Row(
            "S",
            f"soak {what}: envs closed (EnvTracker)",
            f"{made:,} made, {closed:,} closed, {left_open} open",
            None,
            "0 open",
            left_open == 0 and made == closed,
        ),
        Row(
            "S",
            f"soak {what}: RSS growth not explained by what the run keeps",
            f"RSS {first_kib / 1024:.1f} MiB at {first_n:,} eps -> {last_kib / 1024:.1f} MiB at "
            f"{last_n:,} (peak {peak / 1024:.1f}; {growth_kib / 1024:+.1f} MiB, of which "
            f"{kept_kib / 1024:.1f} MiB kept by design: results and chaos counts, "
            f"{res.retained_bytes / max(c.episodes, 1):.0f} B per episode); "
            f"{res.rss_before_kib / 1024:.1f} MiB before the run, "
            f"{res.rss_after_kib / 1024:.1f} after",
            unexplained,
            f"<= {UNEXPLAINED_TARGET:.0%} of first",
            at_most(unexplained, UNEXPLAINED_TARGET),
            ratio_text=None if unexplained is None else f"{unexplained:+.1%}",
        ),
    ]


NOTES = [
    "ScriptedEnv (fixed step latency) inside ChaosWrapper(hang_prob=0.01, step_error_prob=0.001, "
    f"seed {CHAOS_SEED}, one ChaosSchedule shared by every env) inside a probe wrapper; "
    f"RolloutRunner(on_env_error='retry', max_retries={MAX_RETRIES}, step_timeout), "
    "RandomPolicy, one run; the runner's warnings are silenced during it.",
    "A hang awaits forever (anyio.sleep_forever): only the step deadline ends it. A retry on a "
    "fresh env draws fresh faults (attempt n of its seed), so nearly every episode completes; "
    "one whose every attempt failed keeps the last failure's outcome. 'env steps' counts the "
    "steps that reached the ScriptedEnvs, failed attempts included; the summary's total_steps "
    "counts the steps of each episode's last attempt only.",
    "Hang detection: 'fired' is the time from the start of the step call that hung to the "
    "cancellation reaching it; 'recorded' runs to the moment the loop hands the failed "
    "attempt to the sinks (on_retry / on_episode_end). The excess over step_timeout is the "
    "event loop's scheduling delay under this load; the tail follows GC pauses and other "
    "processes on the machine.",
    f"RSS: /proc/self/status VmRSS, sampled in the sink every {SAMPLE_EVERY} episodes, when "
    "the sink also drops closed envs from the EnvTracker (counting them). Kept by design: "
    "the runner's EpisodeResults and the ChaosSchedule's attempt counts and fault list, "
    "measured after the run (sys.getsizeof, deep) and prorated to the sampled span; the "
    "target bounds the growth beyond that.",
]


def run(settings: Settings, config: SoakConfig | None = None) -> Section:
    """The soak section: one run with ``config`` (smaller when ``settings.quick``)."""
    if config is None:
        config = SoakConfig(episodes=1_000 if settings.quick else EPISODES)
    settings.log(
        f"S soak: {config.episodes:,} episodes, c={config.concurrency}, "
        f"step_timeout={config.step_timeout}s, latency={config.latency}s, {config.backend}"
    )
    res = soak(config)
    section = Section("S", "Soak: fault injection with retries")
    section.rows = rows(res)
    section.notes = list(NOTES)
    return section


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.bench_soak``: run the soak and print its rows."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--episodes", type=int, default=None, help=f"default {EPISODES:,}")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--step-timeout", type=float, default=STEP_TIMEOUT_S, help="seconds")
    parser.add_argument("--latency", type=float, default=LATENCY_S, help="seconds per step")
    parser.add_argument("--length", type=int, default=LENGTH, help="steps per episode")
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 episodes")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick, verbose=not args.quiet)
    config = SoakConfig(
        episodes=args.episodes or (1_000 if args.quick else EPISODES),
        concurrency=args.concurrency,
        step_timeout=args.step_timeout,
        latency=args.latency,
        length=args.length,
        backend=args.backend,
    )
    t0 = time.perf_counter()
    section = run(settings, config)
    print("\n".join(table_lines(section.rows)))
    print()
    for note in section.notes:
        print(f"- {note}")
    failed = [row for row in section.rows if row.met is False]
    print(f"\n({time.perf_counter() - t0:.0f} s; pid {os.getpid()}; {len(failed)} checks failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
