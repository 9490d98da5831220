"""The ``async-rollout`` command, run as a subprocess the way users run it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import gymnasium as gym
import pytest

from async_rollout import RolloutRunner
from async_rollout._config import list_groups, load_config
from async_rollout.policies import LinearPolicy

REPO = Path(__file__).resolve().parents[1]

_STATS = ("mean", "std", "median", "min", "max")
SUMMARY_KEYS = {
    "n_episodes",
    "n_failed",
    "outcomes",
    "total_steps",
    *(f"{stat}_{what}" for what in ("return", "length") for stat in _STATS),
    "wall_time_s",
    "steps_per_s",
    "metrics",
}

# A user's own envs, written into tmp_path and imported from there through PYTHONPATH.
USER_ENVS = '''
from pathlib import Path
from uuid import uuid4

import anyio
import gymnasium as gym
import numpy as np


class ToyEnv(gym.Env):
    """Episodes of exactly `size` steps with reward 1 each."""

    def __init__(self, size=5):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,))
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, self.t >= self.size, False, {}


class TrackedEnv:
    """An endless async env leaving `<id>.open` and `<id>.closed` marks in `log_dir`."""

    def __init__(self, log_dir):
        self.mark = Path(log_dir) / uuid4().hex
        self.mark.with_suffix(".open").touch()
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,))
        self.action_space = gym.spaces.Discrete(2)

    async def reset(self, *, seed=None, options=None):
        await anyio.sleep(0.001)
        return np.zeros(1, np.float32), {}

    async def step(self, action):
        await anyio.sleep(0.001)
        return np.zeros(1, np.float32), 1.0, False, False, {}

    async def close(self):
        self.mark.with_suffix(".closed").touch()
'''


def _environ(*paths: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    return env


def run_cli(
    cwd: Path, *args: str, pythonpath: tuple[Path, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "async_rollout", *args],
        cwd=cwd,
        env=_environ(*pythonpath),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(cwd: Path, *args: str, pythonpath: tuple[Path, ...] = ()) -> dict[str, Any]:
    proc = run_cli(cwd, *args, "--json", pythonpath=pythonpath)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def user_envs(tmp_path: Path) -> Path:
    """A directory holding the module `user_envs`, to put on PYTHONPATH."""
    directory = tmp_path / "user_code"
    directory.mkdir()
    (directory / "user_envs.py").write_text(USER_ENVS)
    return directory


# --- help -----------------------------------------------------------------------------------------


def test_help_lists_groups_options_defaults_and_grammar(tmp_path: Path) -> None:
    """--help shows every group with its options, the defaults, the grammar and an example."""
    proc = run_cli(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    defaults = load_config()["choices"]
    for group, options in list_groups().items():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(group + " "))
        for option in options:
            shown = f"{option}*" if option == defaults[group] else option
            assert shown in line.split(), (group, option, line)
    for form in ("group=option", "a.b=value", "+a.b=value", "async-rollout env=latency"):
        assert form in text
    for flag in ("--config-dir", "--config-name", "--json", "--no-progress", "--debug"):
        assert flag in text


def test_help_shows_the_options_of_a_config_dir(tmp_path: Path) -> None:
    (tmp_path / "conf" / "env").mkdir(parents=True)
    (tmp_path / "conf" / "env" / "my_sim.yaml").write_text("_target_: gymnasium.make\nid: x\n")
    proc = run_cli(tmp_path, "--config-dir", "conf", "--help")
    assert proc.returncode == 0, proc.stderr
    env_line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("env "))
    assert "my_sim" in env_line.split()
    assert "cartpole*" in env_line.split()


# --- runs -----------------------------------------------------------------------------------------


def test_no_arguments_runs_the_default_cartpole_rollout(tmp_path: Path) -> None:
    """With no arguments: a CartPole random rollout and the summary table on stdout."""
    proc = run_cli(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rollout summary" in proc.stdout
    assert "50 of 50 (50 completed)" in proc.stdout
    assert re.search(r"output dir\s*│\s*outputs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", proc.stdout)
    assert "env=cartpole agent=random" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_prints_only_the_summary_on_stdout(tmp_path: Path) -> None:
    """--json: stdout is one JSON document with every summary key."""
    summary = run_json(tmp_path, "runner.n_episodes=3")
    assert set(summary) >= SUMMARY_KEYS
    assert summary["n_episodes"] == 3
    assert summary["outcomes"]["completed"] == 3
    assert summary["n_failed"] == 0
    assert summary["total_steps"] == 3 * summary["mean_length"]
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(_\d+)?", summary["output_dir"])


def test_overrides_and_options_mix_in_any_order(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path, "runner.n_episodes=2", "--json", "seeding.base_seed=5", "--backend", "trio"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["seed"] == 5


def test_run_subcommand_is_the_default(tmp_path: Path) -> None:
    explicit = run_json(tmp_path, "run", "runner.n_episodes=2")
    implicit = run_json(tmp_path, "runner.n_episodes=2")
    assert explicit["mean_return"] == implicit["mean_return"]


def test_custom_env_from_a_users_module(tmp_path: Path, user_envs: Path) -> None:
    """env=custom env._target_=<module.Class> runs a user's env, with its own arguments."""
    summary = run_json(
        tmp_path,
        "env=custom",
        "env._target_=user_envs.ToyEnv",
        "+env.size=7",
        "runner.n_episodes=4",
        pythonpath=(user_envs,),
    )
    assert summary["n_episodes"] == 4
    assert summary["min_length"] == summary["max_length"] == 7
    assert summary["mean_return"] == 7.0


def test_config_dir_adds_an_option(tmp_path: Path) -> None:
    """A --config-dir option is selectable; the packaged groups are still found."""
    (tmp_path / "myconf" / "env").mkdir(parents=True)
    (tmp_path / "myconf" / "env" / "short_cartpole.yaml").write_text(
        "_target_: gymnasium.make\nid: CartPole-v1\nmax_episode_steps: 5\n"
    )
    summary = run_json(
        tmp_path, "--config-dir", "myconf", "env=short_cartpole", "runner.n_episodes=3"
    )
    assert summary["n_episodes"] == 3
    assert summary["max_length"] <= 5


def test_config_name_picks_a_users_root(tmp_path: Path) -> None:
    (tmp_path / "myconf").mkdir()
    (tmp_path / "myconf" / "quick.yaml").write_text(
        textwrap.dedent(
            """\
            defaults:
              - env: latency
              - agent: random
              - wrappers: none
              - runner: default
            runner:
              n_episodes: 2
            seeding:
              base_seed: 1
            output_dir: null
            input_dir: null
            """
        )
    )
    summary = run_json(tmp_path, "--config-dir", "myconf", "--config-name", "quick")
    assert summary["n_episodes"] == 2
    assert summary["seed"] == 1
    assert summary["max_length"] == 50  # the latency env's episode_length


def test_linear_policy_weights_from_input_dir_reproduce_the_in_process_run(
    tmp_path: Path,
) -> None:
    """agent=linear with input_dir loads the saved weights: same returns as in process."""
    probe = gym.make("CartPole-v1")
    policy = LinearPolicy(probe.observation_space, probe.action_space, seed=7)
    other = LinearPolicy(probe.observation_space, probe.action_space)  # the config's seed 0
    probe.close()
    weights = tmp_path / "weights"
    weights.mkdir()
    policy.save(weights / "w.npz")

    async def in_process(agent: LinearPolicy) -> dict[str, Any]:
        runner = RolloutRunner(n_episodes=6, seed=3)
        return (await runner.run_with("CartPole-v1", [], agent)).summary

    expected = anyio.run(in_process, policy)
    assert expected["mean_return"] != anyio.run(in_process, other)["mean_return"]

    summary = run_json(
        tmp_path,
        "agent=linear",
        f"input_dir={weights}",
        "agent.weights_file=w.npz",
        "runner.n_episodes=6",
        "seeding.base_seed=3",
    )
    for key in ("total_steps", *(f"{stat}_return" for stat in _STATS)):
        assert summary[key] == expected[key], key


def test_output_dir_receives_stats_json(tmp_path: Path) -> None:
    summary = run_json(tmp_path, "runner.n_episodes=3", "output_dir=run1")
    assert summary["output_dir"] == "run1"
    stats = json.loads((tmp_path / "run1" / "stats.json").read_text())
    assert stats["summary"]["n_episodes"] == 3


def test_default_output_dir_is_dated_under_outputs(tmp_path: Path) -> None:
    summary = run_json(tmp_path, "runner.n_episodes=2")
    assert (tmp_path / summary["output_dir"] / "stats.json").is_file()
    assert summary["output_dir"].startswith("outputs/")


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "key"),
    [
        pytest.param(["env=nope"], "env", id="unknown-option"),
        pytest.param(["nope=1"], "nope", id="unknown-group-or-key"),
        pytest.param(["runner.nope=1"], "runner.nope", id="unknown-key"),
        pytest.param(["runner.n_episodes=abc"], "runner.n_episodes", id="wrong-type"),
        pytest.param(["runner.concurrency=0"], "runner.concurrency", id="runner-value"),
        pytest.param(["+env.foo=1"], "env.foo", id="constructor-typeerror"),
        pytest.param(
            ["env=custom", "env._target_=user_envs.ToyEnv", "+env.size=0"],
            "env.size",
            id="constructor-valueerror",
        ),
        pytest.param(
            ["agent=linear", "agent.weights_file=missing.npz"],
            "agent.weights_file",
            id="missing-weights-file",
        ),
        pytest.param(
            ["env=custom", "env._target_=nope.Nope"],
            "env._target_",
            id="unimportable-env-target",
        ),
        pytest.param(
            ["agent._target_=async_rollout.Nope"],
            "agent._target_",
            id="unimportable-agent-target",
        ),
        pytest.param(
            ["env=custom"],
            "env._target_",
            id="unset-env-target",
        ),
        pytest.param(["not-an-override"], "not-an-override", id="malformed"),
    ],
)
def test_config_errors_exit_2_with_one_line_naming_the_key(
    tmp_path: Path, user_envs: Path, args: list[str], key: str
) -> None:
    proc = run_cli(tmp_path, *args, pythonpath=(user_envs,))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert key in lines[0]
    assert proc.stdout == ""


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "runner.n_episodes=abc", "--debug")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: runner.n_episodes")


def test_a_failing_run_exits_1_with_one_line(tmp_path: Path) -> None:
    """An env error stops the run: exit 1, the error and its episode in one line, no traceback."""
    proc = run_cli(tmp_path, "env=latency", "+env.fail_at_step=3", "env.step_latency=0")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: RuntimeError")
    assert "in episode" in last
    assert "Traceback" not in proc.stderr
    # What finished before the failure is summarized.
    assert "rollout summary" in proc.stdout


def test_unknown_option_flag_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--nope")
    assert proc.returncode == 2
    assert "--nope" in proc.stderr


# --- signals --------------------------------------------------------------------------------------


class _Cli:
    """A CLI subprocess whose stderr is read in the background, to wait for its start line."""

    def __init__(self, cwd: Path, *args: str, pythonpath: tuple[Path, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "async_rollout", *args],
            cwd=cwd,
            env=_environ(*pythonpath),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("async-rollout: "):
                self.started.set()

    def stop(self, signum: int, hang_guard: float = 30) -> tuple[int, str, str]:
        """Signal the running rollout; return its exit status, stdout and stderr."""
        try:
            assert self.started.wait(hang_guard), "".join(self.stderr)
            time.sleep(0.3)  # let some episodes finish
            self.proc.send_signal(signum)
            self.proc.wait(hang_guard)
        finally:
            self.proc.kill()
            stdout = self.proc.stdout.read() if self.proc.stdout else ""
            self._reader.join(5)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        return self.proc.returncode, stdout, "".join(self.stderr)


@pytest.mark.parametrize(
    ("signum", "status", "backend"),
    [(signal.SIGINT, 130, "asyncio"), (signal.SIGTERM, 143, "trio")],
    ids=["INT-asyncio", "TERM-trio"],
)
def test_signal_stops_the_run_with_the_partial_summary(
    tmp_path: Path, signum: int, status: int, backend: str
) -> None:
    """SIGINT/SIGTERM: prompt exit 130/143, in-flight episodes cancelled, summary printed."""
    cli = _Cli(
        tmp_path,
        "env=latency",
        "env.step_latency=0.001",
        "runner.n_episodes=100000",
        "--json",
        "--backend",
        backend,
    )
    code, stdout, stderr = cli.stop(signum)
    assert code == status, stderr
    summary = json.loads(stdout)
    assert set(summary) >= SUMMARY_KEYS
    assert 0 < summary["n_episodes"] < 100000
    assert summary["outcomes"]["cancelled"] >= 1
    assert sum(summary["outcomes"].values()) == summary["n_episodes"]
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert "Traceback" not in stderr


def test_sigint_closes_every_env(tmp_path: Path, user_envs: Path) -> None:
    log = tmp_path / "marks"
    log.mkdir()
    cli = _Cli(
        tmp_path,
        "env=custom",
        "env._target_=user_envs.TrackedEnv",
        f"+env.log_dir={log}",
        "runner.n_episodes=1000",
        "runner.concurrency=8",
        pythonpath=(user_envs,),
    )
    code, stdout, stderr = cli.stop(signal.SIGINT)
    assert code == 130, stderr
    opened = {p.stem for p in log.glob("*.open")}
    assert len(opened) == 8
    assert {p.stem for p in log.glob("*.closed")} == opened
    assert "8 cancelled" in stdout


def test_signal_leaves_what_finished_on_disk(tmp_path: Path) -> None:
    cli = _Cli(tmp_path, "env=latency", "runner.n_episodes=100000", "output_dir=run", "--json")
    code, stdout, _ = cli.stop(signal.SIGINT)
    assert code == 130
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["summary"]["n_episodes"] == json.loads(stdout)["n_episodes"]


# --- installed ------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_non_editable_install_runs_from_another_directory(tmp_path: Path) -> None:
    """A wheel install in a fresh venv finds its packaged conf/ through importlib.resources."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [venv / "bin" / "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(REPO)],
        check=True,
        capture_output=True,
        timeout=120,
        env=_environ(),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import async_rollout as a, importlib.resources as r;"
            "print(a.__file__); print((r.files(a) / 'conf' / 'rollout.yaml').is_file())",
        ],
        cwd=elsewhere,
        env=_environ(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(venv), where
    assert where[1] == "True"
    proc = subprocess.run(
        [venv / "bin" / "async-rollout", "runner.n_episodes=3", "--json"],
        cwd=elsewhere,
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert set(summary) >= SUMMARY_KEYS
    assert summary["n_episodes"] == 3
