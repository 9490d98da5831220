"""Shared machinery: interleaved repetitions, backends, memory probes, the table, the machine."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent

BACKENDS = ("asyncio", "uvloop", "trio")


@dataclass
class Settings:
    """What a run measures and how hard it tries."""

    quick: bool = False
    reps: int = 5
    backends: tuple[str, ...] = BACKENDS
    maze_python: str | None = None
    verbose: bool = True

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"  .. {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the table: a ratio of two candidates measured side by side."""

    section: str
    name: str
    measured: str
    ratio: float | None
    target: str = ""
    met: bool | None = None
    note: str = ""
    ratio_text: str | None = None

    def ratio_str(self) -> str:
        if self.ratio_text is not None:
            return self.ratio_text
        if self.ratio is None:
            return "-"
        # Three decimals below 10, so a ratio just over its target does not print as on it.
        return f"{self.ratio:.3f}x" if self.ratio < 10 else f"{self.ratio:.1f}x"

    def met_str(self) -> str:
        if self.met is None:
            return ""
        return "yes" if self.met else "NO"


@dataclass
class Section:
    """The rows of one section plus free-text findings for RESULTS.md."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def at_most(ratio: float | None, limit: float) -> bool | None:
    return None if ratio is None else ratio <= limit


def at_least(ratio: float | None, limit: float) -> bool | None:
    return None if ratio is None else ratio >= limit


# --------------------------------------------------------------------------- timing


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def spread(values: list[float]) -> str:
    """Relative half-range of repetitions, e.g. ``±3%``: how noisy a median is."""
    if len(values) < 2:
        return ""
    m = statistics.median(values)
    if m == 0:
        return ""
    return f"±{(max(values) - min(values)) / 2 / m * 100:.0f}%"


def interleaved(
    candidates: Mapping[str, Callable[[], float]],
    reps: int,
    *,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> dict[str, list[float]]:
    """Run each candidate ``reps`` times, interleaved; each call returns its own measurement.

    The order rotates from one repetition to the next so no candidate always
    runs first (warm caches, CPU frequency) or last. A garbage collection
    before each call starts every candidate from the same heap state.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            gc.collect()
            candidates[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            gc.collect()
            out[name].append(candidates[name]())
        if log is not None:
            log(
                f"{label} rep {rep + 1}/{reps}: "
                + ", ".join(f"{n}={out[n][-1]:.4g}" for n in names)
            )
    return out


# --------------------------------------------------------------------------- backends


def run_anyio(fn: Callable[[], Awaitable[Any]], backend: str) -> Any:
    """Run ``fn`` under anyio on ``backend`` (``asyncio``, ``uvloop`` or ``trio``)."""
    if backend == "asyncio":
        return anyio.run(fn, backend="asyncio")
    if backend == "uvloop":
        return anyio.run(fn, backend="asyncio", backend_options={"use_uvloop": True})
    if backend == "trio":
        return anyio.run(fn, backend="trio")
    raise ValueError(f"unknown backend {backend!r}")


def run_asyncio(fn: Callable[[], Awaitable[Any]], backend: str) -> Any:
    """Run ``fn`` on a bare asyncio loop (uvloop's for ``uvloop``), without anyio's runner."""
    if backend == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(fn())  # type: ignore[arg-type]
    if backend == "asyncio":
        return asyncio.run(fn())  # type: ignore[arg-type]
    raise ValueError(f"a bare asyncio loop cannot run on {backend!r}")


# --------------------------------------------------------------------------- memory


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
            except OSError:
                continue
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc/<pid>/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size of one process, in KiB (``/proc/<pid>/smaps_rollup``)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(pid: int) -> tuple[int, int]:
    """PSS of ``pid`` and its descendants summed, in KiB, and how many processes that was."""
    pids = process_tree(pid)
    return sum(pss_kib(p) for p in pids), len(pids)


class PssSampler:
    """Samples the PSS of a process tree from a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kib, procs = tree_pss_kib(self.pid)
            if kib > self.peak_kib:
                self.peak_kib, self.peak_procs = kib, procs
            self._stop.wait(self.interval)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child_env() -> dict[str, str]:
    """Environment of benchmark subprocesses: the repository importable, nothing else changed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def run_child(
    task: str, args: Mapping[str, Any], *, sample_pss: bool = False, python: str | None = None
) -> dict[str, Any]:
    """Run ``python -m benchmarks._child task args`` and return its JSON answer.

    With ``sample_pss`` the answer gets ``pss_kib``/``pss_procs``: the peak PSS
    of the child's process tree, sampled from this process every 20 ms.
    """
    cmd = [python or sys.executable, "-m", "benchmarks._child", task, json.dumps(dict(args))]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if sample_pss:
        with PssSampler(proc.pid) as sampler:
            out, err = proc.communicate()
    else:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {task} {dict(args)} failed:\n{err[-3000:]}")
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if sample_pss:
        answer["pss_kib"] = sampler.peak_kib
        answer["pss_procs"] = sampler.peak_procs
    return answer


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


# --------------------------------------------------------------------------- machine


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "async_rollout"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + (" (async_rollout/ has uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


BLAS_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    try:
        sched = len(os.sched_getaffinity(0))
    except AttributeError:
        sched = os.cpu_count() or 0
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {sched} usable by this process",
        "memory": _mem_total(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": _version("numpy"),
        "anyio": _version("anyio"),
        "gymnasium": _version("gymnasium"),
        "trio": _version("trio"),
        "uvloop": _version("uvloop"),
        "omegaconf": _version("omegaconf"),
        "pyinstrument": _version("pyinstrument"),
        "BLAS env": ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in BLAS_VARS),
        "load average at start": load,
        "async-rollout revision": _git_revision(),
    }


# --------------------------------------------------------------------------- output


HEADERS = ("id", "benchmark", "measured (medians)", "ratio", "target", "met")


def table_lines(rows: list[Row]) -> list[str]:
    cells = [(r.section, r.name, r.measured, r.ratio_str(), r.target, r.met_str()) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADERS)]

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(HEADERS), "  ".join("-" * w for w in widths)]
    previous = None
    for row, c in zip(rows, cells, strict=True):
        if previous is not None and row.section != previous:
            out.append("")
        previous = row.section
        out.append(line(c))
    return out


def markdown_table(rows: list[Row]) -> list[str]:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    out = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" for _ in HEADERS) + "|",
    ]
    for r in rows:
        values = (r.section, r.name, r.measured, r.ratio_str(), r.target, r.met_str())
        out.append("| " + " | ".join(esc(v) for v in values) + " |")
    return out


def now() -> float:
    return time.perf_counter()
