"""The README's code blocks run as written, and its quick start matches CI."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL_BLOCKS = [code for lang, code in BLOCKS if lang == "bash"]
SHELL = [
    line.strip()
    for code in SHELL_BLOCKS
    for line in code.splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]
INSTALL_AND_RUN = "python -m pip install . && async-rollout"


def _ci_test_command() -> str:
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r'^TEST_COMMAND="(.*)"$', text, flags=re.M)
    assert match, ".ci/run defines TEST_COMMAND"
    return match.group(1)


def test_quick_start_has_the_two_commands_and_ci_runs_the_second() -> None:
    installs = [line for line in SHELL if "pip install" in line]
    assert installs[:2] == [INSTALL_AND_RUN, _ci_test_command()]


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
@pytest.mark.timeout(120)
def test_python_block_runs(code: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr


# Set-up of a multi-node Ray cluster cannot run here.
CLUSTER = [line for line in SHELL if line.startswith("ray start") or "ray_address=auto" in line]
RUNNABLE = [
    line
    for line in SHELL
    if line.startswith(("async-rollout ", "python examples/")) and line not in CLUSTER
]


def _save_linear_weights(models: Path) -> None:
    """The weights file the README's `agent=linear` line loads."""
    import gymnasium as gym

    from async_rollout.policies import LinearPolicy

    env = gym.make("CartPole-v1")
    models.mkdir()
    LinearPolicy(env.observation_space, env.action_space, seed=3).save(models / "w.npz")


@pytest.mark.parametrize("block", range(len(SHELL_BLOCKS)))
@pytest.mark.timeout(180)
def test_shell_block_runs(block: int, tmp_path: Path) -> None:
    """A block's commands run in order in one directory, as a reader would type them."""
    _save_linear_weights(tmp_path / "models")
    for line in SHELL_BLOCKS[block].splitlines():
        line = line.strip()
        if line not in RUNNABLE:
            continue
        words = shlex.split(line)
        if words[0] == "async-rollout":
            command = [sys.executable, "-m", "async_rollout", *words[1:]]
        else:
            command = [sys.executable, str(ROOT / words[1]), *words[2:]]
        env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari")}
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170
        )
        assert done.returncode == 0, (line, done.stderr)


def test_every_shell_line_is_checked() -> None:
    """A README command is either a quick-start install, run by a test, or cluster set-up."""
    others = [
        line
        for line in SHELL
        if line not in RUNNABLE and line not in CLUSTER and "pip install" not in line
    ]
    assert others == []
