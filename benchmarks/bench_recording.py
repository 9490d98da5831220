"""R: the cost of recording to disk: CartPole-v1 inline, concurrency 64, recording on vs off.

Candidates (same seeds, same episodes; asyncio backend):

- ``off``: ``RolloutRunner(n, concurrency=64).run_with("CartPole-v1")``;
- ``on``: the same run into a fresh ``output_dir`` with ``record_trajectory``
  and ``record_event_logs``: ``prepare_output_dir`` and the file sinks it
  returns (stats.json, one ``.npz`` per episode, the episode journal,
  ``events.jsonl``, the writer process that writes them), all inside the
  timing, up to the last file written.

CartPole is the worst case for the ratio: a step costs microseconds, so the
per-episode file work is large next to it. The file system matters as much
as the code: creating a file costs from ~10 us (tmpfs) to ~1 ms (a throttled
virtual disk), and one file per episode is the format. So the section
measures each directory it is given, by default the system's temporary
directory (a disk, usually) and ``/dev/shm`` (tmpfs) when it exists, one row
each, and probes the directory's file-creation cost next to the ratio.

Every repetition of ``on`` writes into a folder of its own, and all of them
are deleted only when the section is done. Deleting a folder between two
repetitions made the next repetition's files slower to create on ext4
(measured on this VM: ~40 us per file in a fresh directory, ~700 us right
after thousands of files were deleted nearby; the probe showed the same
before the code changed), so the ratio measured the benchmark's own churn.

Run alone with ``python -m benchmarks.bench_recording [--quick] [--reps N]
[--episodes N] [--dir DIR ...]``; ``--dir`` may be repeated, and defaults to
``$ASYNC_ROLLOUT_BENCH_DIR`` if set, else the two directories above.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from async_rollout import RolloutRunner
from async_rollout.recording._trajectories import trajectory_files

from ._common import Row, Section, Settings, at_most, interleaved, median, run_anyio, spread

ENV_ID = "CartPole-v1"
CONCURRENCY = 64


def _episodes(quick: bool) -> int:
    return 128 if quick else 2000


def _scratch_parents(directories: Sequence[str] | None) -> list[str]:
    if directories:
        return list(directories)
    if os.environ.get("ASYNC_ROLLOUT_BENCH_DIR"):
        return [os.environ["ASYNC_ROLLOUT_BENCH_DIR"]]
    parents = [tempfile.gettempdir()]
    if os.path.isdir("/dev/shm") and os.path.realpath(parents[0]) != "/dev/shm":
        parents.append("/dev/shm")
    return parents


def _create_cost_us(folder: Path, n: int = 300) -> float:
    """Median microseconds to create, write (3 KB), close and rename one file in ``folder``.

    The files stay until the section ends (see the module documentation).
    """
    folder.mkdir()
    costs = []
    for i in range(n):
        t0 = time.perf_counter()
        tmp = folder / f".f{i}.tmp"
        with open(tmp, "wb") as f:
            f.write(b"x" * 3000)
        os.replace(tmp, folder / f"f{i}")
        costs.append(time.perf_counter() - t0)
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
        files = len(trajectory_files(folder))
        if files != n:
            raise RuntimeError(f"expected {n} trajectory files in {folder}, found {files}")
        # Kept until the section ends: see the module documentation.
        return elapsed

    return {"off": off, "on": on}, returns


def run(
    settings: Settings, episodes: int | None = None, directories: Sequence[str] | None = None
) -> Section:
    section = Section("R", f"Recording: CartPole-v1 inline, concurrency {CONCURRENCY}")
    n = episodes or _episodes(settings.quick)
    for parent in _scratch_parents(directories):
        with tempfile.TemporaryDirectory(prefix="bench_recording_", dir=parent) as scratch:
            before = _create_cost_us(Path(scratch) / "probe_before")
            cands, returns = _candidates(n, Path(scratch))
            got = interleaved(cands, settings.reps, log=settings.log, label=f"R {parent}")
            after = _create_cost_us(Path(scratch) / "probe_after")
        same = returns["on"] == returns["off"]
        on, off = median(got["on"]), median(got["off"])
        section.rows.append(
            Row(
                "R",
                f"CartPole-v1, {n} eps, c={CONCURRENCY}, {parent} ({_fs_type(parent)}): "
                "recording on (trajectories + events) vs off",
                f"{on * 1e3:.0f} vs {off * 1e3:.0f} ms, median of {settings.reps} "
                f"({spread(got['on'])}/{spread(got['off'])}); file create+rename "
                f"{before:.0f} us before, {after:.0f} us after"
                + ("" if same else "; RETURNS DIFFER"),
                on / off,
                "<= 1.5x",
                at_most(on / off, 1.5),
            )
        )
    section.notes.append(
        "Both candidates derive the same seeds (base seed 0) and give the same returns. "
        "'on' includes preparing the output directory, starting the writer process, "
        "encoding every episode on the event loop and handing it over, and waiting at the "
        "end for every file and line to be written, and stats.json; each folder is checked "
        "for every file. Folders are deleted when the section is done, not between "
        "repetitions (see the module documentation). The file-creation probe (300 files, "
        "median) runs before and after the candidates in the same directory: a slow or "
        "throttled file system shows there, not in the code."
    )
    return section


def _fs_type(path: str) -> str:
    """The file system type of ``path`` from /proc/mounts (Linux), or ``?``."""
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return "?"
    real = os.path.realpath(path)
    best = ("", "?")
    for point, kind in mounts:
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best[0]):
            best = (point, kind)
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_recording")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 episodes")
    parser.add_argument("--reps", type=int, default=7, help="repetitions per candidate")
    parser.add_argument("--episodes", type=int, help="episodes per run (default 2000)")
    parser.add_argument(
        "--dir",
        action="append",
        help="where to write; repeat for several (default: $ASYNC_ROLLOUT_BENCH_DIR, "
        "else the temporary directory and /dev/shm)",
    )
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
