"""D: ``import async_rollout`` against importing its dependencies alone.

Each repetition is a fresh ``python -X importtime -c ...`` subprocess, timed
from the outside (wall time), candidates interleaved. A third candidate,
``python -X importtime -c pass``, is the interpreter's own start-up, so the
import cost proper can be compared too. The ``-X importtime`` report of the
last ``import async_rollout`` run names what the package imports beyond its
dependencies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from ._common import ROOT, Row, Section, Settings, at_most, child_env, interleaved, median

DEPENDENCIES = ("anyio", "numpy", "gymnasium", "omegaconf")
PROGRAMS = {
    "async_rollout": "import async_rollout",
    "dependencies": "import " + ", ".join(DEPENDENCIES),
    "startup": "pass",
}


def _importtime(stderr: str) -> dict[str, int]:
    """Module -> cumulative microseconds, from a ``-X importtime`` report."""
    out = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3:
            continue
        try:
            out[parts[2].strip()] = int(parts[1])
        except ValueError:
            continue
    return out


def run(settings: Settings) -> Section:
    section = Section("D", "Import time")
    reports: dict[str, str] = {}

    def candidate(name: str) -> Callable[[], float]:
        def once() -> float:
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", PROGRAMS[name]],
                cwd=ROOT,
                env=child_env(),
                capture_output=True,
                text=True,
            )
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{PROGRAMS[name]!r} failed: {proc.stderr[-2000:]}")
            reports[name] = proc.stderr
            return elapsed

        return once

    reps = max(settings.reps * 2, 10) if not settings.quick else settings.reps
    got = interleaved(
        {name: candidate(name) for name in PROGRAMS}, reps, log=settings.log, label="D import"
    )
    ours, deps, startup = (median(got[k]) for k in ("async_rollout", "dependencies", "startup"))
    ratio = ours / deps
    section.rows += [
        Row(
            "D",
            "import async_rollout vs import " + ", ".join(DEPENDENCIES) + " (fresh processes)",
            f"{ours * 1e3:.0f} vs {deps * 1e3:.0f} ms wall",
            ratio,
            "<= 1.3x",
            at_most(ratio, 1.3),
        ),
        Row(
            "D",
            "same, interpreter start-up (python -c pass) subtracted",
            f"{(ours - startup) * 1e3:.0f} vs {(deps - startup) * 1e3:.0f} ms "
            f"(start-up {startup * 1e3:.0f} ms)",
            (ours - startup) / (deps - startup),
        ),
    ]
    ours_mods = _importtime(reports["async_rollout"])
    deps_mods = _importtime(reports["dependencies"])
    extra = {
        name: us
        for name, us in ours_mods.items()
        if name not in deps_mods and "." not in name and name != "async_rollout"
    }
    top = sorted(extra.items(), key=lambda kv: -kv[1])[:8]
    own = ours_mods.get("async_rollout", 0)
    section.notes.append(
        f"-X importtime of the last run: async_rollout cumulative {own / 1e3:.1f} ms; "
        "top-level packages it imports that the dependencies alone do not: "
        + (", ".join(f"{name} {us / 1e3:.1f} ms" for name, us in top) or "none")
        + "."
    )
    return section
