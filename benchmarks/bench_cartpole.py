"""B3: CPU-bound: CartPole-v1 inline, where the loop's own cost shows most.

Candidates (same episode seeds, same per-episode generators, same action
sampling — checked: every candidate yields the same returns and lengths):

- ``plain``: ``gym.make("CartPole-v1")`` and a synchronous loop;
- ``runner c=1`` / ``runner c=16``: ``RolloutRunner.run_with("CartPole-v1")``
  with the default ``RandomPolicy``, inline, asyncio backend;
- Maze's ``SequentialRolloutRunner`` (maze-rl 0.2.2), in its own virtualenv
  (``benchmarks/setup_maze_venv.sh``), compared with the plain loop and the
  runner in that same process (``benchmarks/_maze_child.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym

from async_rollout import RolloutRunner

from ._common import (
    Row,
    Section,
    Settings,
    at_most,
    child_env,
    interleaved,
    median,
    run_anyio,
    spread,
)
from ._envs import contract_seeds, plain_gym_loop

ENV_ID = "CartPole-v1"
DEFAULT_MAZE_PYTHON = "/tmp/mazevenv/bin/python"


def _episodes(quick: bool) -> int:
    return 50 if quick else 600


Outcomes = dict[str, list[tuple[float, int]]]


def _candidates(n: int) -> tuple[dict[str, Callable[[], float]], Outcomes]:
    env_seeds, agent_seeds = contract_seeds(n)
    outcomes: Outcomes = {}

    def plain() -> float:
        t0 = time.process_time()
        env = gym.make(ENV_ID)
        out = plain_gym_loop(env, env_seeds, agent_seeds)
        env.close()
        elapsed = time.process_time() - t0
        outcomes["plain"] = out
        return elapsed

    def runner(concurrency: int) -> Callable[[], float]:
        async def main() -> float:
            t0 = time.process_time()
            result = await RolloutRunner(n, concurrency=concurrency).run_with(ENV_ID)
            elapsed = time.process_time() - t0
            outcomes[f"runner c={concurrency}"] = [
                (ep.total_reward, ep.length) for ep in result.episodes
            ]
            return elapsed

        return lambda: run_anyio(main, "asyncio")

    return {"plain": plain, "runner c=1": runner(1), "runner c=16": runner(16)}, outcomes


def _maze_python(settings: Settings) -> str | None:
    candidate = (
        settings.maze_python
        or os.environ.get("ASYNC_ROLLOUT_MAZE_PYTHON")
        or (DEFAULT_MAZE_PYTHON if Path(DEFAULT_MAZE_PYTHON).exists() else None)
    )
    return candidate


def _maze_rows(settings: Settings, section: Section) -> None:
    python = _maze_python(settings)
    name = "Maze SequentialRolloutRunner (maze-rl 0.2.2)"
    if python is None:
        section.rows.append(
            Row(
                "B3",
                f"CartPole-v1: {name}",
                "not installed here: run benchmarks/setup_maze_venv.sh (or --maze-python)",
                None,
            )
        )
        return
    n = 20 if settings.quick else 200
    args = {"episodes": n, "reps": settings.reps}
    settings.log(f"B3 maze: {python} -m benchmarks._maze_child (imports torch: ~5 s)")
    # Maze writes its statistics into the working directory: give it a scratch one.
    with tempfile.TemporaryDirectory(prefix="maze-bench-") as scratch:
        proc = subprocess.run(
            [python, "-m", "benchmarks._maze_child", json.dumps(args)],
            cwd=scratch,
            env=child_env(),
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
        section.rows.append(Row("B3", f"CartPole-v1: {name}", f"not installable: {reason}", None))
        return
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, runner, maze = (median(got[k]) for k in ("plain", "runner", "maze"))
    if not got["same_outcomes"]:
        section.notes.append(
            "WARNING: in the Maze process, the runner's returns differ from the plain loop."
        )
    section.rows += [
        Row(
            "B3",
            f"CartPole-v1, {n} eps: Maze SequentialRolloutRunner vs plain loop",
            f"{maze * 1e3:.0f} vs {plain * 1e3:.0f} ms ({got['maze_steps']:,} vs "
            f"{got['plain_steps']:,} steps: Maze seeds and samples its own way)",
            maze / plain,
        ),
        Row(
            "B3",
            f"CartPole-v1, {n} eps: Maze SequentialRolloutRunner time / runner c=1 time",
            f"{maze * 1e3:.0f} vs {runner * 1e3:.0f} ms (same process, interleaved)",
            maze / runner,
        ),
    ]


def run(settings: Settings) -> Section:
    section = Section("B3", "CPU-bound: CartPole-v1 inline")
    n = _episodes(settings.quick)
    cands, outcomes = _candidates(n)
    got = interleaved(cands, max(settings.reps, 7), log=settings.log, label="B3 cartpole")
    steps = sum(length for _, length in outcomes["plain"])
    plain = median(got["plain"])
    for name in ("runner c=1", "runner c=16"):
        same = outcomes[name] == outcomes["plain"]
        if not same:
            section.notes.append(f"WARNING: {name} gave other returns than the plain loop.")
        t = median(got[name])
        section.rows.append(
            Row(
                "B3",
                f"CartPole-v1, {n} eps ({steps:,} steps): {name} vs plain gymnasium loop",
                f"{t / steps * 1e6:.1f} vs {plain / steps * 1e6:.1f} CPU us/step "
                f"({spread(got[name])}/{spread(got['plain'])})"
                + ("" if same else "; RETURNS DIFFER"),
                t / plain,
                "<= 1.5x",
                at_most(t / plain, 1.5),
            )
        )
    _maze_rows(settings, section)
    section.notes.append(
        "Same episode seeds (DESIGN.md's formula) in every candidate: the plain loop gets them "
        "precomputed, the runner derives them; actions sampled from a per-episode "
        "numpy Generator in both (RandomPolicy's Discrete sampler: np.int64(rng.integers(2))). "
        "Env creation (gym.make) is inside the timing of every candidate. Times are CPU time "
        "of the process (time.process_time), as in B1. Maze rows: Maze's own "
        "RandomPolicy and GymMazeEnv with explicit env/agent seeds, measured in one process "
        "with torch imported, interleaved with the plain loop and the runner there."
    )
    return section
