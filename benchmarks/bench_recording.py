"""R: the cost of recording to disk: CartPole-v1 inline, concurrency 64, recording on vs off.

Candidates (same seeds, same episodes; asyncio backend):

- ``off``: ``RolloutRunner(n, concurrency=64).run_with("CartPole-v1")``;
- ``on``: the same run into a fresh ``output_dir`` with ``record_trajectory``
  and ``record_event_logs``: ``prepare_output_dir`` and the file sinks it
  returns (stats.json, one ``.npz`` per episode written in worker threads,
  the episode journal, ``events.jsonl``), all inside the timing.

CartPole is the worst case for the ratio: a step costs microseconds, so the
per-episode file work is large next to it. The file system matters as much
as the code: creating a file costs from ~10 us (tmpfs) to ~1 ms (a throttled
virtual disk), and one file per episode is the format. The section probes
the directory's file-creation cost and reports it next to the ratio. Run
alone with ``python -m benchmarks.bench_recording [--quick] [--reps N]
[--episodes N] [--dir DIR]``; the directory defaults to
``$ASYNC_ROLLOUT_BENCH_DIR``, else the system's temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from async_rollout import RolloutRunner
from async_rollout.recording import iter_trajectories

from ._common import Row, Section, Settings, at_most, interleaved, median, run_anyio, spread

ENV_ID = "CartPole-v1"
CONCURRENCY = 64


def _episodes(quick: bool) -> int:
    return 128 if quick else 2000


def _scratch_parent(directory: str | None) -> str:
    return directory or os.environ.get("ASYNC_ROLLOUT_BENCH_DIR") or tempfile.gettempdir()


def _create_cost_us(folder: Path, n: int = 300) -> float:
    """Median microseconds to create, write (3 KB), close and rename one file in ``folder``."""
    probe = folder / "probe"
    probe.mkdir()
    costs = []
    for i in range(n):
        t0 = time.perf_counter()
        tmp = probe / f".f{i}.tmp"
        with open(tmp, "wb") as f:
            f.write(b"x" * 3000)
        os.replace(tmp, probe / f"f{i}")
        costs.append(time.perf_counter() - t0)
    shutil.rmtree(probe)
    return median(costs) * 1e6


def _candidates(
    n: int, scratch: Path
) -> tuple[dict[str, Callable[[], float]], dict[str, list[float]]]:
    returns: dict[str, list[float]] = {}
    runs = iter(range(1_000_000))

    def off() -> float:
        async def main() -> float:
            t0 = time.perf_counter()
            result = await RolloutRunner(n, concurrency=CONCURRENCY).run_with(ENV_ID)
            elapsed = time.perf_counter() - t0
            returns["off"] = result.returns
            return elapsed

        return float(run_anyio(main, "asyncio"))

    def on() -> float:
        folder = scratch / f"run{next(runs)}"

        async def main() -> float:
            t0 = time.perf_counter()
            # Through the runner's own output_dir wiring: what users get.
            runner = RolloutRunner(
                n,
                record_trajectory=True,
                record_event_logs=True,
                concurrency=CONCURRENCY,
                output_dir=str(folder),
            )
            result = await runner.run_with(ENV_ID)
            elapsed = time.perf_counter() - t0
            returns["on"] = result.returns
            return elapsed

        elapsed = float(run_anyio(main, "asyncio"))
        files = sum(1 for _ in iter_trajectories(folder))
        if files != n:
            raise RuntimeError(f"expected {n} trajectory files in {folder}, found {files}")
        shutil.rmtree(folder)
        return elapsed

    return {"off": off, "on": on}, returns


def run(settings: Settings, episodes: int | None = None, directory: str | None = None) -> Section:
    section = Section("R", f"Recording: CartPole-v1 inline, concurrency {CONCURRENCY}")
    n = episodes or _episodes(settings.quick)
    parent = _scratch_parent(directory)
    with tempfile.TemporaryDirectory(prefix="bench_recording_", dir=parent) as scratch:
        before = _create_cost_us(Path(scratch))
        cands, returns = _candidates(n, Path(scratch))
        got = interleaved(cands, max(settings.reps, 5), log=settings.log, label="R recording")
        after = _create_cost_us(Path(scratch))
    same = returns["on"] == returns["off"]
    on, off = median(got["on"]), median(got["off"])
    section.rows.append(
        Row(
            "R",
            f"CartPole-v1, {n} eps, c={CONCURRENCY}: recording on (trajectories + events) vs off",
            f"{on * 1e3:.0f} vs {off * 1e3:.0f} ms "
            f"({spread(got['on'])}/{spread(got['off'])}); {parent}: file create+rename "
            f"{before:.0f} us before, {after:.0f} us after" + ("" if same else "; RETURNS DIFFER"),
            on / off,
            "<= 1.5x",
            at_most(on / off, 1.5),
        )
    )
    section.notes.append(
        "Both candidates derive the same seeds (base seed 0) and give the same returns. "
        "'on' includes preparing the output directory, writing one .npz per episode in "
        "worker threads (awaited by the episode's worker), the journal and event-log lines "
        "(flushed), and stats.json; the folder is checked for every file, then deleted "
        "outside the timing. The file-creation probe (300 files, median) runs before and "
        "after the candidates in the same directory: a slow or throttled file system shows "
        "there, not in the code."
    )
    return section


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_recording")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 episodes")
    parser.add_argument("--reps", type=int, default=7, help="repetitions per candidate")
    parser.add_argument("--episodes", type=int, help="episodes per run (default 2000)")
    parser.add_argument("--dir", help="where to write (default: $ASYNC_ROLLOUT_BENCH_DIR or temp)")
    args = parser.parse_args()
    settings = Settings(quick=args.quick, reps=args.reps)
    section = run(settings, args.episodes, args.dir)
    for row in section.rows:
        print(
            f"{row.name}: {row.measured} -> {row.ratio_str()} (target {row.target}: "
            f"{row.met_str()})"
        )


if __name__ == "__main__":
    main()
