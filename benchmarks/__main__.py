"""``python -m benchmarks``: run the performance suite, print one table, write RESULTS.md.

Examples::

    python -m benchmarks                    # everything (~10 min on 2 cores)
    python -m benchmarks --quick            # smoke run, small sizes, 2 repetitions
    python -m benchmarks -s B1 -s D         # some sections only
    python -m benchmarks -s RAY -s SOAK     # opt-in: REMOTE, RECORDING, RAY, SOAK
    python -m benchmarks -s B1 --backends asyncio
    python -m benchmarks --profile          # pyinstrument profiles of B1 c=100 and B3
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ._common import (
    BACKENDS,
    BENCH_DIR,
    Row,
    Section,
    Settings,
    machine,
    markdown_table,
    table_lines,
)

SECTIONS = ("B1", "B2", "B3", "B4", "D")
# Opt-in sections: run only when selected with -s (slow, or need extras: Ray, subprocesses).
OPT_IN_SECTIONS = ("REMOTE", "RECORDING", "RAY", "SOAK")


def _run_section(key: str, settings: Settings) -> Section:
    if key == "B1":
        from . import bench_overhead as module
    elif key == "B2":
        from . import bench_latency as module  # type: ignore[no-redef]
    elif key == "B3":
        from . import bench_cartpole as module  # type: ignore[no-redef]
    elif key == "B4":
        from . import bench_batching as module  # type: ignore[no-redef]
    elif key == "REMOTE":
        from . import bench_remote as module  # type: ignore[no-redef]
    elif key == "RECORDING":
        from . import bench_recording as module  # type: ignore[no-redef]
    elif key == "RAY":
        from . import bench_ray as module  # type: ignore[no-redef]
    elif key == "SOAK":
        from . import bench_soak as module  # type: ignore[no-redef]
    else:
        from . import bench_import as module  # type: ignore[no-redef]
    t0 = time.perf_counter()
    section = module.run(settings)
    section.seconds = time.perf_counter() - t0
    return section


def _results_md(
    sections: list[Section], info: dict[str, str], command: str, started: datetime, total: float
) -> str:
    rows = [row for s in sections for row in s.rows]
    missed = [row for row in rows if row.met is False]
    out = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {started:%Y-%m-%d %H:%M} UTC in {total:.0f} s "
        f"(sections: {', '.join(f'{s.key} {s.seconds:.0f} s' for s in sections)}). "
        "Do not edit by hand: run the command again.",
        "",
        "Every row is a ratio of two candidates measured side by side in this run: "
        "repetitions interleaved (the order rotating), the median of each candidate's "
        "repetitions taken, so noise on this shared machine hits both sides. `±x%` is the "
        "half-range of a candidate's repetitions. Profiles and proposed fixes: "
        "[PROFILE.md](PROFILE.md).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "## Results",
        "",
        *markdown_table(rows),
        "",
        "## Targets missed",
        "",
    ]
    if missed:
        out += [
            f"- {r.section} {r.name}: {r.ratio_str()} (target {r.target})"
            + (f"; {r.note}" if r.note else "")
            for r in missed
        ]
        out.append("")
        out.append("Causes and proposed fixes, measured: see [PROFILE.md](PROFILE.md).")
    else:
        out.append("None.")
    out += ["", "## How each section measures", ""]
    for s in sections:
        out.append(f"### {s.key}: {s.title}")
        out.append("")
        out += [f"- {note}" for note in s.notes]
        out.append("")
    out += ["## The table as printed", "", "```", *table_lines(rows), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 2 reps")
    parser.add_argument(
        "-s",
        "--section",
        action="append",
        type=str.upper,
        choices=SECTIONS + OPT_IN_SECTIONS,
        help="run this section (repeatable; default: all but the opt-in "
        f"{', '.join(OPT_IN_SECTIONS)})",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"B1 backends, comma-separated (default: {','.join(BACKENDS)})",
    )
    parser.add_argument("--reps", type=int, help="repetitions per candidate (default 5; quick 2)")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the results (default: benchmarks/RESULTS.md; "
        "--quick writes nothing unless given)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--maze-python", help="Python of a virtualenv with maze-rl 0.2.2")
    parser.add_argument("--profile", action="store_true", help="write pyinstrument profiles")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    if reps < 1:
        parser.error("--reps must be >= 1")
    settings = Settings(
        quick=args.quick,
        reps=reps,
        backends=backends,
        maze_python=args.maze_python,
        verbose=not args.quiet,
    )
    if args.profile:
        from ._profile import profile

        profile(settings)
        return 0

    command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now(UTC)
    info = machine()
    print(f"async-rollout benchmarks: {command}", flush=True)
    for key, value in info.items():
        print(f"  {key}: {value}")
    if settings.quick:
        print("  QUICK smoke run: small sizes, few repetitions; not figures to quote.")
    print(flush=True)

    t0 = time.perf_counter()
    sections: list[Section] = []
    for key in args.section or SECTIONS:
        settings.log(f"section {key}")
        sections.append(_run_section(key, settings))
    total = time.perf_counter() - t0

    rows: list[Row] = [row for s in sections for row in s.rows]
    print("\n".join(table_lines(rows)))
    missed = [r for r in rows if r.met is False]
    print(
        f"\n{len(rows)} rows in {total:.0f} s; targets: "
        f"{sum(r.met is True for r in rows)} met, {len(missed)} missed."
    )

    output = args.output
    if output is None and not settings.quick:
        output = BENCH_DIR / "RESULTS.md"
    if output is not None and not args.no_write:
        output.write_text(_results_md(sections, info, command, started, total))
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
