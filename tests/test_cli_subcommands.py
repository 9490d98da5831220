"""The ``serve``, ``export-minari`` and ``plot`` subcommands, run as subprocesses as users run them.

Every command runs in its own process (the CLI sets up logging and signal
handlers), with a timeout as a hang guard.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import gymnasium as gym
import numpy as np
import pytest

from async_rollout import RandomPolicy, RemoteEnv, RemoteEnvError, RolloutRunner
from async_rollout.recording import iter_trajectories, load_trajectory
from async_rollout.testing import ScriptedEnv

HANG_GUARD_S = 30.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ASYNC_ROLLOUT_TOKEN")}
    env.update(extra)
    return env


def run_cli(
    cwd: Path, *args: str, timeout: float = HANG_GUARD_S, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "async_rollout", *args],
        cwd=cwd,
        env=_environ(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(
    cwd: Path, code: str, *, timeout: float = HANG_GUARD_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def record(cwd: Path, name: str, *overrides: str) -> Path:
    """Run a rollout into ``cwd/name`` with trajectories; return the output directory."""
    proc = run_cli(cwd, *overrides, "runner.record_trajectory=true", f"output_dir={name}", "--json")
    assert proc.returncode == 0, proc.stderr
    return cwd / name


# --- serve ---------------------------------------------------------------------------------------


class Server:
    """``async-rollout serve`` in a subprocess; its address read from the ``--json`` line."""

    def __init__(self, cwd: Path, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "async_rollout", "serve", *args, "--json"],
            cwd=cwd,
            env=_environ(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.ready.set()
        self.ready.set()  # the process ended before serving: wake the waiter

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def address(self) -> dict[str, Any]:
        """The JSON line the server prints once it is listening."""
        assert self.ready.wait(HANG_GUARD_S), f"no address line; stderr: {''.join(self.stderr)}"
        assert self.lines, f"the server exited ({self.proc.poll()}): {''.join(self.stderr)}"
        return json.loads(self.lines[0])  # type: ignore[no-any-return]

    def stop(self, signum: int) -> tuple[int, float, str]:
        """Signal the server; return its status, seconds it took to exit, and its stderr."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        try:
            self.proc.wait(HANG_GUARD_S)
        finally:
            self.close()
        return self.proc.returncode, time.monotonic() - started, "".join(self.stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(HANG_GUARD_S)
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers started by a test; killed at its end whatever happened."""
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


def _rollout(make_env: Any, n: int = 6) -> list[tuple[float, int]]:
    """Returns and lengths of a short rollout (Discrete(2) actions, as the latency env has)."""
    runner = RolloutRunner(n, 0, concurrency=3, seed=5)

    async def go() -> list[tuple[float, int]]:
        with anyio.fail_after(HANG_GUARD_S):
            result = await runner.run_with(make_env, [], RandomPolicy(_discrete2()))
        return [(ep.total_reward, ep.length) for ep in result.episodes]

    return anyio.run(go)


def _discrete2() -> gym.spaces.Discrete:
    return gym.spaces.Discrete(2)


FAST_LATENCY = ("env=latency", "env.step_latency=0.001", "env.reset_latency=0.001")


def test_serve_port_0_serves_a_rollout_and_sigint_stops_it_promptly(
    tmp_path: Path, servers: list[Server]
) -> None:
    server = Server(tmp_path, *FAST_LATENCY, "env.episode_length=8", "--port", "0")
    servers.append(server)
    address = server.address()
    assert address["host"] == "127.0.0.1"  # loopback unless told otherwise
    assert address["port"] > 0
    assert address["path"] is None
    assert address["tls"] is False
    assert address["token"] is False
    remote = _rollout(partial(RemoteEnv, "127.0.0.1", address["port"]))
    # The same seeds give the same episodes as the env in this process.
    local = _rollout(partial(ScriptedEnv, episode_length=8))
    assert remote == local
    assert all(length == 8 for _, length in remote)

    code, took, stderr = server.stop(signal.SIGINT)
    assert code == 0, stderr
    assert took < 10
    assert f"on tcp://127.0.0.1:{address['port']}" in stderr
    assert "stopped by SIGINT" in stderr
    assert "Traceback" not in stderr


def test_serve_sigterm_mid_session_exits_0_and_the_client_gets_an_error(
    tmp_path: Path, servers: list[Server]
) -> None:
    server = Server(tmp_path, *FAST_LATENCY, "--port", "0", "--backend", "trio")
    servers.append(server)
    port = server.address()["port"]

    async def session() -> None:
        env = RemoteEnv("127.0.0.1", port, request_timeout=HANG_GUARD_S)
        with anyio.fail_after(HANG_GUARD_S):
            await env.reset(seed=1)
            await env.step(0)
            code, took, stderr = await anyio.to_thread.run_sync(server.stop, signal.SIGTERM)
            assert code == 0, stderr
            assert took < 10
            assert "stopped by SIGTERM" in stderr
            with pytest.raises(RemoteEnvError):
                await env.step(0)
            await env.close()

    anyio.run(session)


def test_serve_token_from_the_environment(tmp_path: Path, servers: list[Server]) -> None:
    server = Server(tmp_path, *FAST_LATENCY, "--port", "0", ASYNC_ROLLOUT_TOKEN="s3cret")
    servers.append(server)
    address = server.address()
    assert address["token"] is True

    async def connect(token: str | None) -> None:
        env = RemoteEnv("127.0.0.1", address["port"], token=token, connect_timeout=10)
        try:
            with anyio.fail_after(HANG_GUARD_S):
                await env.reset(seed=0)
        finally:
            await env.close()

    with pytest.raises(RemoteEnvError):
        anyio.run(connect, None)
    with pytest.raises(RemoteEnvError):
        anyio.run(connect, "wrong")
    anyio.run(connect, "s3cret")
    code, _, stderr = server.stop(signal.SIGINT)
    assert code == 0, stderr
    assert "token required" in stderr
    assert "s3cret" not in stderr


def test_serve_on_a_unix_socket(tmp_path: Path, servers: list[Server]) -> None:
    sock = tmp_path / "env.sock"
    server = Server(tmp_path, *FAST_LATENCY, "env.episode_length=3", "--path", str(sock))
    servers.append(server)
    address = server.address()
    assert address["path"] == str(sock)
    assert address["port"] is None
    results = _rollout(partial(RemoteEnv, path=str(sock)), n=2)
    assert [length for _, length in results] == [3, 3]
    code, _, stderr = server.stop(signal.SIGINT)
    assert code == 0, stderr
    assert not sock.exists()  # the socket file is removed on the way out


def test_serve_over_tls(tmp_path: Path, servers: list[Server]) -> None:
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    server = Server(
        tmp_path,
        *FAST_LATENCY,
        "env.episode_length=3",
        "--port",
        "0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    servers.append(server)
    address = server.address()
    assert address["tls"] is True
    assert address["address"].startswith("tls://127.0.0.1:")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    results = _rollout(partial(RemoteEnv, "127.0.0.1", address["port"], ssl_context=client), n=2)
    assert [length for _, length in results] == [3, 3]
    code, _, stderr = server.stop(signal.SIGINT)
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("env=nope",), "env="),
        (("env=latency", "env.nope=1"), "env.nope"),
        (("env=latency", "+env.bogus=1"), "env.bogus"),
        (("env=custom", "env._target_=no_such_module.Env"), "env._target_"),
        (("env=latency", "--token", ""), "--token"),
        (("env=latency", "--tls-key", "k.pem"), "--tls-key"),
        (("env=latency", "--tls-cert", "missing.pem"), "--tls-cert"),
        (("env=latency", "--port", "70000"), "--port"),
    ],
)
def test_serve_config_errors_exit_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    # A free port unless the case sets one (the last --port wins): a case that wrongly
    # started serving would then fail by the hang guard rather than by a taken port.
    proc = run_cli(tmp_path, "serve", "--port", "0", *args, timeout=HANG_GUARD_S)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert named in lines[0]
    assert proc.stdout == ""


def test_serve_address_in_use_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(tmp_path, "serve", *FAST_LATENCY, "--port", str(port))
    assert proc.returncode == 1, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- export-minari -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CartPole rollout of 7 episodes with trajectories and an event log."""
    cwd = tmp_path_factory.mktemp("cartpole")
    return record(cwd, "run", "runner.n_episodes=7", "runner.record_event_logs=true")


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    """Where Minari keeps datasets in this test (``MINARI_DATASETS_PATH``)."""
    pytest.importorskip("minari", reason="the minari extra is not installed")
    folder = tmp_path / "minari"
    folder.mkdir()
    return folder


def export(cwd: Path, datasets: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cwd, "export-minari", *args, MINARI_DATASETS_PATH=str(datasets))


def load(datasets: Path, dataset_id: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(datasets))
    return minari.load_dataset(dataset_id)


def test_export_minari_has_the_runs_episodes_rewards_seeds_and_data(
    cartpole_run: Path, datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = export(tmp_path, datasets, str(cartpole_run), "rollout/cartpole-v0", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n_episodes"] == 7
    assert report["spaces_from"] == "env"
    assert report["env_id"] == "CartPole-v1"
    assert report["indices"] == list(range(7))

    stats = json.loads((cartpole_run / "stats.json").read_text())
    dataset = load(datasets, "rollout/cartpole-v0", monkeypatch)
    assert dataset.total_episodes == 7
    assert dataset.total_steps == stats["summary"]["total_steps"]
    cartpole = gym.make("CartPole-v1")
    assert dataset.observation_space == cartpole.observation_space
    assert dataset.action_space == cartpole.action_space
    cartpole.close()
    assert dataset.env_spec.id == "CartPole-v1"
    episodes = list(dataset.iterate_episodes())
    trajectories = dict(iter_trajectories(cartpole_run))
    for k, (episode, recorded) in enumerate(zip(episodes, stats["episodes"], strict=True)):
        assert episode.id == k
        assert float(np.sum(episode.rewards)) == pytest.approx(recorded["return"])
        assert len(episode.rewards) == recorded["length"]
        trajectory = trajectories[recorded["index"]]
        np.testing.assert_array_equal(episode.observations, np.stack(trajectory.observations))
        np.testing.assert_array_equal(episode.actions, np.asarray(trajectory.actions))
        np.testing.assert_array_equal(episode.terminations, trajectory.terminated)
        np.testing.assert_array_equal(episode.truncations, trajectory.truncated)
    seeds = [meta["seed"] for meta in dataset.storage.get_episode_metadata(range(7))]
    assert seeds == [ep["env_seed"] for ep in stats["episodes"]]


def test_export_minari_dict_observations_from_the_recorded_env(
    tmp_path: Path, datasets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = record(
        tmp_path,
        "dict",
        "env=latency",
        "env.step_latency=0",
        "env.reset_latency=0",
        "env.episode_length=6",
        "+env.dict_obs=true",
        "runner.n_episodes=4",
    )
    proc = export(tmp_path, datasets, str(run), "dict-v0")
    assert proc.returncode == 0, proc.stderr
    assert "info keys left out" in proc.stderr  # `metrics` is in the last step's info only
    dataset = load(datasets, "dict-v0", monkeypatch)
    assert dataset.total_episodes == 4
    assert set(dataset.observation_space.spaces) == {"position", "mask"}
    assert type(dataset.observation_space["mask"]).__name__ == "MultiBinary"
    for episode, (_, trajectory) in zip(
        dataset.iterate_episodes(), iter_trajectories(run), strict=True
    ):
        for key in ("position", "mask"):
            np.testing.assert_array_equal(
                episode.observations[key], np.stack([o[key] for o in trajectory.observations])
            )
        np.testing.assert_array_equal(episode.infos["step"], [i["step"] for i in trajectory.infos])


def test_export_minari_spaces_from_the_data(
    cartpole_run: Path, datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = export(tmp_path, datasets, str(cartpole_run), "inferred-v1", "--spaces", "data")
    assert proc.returncode == 0, proc.stderr
    assert "spaces inferred from the data" in proc.stderr
    dataset = load(datasets, "inferred-v1", monkeypatch)
    assert dataset.total_episodes == 7
    assert dataset.observation_space.shape == (4,)
    assert dataset.observation_space.dtype == np.float32
    assert dataset.action_space.n == 2


def test_export_minari_failed_episodes_only_when_asked(
    tmp_path: Path, datasets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = record(
        tmp_path,
        "failing",
        "env=latency",
        "env.step_latency=0",
        "env.reset_latency=0",
        "env.episode_length=5",
        "+env.fail_at_step=3",
        "+env.fail_seeds=[12,14]",
        "runner.n_episodes=4",
        "runner.on_env_error=skip",
        "seeding.explicit_env_seeds=[11,12,13,14]",
        "seeding.explicit_agent_seeds=[1,2,3,4]",
    )
    proc = export(tmp_path, datasets, str(run), "completed-v0")
    assert proc.returncode == 0, proc.stderr
    assert "left out 2 env_error" in proc.stderr
    completed = load(datasets, "completed-v0", monkeypatch)
    assert completed.total_episodes == 2
    metadata = completed.storage.get_episode_metadata(range(2))
    assert [m["seed"] for m in metadata] == [11, 13]

    proc = export(tmp_path, datasets, str(run), "all-v0", "--include-failed", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["indices"] == [0, 1, 2, 3]
    everything = load(datasets, "all-v0", monkeypatch)
    lengths = [len(ep.rewards) for ep in everything.iterate_episodes()]
    assert lengths == [5, 2, 5, 2]
    failed = everything[1]
    assert failed.truncations[-1]  # cut short by the error
    assert not failed.terminations.any()
    recorded = load_trajectory(run / "trajectories" / "episode_000001.npz")
    assert float(np.sum(failed.rewards)) == pytest.approx(float(np.sum(recorded.rewards)))


def test_export_minari_refusals_exit_2(cartpole_run: Path, datasets: Path, tmp_path: Path) -> None:
    no_trajectories = tmp_path / "bare"
    proc = run_cli(tmp_path, "runner.n_episodes=2", f"output_dir={no_trajectories}")
    assert proc.returncode == 0, proc.stderr
    cases = [
        ((str(no_trajectories), "x-v0"), "record_trajectory"),
        ((str(tmp_path / "missing"), "x-v0"), "not a directory"),
        ((str(cartpole_run), "no version"), "dataset_id"),
    ]
    for args, says in cases:
        proc = export(tmp_path, datasets, *args)
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    assert export(tmp_path, datasets, str(cartpole_run), "taken-v0").returncode == 0
    proc = export(tmp_path, datasets, str(cartpole_run), "taken-v0")
    assert proc.returncode == 2
    assert "exists already" in proc.stderr


def test_export_minari_without_minari_says_how_to_install_it(tmp_path: Path) -> None:
    proc = run_python(
        tmp_path,
        "import sys; sys.modules['minari'] = None\n"
        "from async_rollout._cli import main\n"
        f"sys.exit(main(['export-minari', {str(tmp_path)!r}, 'x-v0']))",
    )
    assert proc.returncode == 1, proc.stderr
    assert 'pip install "async-rollout[minari]"' in proc.stderr
    assert "Traceback" not in proc.stderr


# --- plot ----------------------------------------------------------------------------------------


def _check_png(path: Path) -> tuple[int, int]:
    """The PNG's size in pixels, read back by matplotlib (PIL underneath)."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert height > 0
    assert width > 0
    # Not a blank canvas: something was drawn.
    assert float(np.ptp(image[..., :3])) > 0
    return width, height


def test_plot_with_an_event_log(cartpole_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    target = tmp_path / "pictures" / "cartpole.png"
    proc = run_cli(tmp_path, "plot", str(cartpole_run), "-o", str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)
    assert proc.stderr == ""  # finish times were there: nothing to note
    assert _check_png(target) == (1100, 800)


def test_plot_without_an_event_log_uses_the_journal_order(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    run = tmp_path / "run"
    proc = run_cli(tmp_path, "env=latency", "runner.n_episodes=5", f"output_dir={run}", "--json")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(tmp_path, "plot", str(run), "--dpi", "50")
    assert proc.returncode == 0, proc.stderr
    assert "no event log" in proc.stderr
    assert proc.stdout.strip() == str(run / "rollout.png")
    assert _check_png(run / "rollout.png") == (550, 400)


def test_plot_refuses_a_folder_without_a_rollout(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "plot", str(tmp_path))
    assert proc.returncode == 2
    assert "episodes.jsonl" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    proc = run_python(
        tmp_path,
        "import sys; sys.modules['matplotlib'] = None\n"
        "from async_rollout._cli import main\n"
        f"sys.exit(main(['plot', {str(tmp_path)!r}]))",
    )
    assert proc.returncode == 1, proc.stderr
    assert 'pip install "async-rollout[plot]"' in proc.stderr
