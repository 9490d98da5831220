"""The Ray backend, against a real local Ray cluster started once for the whole session."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import numpy as np
import pytest
from helpers import episode_key

from async_rollout import (
    AsyncEnvWrapper,
    ConfigError,
    EpisodeResult,
    RolloutError,
    RolloutRunner,
    RolloutTimeout,
    Sink,
    env_factory,
    load_config,
)
from async_rollout._cli import main as cli_main
from async_rollout._loop import LoopSettings, _Episode
from async_rollout.distributed import ACTOR_NAME_PREFIX, StoredTrajectory, WorkerCore
from async_rollout.distributed import _driver as driver_module
from async_rollout.distributed import _shared as shared_module
from async_rollout.distributed._deps import import_ray
from async_rollout.distributed._protocol import Ended, Job, ShippedError, Started
from async_rollout.distributed._shared import SharedDir, close_shared_dir, open_shared_dir
from async_rollout.recording import TrajectorySink, load_trajectory
from async_rollout.testing import ScriptedEnv
from async_rollout.testing._scripted import EnvTracker

# Small actors: 2 CPUs hold the workers of a run and a restarted one.
ACTORS = {"num_cpus": 0.25, "max_restarts": 0}
RAY = {"backend": "ray", "n_workers": 2, "ray_actor_options": ACTORS}
DRIVER_PID = os.getpid()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[ModuleType]:
    """One local Ray cluster for every test of the session (starting one takes seconds)."""
    ray = pytest.importorskip("ray")
    # Functions and classes of this module go to the workers by value: they cannot import it.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def keys(episodes: list[EpisodeResult]) -> list[tuple[Any, ...]]:
    return [episode_key(ep) for ep in episodes]


# --- same results as a local run ---------------------------------------------------------------


@pytest.mark.anyio
async def test_ray_equals_local_on_cartpole(ray_cluster: ModuleType) -> None:
    """Same seeds, same episodes step by step: 2 Ray workers (fed in chunks) against local."""
    agent = {"_target_": "async_rollout.policies.LinearPolicy", "seed": 3}
    common: dict[str, Any] = {"max_episode_steps": 60, "record_trajectory": True, "seed": 7}
    local = await RolloutRunner(12, concurrency=5, **common).run_with("CartPole-v1", agent=agent)
    runner = RolloutRunner(12, concurrency=2, **common, **RAY)
    streamed = []
    async with runner.stream("CartPole-v1", agent=agent) as episodes:
        async for ep in episodes:
            streamed.append(ep.index)
    assert runner.result is not None
    assert sorted(streamed) == list(range(12))
    assert keys(runner.result.episodes) == keys(local.episodes)
    assert runner.result.summary["n_episodes"] == 12


@pytest.mark.anyio
async def test_ray_equals_local_with_failures_skipped(ray_cluster: ModuleType) -> None:
    """Under on_env_error="skip", failed episodes fail the same way on Ray as locally."""
    env = partial(ScriptedEnv, 6, fail_at_step=2, fail_seeds={3, 8})
    common: dict[str, Any] = {"env_seeds": list(range(10)), "on_env_error": "skip"}
    local = await RolloutRunner(10, concurrency=3, **common).run_with(env)
    remote = await RolloutRunner(10, concurrency=3, **common, **RAY).run_with(env)
    assert keys(remote.episodes) == keys(local.episodes)
    assert [ep.index for ep in remote.episodes if ep.outcome == "env_error"] == [3, 8]


# --- faults ------------------------------------------------------------------------------------


PER_WORKER = 4


class _Tagged(AsyncEnvWrapper):
    """Puts the Ray worker that played the episode into its metrics (``worker``)."""

    def __init__(self, env: ScriptedEnv, worker_index: int) -> None:
        super().__init__(env)
        self.rank = worker_index // PER_WORKER

    async def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = await self.env.step(action)
        if terminated:
            info = {**info, "metrics": {**info.get("metrics", {}), "worker": self.rank}}
        return obs, reward, terminated, truncated, info


def tagged_env(worker_index: int = 0, *, latency: float = 0.01) -> _Tagged:
    return _Tagged(ScriptedEnv(10, step_latency=latency), worker_index)


class _KillWorker1(Sink):
    """Kills Ray worker 1 once it has played two episodes (so it holds more)."""

    def __init__(self, ray: ModuleType, *, no_restart: bool) -> None:
        self.ray = ray
        self.no_restart = no_restart
        self.by_worker: list[list[int]] = [[], []]
        self.after_kill: list[int] = []
        self.killed = False

    def on_episode_end(self, result: EpisodeResult) -> None:
        worker = int(result.metrics["worker"])
        self.by_worker[worker].append(result.index)
        if self.killed:
            self.after_kill.append(worker)
        elif len(self.by_worker[1]) == 2:
            (name,) = [n for n in self.ray.util.list_named_actors() if n.endswith("-1")]
            self.ray.kill(self.ray.get_actor(name), no_restart=self.no_restart)
            self.killed = True


@pytest.mark.anyio
@pytest.mark.parametrize("restart", [False, True], ids=["killed", "restarted"])
async def test_killed_worker_loses_no_episode(
    ray_cluster: ModuleType, restart: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed mid-run: its episodes are re-issued, each index gets exactly one result."""
    caplog.set_level(logging.INFO, logger="async_rollout")
    # When restarted, long enough for the new actor to start and take work again.
    n, env = (60, partial(tagged_env, latency=0.04)) if restart else (40, tagged_env)
    local = await RolloutRunner(n, concurrency=n).run_with(env)
    killer = _KillWorker1(ray_cluster, no_restart=not restart)
    options = {**ACTORS, "max_restarts": 1 if restart else 0}
    runner = RolloutRunner(
        n,
        concurrency=PER_WORKER,
        sinks=[killer],
        backend="ray",
        n_workers=2,
        ray_actor_options=options,
    )
    result = await runner.run_with(env)
    assert killer.killed
    assert [ep.index for ep in result.episodes] == list(range(n))
    assert {ep.outcome for ep in result.episodes} == {"completed"}
    assert keys(result.episodes) == keys(local.episodes)
    assert re.search(r"Ray worker 1 died \(\w+\); its [1-9]\d* unfinished episodes", caplog.text)
    # Results of worker 1 that were on their way still count (at most its slots and prefetch);
    # killed for good it plays nothing more, restarted it takes work again.
    on_their_way = PER_WORKER + 1
    assert (killer.after_kill.count(1) > on_their_way) is restart


class SimulatorMissing(Exception):
    """What a factory raises on a node without its simulator."""


def env_on_the_driver_only(worker_index: int = 0) -> ScriptedEnv:
    if os.getpid() != DRIVER_PID:
        raise SimulatorMissing(f"no simulator for worker_index={worker_index} here")
    return ScriptedEnv(5)


@pytest.mark.anyio
async def test_env_factory_failure_names_worker_and_episode(ray_cluster: ModuleType) -> None:
    """A factory failing on the workers raises its own type, naming the worker and the episode."""
    runner = RolloutRunner(4, concurrency=2, **RAY)
    with pytest.raises(SimulatorMissing, match=r"worker_index=[02]") as info:
        await runner.run_with(env_on_the_driver_only)
    notes = " ".join(info.value.__notes__)
    assert re.search(r"Ray worker [01] of 2 \(pid \d+", notes)
    assert re.search(r"first episode: episode \d \(env_seed=\d+", notes)
    assert "the traceback on the Ray worker" in str(info.value.__cause__)


@pytest.mark.anyio
async def test_episode_failure_raises_original_error(ray_cluster: ModuleType) -> None:
    """Under "raise", a timeout on a worker is a RolloutTimeout on the driver, as locally."""
    env = {
        "_target_": "async_rollout.testing.ScriptedEnv",
        "episode_length": 4,
        "hang_at_step": 2,
        "fail_seeds": [14],
    }
    runner = RolloutRunner(6, concurrency=2, env_seeds=range(10, 16), step_timeout=0.3, **RAY)
    with pytest.raises(RolloutTimeout) as info:
        await runner.run_with(env)
    assert info.value.phase == "step"
    assert info.value.episode_index == 4
    assert any("in episode 4 (env_seed=14" in note for note in info.value.__notes__)
    assert any("Ray worker" in note for note in info.value.__notes__)
    assert runner.result is not None
    by_index = {ep.index: ep for ep in runner.result.episodes}
    assert len(by_index) == len(runner.result.episodes)
    assert by_index[4].outcome == "timeout"


def _run_actors(ray: ModuleType) -> list[str]:
    return [n for n in ray.util.list_named_actors() if n.startswith(ACTOR_NAME_PREFIX)]


@pytest.mark.anyio
async def test_leaving_a_stream_early_cancels_and_stops_the_workers(
    ray_cluster: ModuleType,
) -> None:
    """Leaving the stream early: episodes handed out end "cancelled", no worker is left."""
    runner = RolloutRunner(40, concurrency=3, **RAY)
    async with runner.stream(partial(ScriptedEnv, 10, step_latency=0.02)) as episodes:
        async for _ in episodes:
            break
    assert runner.result is not None
    outcomes = [ep.outcome for ep in runner.result.episodes]
    assert len({ep.index for ep in runner.result.episodes}) == len(outcomes)
    assert "completed" in outcomes
    assert "cancelled" in outcomes
    assert len(outcomes) < 40
    assert not _run_actors(ray_cluster)


@pytest.mark.anyio
async def test_actor_demands_the_cluster_cannot_meet_are_refused(ray_cluster: ModuleType) -> None:
    """Asking each worker for a GPU on a cluster without one fails at once (no endless wait)."""
    runner = RolloutRunner(2, backend="ray", ray_actor_options={"num_gpus": 1})
    with pytest.raises(ConfigError, match=r"asks for 1 GPU, and the whole cluster has 0"):
        await runner.run_with(partial(ScriptedEnv, 3))


@pytest.mark.anyio
async def test_unpicklable_agent_is_a_clear_error(ray_cluster: ModuleType) -> None:
    """An agent Ray cannot ship is a TypeError saying so, before any worker starts."""

    class LockedPolicy:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def compute_action(self, observation: Any) -> int:
            return 0

    runner = RolloutRunner(2, **RAY)
    with pytest.raises(TypeError, match="sends the agent to the workers with cloudpickle"):
        await runner.run_with(partial(ScriptedEnv, 3), agent=LockedPolicy())


# --- shared_output_dir: the workers write the trajectory files -----------------------------------


def _same_trajectory(a: Path, b: Path) -> bool:
    x, y = load_trajectory(a), load_trajectory(b)
    return (
        len(x) == len(y)
        and all(np.array_equal(p, q) for p, q in zip(x.observations, y.observations, strict=True))
        and all(np.array_equal(p, q) for p, q in zip(x.actions, y.actions, strict=True))
        and np.array_equal(x.rewards, y.rewards)
        and np.array_equal(x.terminated, y.terminated)
        and np.array_equal(x.truncated, y.truncated)
        and x.infos == y.infos
    )


class _Trajectories(Sink):
    """Keeps what the driver's sinks get in ``result.trajectory``."""

    def __init__(self) -> None:
        self.seen: dict[int, Any] = {}

    def on_episode_end(self, result: EpisodeResult) -> None:
        self.seen[result.index] = result.trajectory


def _driver_never_writes(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the driver wrote a trajectory file")


@pytest.mark.anyio
async def test_shared_output_dir_workers_write_the_files_of_a_local_run(
    ray_cluster: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers write the same files a local run writes; the driver writes none; resume works."""
    env = partial(ScriptedEnv, 6, fail_at_step=3, fail_seeds={4})
    common: dict[str, Any] = {
        "record_trajectory": True,
        "env_seeds": list(range(8)),
        "on_env_error": "skip",
    }
    await RolloutRunner(8, concurrency=4, output_dir=str(tmp_path / "local"), **common).run_with(
        env
    )
    # From here on, a trajectory file written in this process (the driver) fails the run;
    # the workers are other processes, with their own modules.
    monkeypatch.setattr(TrajectorySink, "on_episode_end", _driver_never_writes)
    monkeypatch.setattr(shared_module, "write_trajectory", _driver_never_writes)
    seen = _Trajectories()
    shared = dict(common, output_dir=str(tmp_path / "ray"), shared_output_dir=True, **RAY)
    await RolloutRunner(8, concurrency=2, sinks=[seen], **shared).run_with(env)

    local_files, ray_files = tmp_path / "local" / "trajectories", tmp_path / "ray" / "trajectories"
    names = sorted(p.name for p in local_files.iterdir())
    assert len(names) == 8  # the failed episode 4 has its file too
    assert sorted(p.name for p in ray_files.iterdir()) == names  # no check file left over
    assert all(_same_trajectory(local_files / n, ray_files / n) for n in names)
    assert _episodes(tmp_path / "ray" / "stats.json") == _episodes(
        tmp_path / "local" / "stats.json"
    )
    # The sinks got the files' names, not the arrays, and can still read the steps.
    assert all(isinstance(t, StoredTrajectory) for t in seen.seen.values())
    assert seen.seen[2].path == ray_files / "episode_000002.npz"
    assert len(seen.seen[2]) == 6

    # The journal names the workers' files as it names the driver's: one gone is played again.
    (ray_files / "episode_000003.npz").unlink()
    again = _Trajectories()
    resumed = RolloutRunner(8, concurrency=2, sinks=[again], resume=True, **shared)
    result = await resumed.run_with(env)
    assert list(again.seen) == [3]
    assert [ep.index for ep in result.episodes] == list(range(8))
    assert _same_trajectory(local_files / "episode_000003.npz", ray_files / "episode_000003.npz")


@pytest.mark.anyio
async def test_shared_output_dir_a_worker_that_sees_another_folder_fails_the_run(
    ray_cluster: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that does not see the driver's folder stops the run, naming itself and the path."""

    def not_shared(output_dir: str) -> SharedDir:
        # As if the workers' node had a folder of that name of its own: no check file there.
        shared = open_shared_dir(output_dir)
        close_shared_dir(shared)
        return shared

    monkeypatch.setattr(driver_module, "open_shared_dir", not_shared)
    out = tmp_path / "out"
    runner = RolloutRunner(
        4, record_trajectory=True, output_dir=str(out), shared_output_dir=True, **RAY
    )
    with pytest.raises(ConfigError, match="that path is not shared between the nodes") as info:
        await runner.run_with(partial(ScriptedEnv, 3))
    message = str(info.value)
    assert str(out / "trajectories") in message
    assert re.search(r"Ray worker [01] of 2 \(pid \d+", message)
    assert info.value.key == "runner.shared_output_dir"
    assert not list((out / "trajectories").iterdir())


# --- the command line --------------------------------------------------------------------------


def _episodes(stats: Path) -> list[dict[str, Any]]:
    document = json.loads(stats.read_text())
    timings = ("wall_time_s", "env_time_s", "policy_time_s")
    return [{k: v for k, v in ep.items() if k not in timings} for ep in document["episodes"]]


def test_cli_ray_writes_the_stats_of_a_local_run(
    ray_cluster: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runner.backend=ray` writes the same stats.json and trajectories as local, shared or not."""
    common = ["runner.n_episodes=8", "runner.record_trajectory=true", "--json", "--no-progress"]
    assert cli_main([*common, f"output_dir={tmp_path / 'local'}"]) == 0
    local = json.loads(capsys.readouterr().out)
    ray_args = [
        "runner.backend=ray",
        "runner.n_workers=2",
        "runner.concurrency=2",
        "runner.ray_actor_options={num_cpus: 0.25}",
    ]
    assert cli_main([*common, *ray_args, f"output_dir={tmp_path / 'ray'}"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["mean_return"] == local["mean_return"]
    assert _episodes(tmp_path / "ray" / "stats.json") == _episodes(
        tmp_path / "local" / "stats.json"
    )
    written = sorted(p.name for p in (tmp_path / "ray" / "trajectories").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "local" / "trajectories").iterdir())
    assert len(written) == 8
    shared = ["runner.shared_output_dir=true", f"output_dir={tmp_path / 'shared'}"]
    assert cli_main([*common, *ray_args, *shared]) == 0
    capsys.readouterr()
    assert _episodes(tmp_path / "shared" / "stats.json") == _episodes(
        tmp_path / "local" / "stats.json"
    )
    assert sorted(p.name for p in (tmp_path / "shared" / "trajectories").iterdir()) == written


def test_example_runs(ray_cluster: ModuleType) -> None:
    """`python examples/ray_cluster.py` starts its own cluster and matches a local run."""
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            str(REPO / "examples" / "ray_cluster.py"),
            "--episodes",
            "8",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Ray: 8 episodes" in proc.stdout
    assert "same returns as on Ray: True" in proc.stdout


# --- errors without a cluster ------------------------------------------------------------------


def test_ray_settings_are_checked() -> None:
    """The Ray keywords are validated at construction, like the others."""
    with pytest.raises(ValueError, match="backend must be one of 'local', 'ray'"):
        RolloutRunner(2, backend="dask")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_workers must be >= 1"):
        RolloutRunner(2, n_workers=0)
    with pytest.raises(TypeError, match="ray_address must be"):
        RolloutRunner(2, ray_address=6379)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ray_actor_options must be a mapping"):
        RolloutRunner(2, ray_actor_options=["num_cpus"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shared_output_dir needs an output_dir"):
        RolloutRunner(2, shared_output_dir=True)
    with pytest.raises(ConfigError, match="shared_output_dir needs an output_dir") as info:
        RolloutRunner.from_config(load_config(["runner.shared_output_dir=true"]))
    assert info.value.key == "runner.shared_output_dir"
    runner = RolloutRunner.from_config(
        load_config(["runner.shared_output_dir=true", "output_dir=out"])
    )
    assert runner.shared_output_dir


def test_trio_caller_gets_a_clear_error() -> None:
    """The Ray backend needs asyncio: under Trio the run fails at once, saying so."""
    pytest.importorskip("ray")
    runner = RolloutRunner(2, backend="ray")

    async def main() -> None:
        await runner.run_with(partial(ScriptedEnv, 3))

    with pytest.raises(ConfigError, match="runs under asyncio only"):
        anyio.run(main, backend="trio")


def test_without_ray_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray, backend="ray" is a ConfigError with the install hint, at construction."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    hint = re.escape("pip install 'async-rollout[ray]'")
    with pytest.raises(ConfigError, match=hint):
        RolloutRunner(2, backend="ray")
    with pytest.raises(ConfigError, match=hint):
        import_ray()
    RolloutRunner(2)  # the local backend does not care


# --- the worker's loop, without Ray --------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_worker_keeps_its_loop_running_while_fed_in_small_chunks() -> None:
    """Fed one or two episodes at a time, a worker keeps `concurrency` envs, no more."""
    tracker = EnvTracker()
    job = Job(
        make_env=env_factory(partial(ScriptedEnv, 3, tracker=tracker)),
        agent=None,
        settings=LoopSettings(),
        concurrency=4,
        n_workers=1,
        forward_events=True,
    )
    core = WorkerCore(job, rank=0)
    pool = deque(_Episode(i, i, i) for i in range(30))
    results: list[EpisodeResult] = []
    starts = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(core.run)
        give: list[_Episode] = []
        while True:
            reply = await core.poll(give, bool(pool))
            give = []
            results += [e.result for e in reply.events if isinstance(e, Ended)]
            starts += sum(isinstance(e, Started) for e in reply.events)
            if len(results) == 30:
                core.finish()
            if reply.done:
                break
            if reply.wants and pool:
                give = [pool.popleft() for _ in range(min(1 + len(pool) % 2, len(pool)))]
    assert reply.error is None
    assert sorted(r.index for r in results) == list(range(30))
    assert starts == 30
    assert len(tracker.created) == 4
    assert not tracker.open


async def _error_of_recording_worker(
    shared: SharedDir, *, n_episodes: int, concurrency: int
) -> BaseException:
    """Run a worker that records into ``shared`` until it stops; return the error it shipped."""
    job = Job(
        make_env=env_factory(partial(ScriptedEnv, 3)),
        agent=None,
        settings=LoopSettings(record_trajectory=True),
        concurrency=concurrency,
        n_workers=1,
        forward_events=False,
        shared=shared,
    )
    core = WorkerCore(job, rank=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(core.run)
        episodes = [_Episode(i, i, i) for i in range(n_episodes)]
        reply = await core.poll(episodes, accept_work=False)
        while not reply.done:
            reply = await core.poll(accept_work=False)
    assert reply.error is not None
    return reply.error.restore()


@pytest.mark.anyio
async def test_worker_refuses_a_shared_folder_it_cannot_see(tmp_path: Path) -> None:
    """A worker reports a folder that is missing there, or not the driver's, naming the path."""
    with pytest.raises(ConfigError, match=re.escape(repr(str(tmp_path / "nope" / "trajectories")))):
        open_shared_dir(tmp_path / "nope")
    (tmp_path / "trajectories").mkdir()
    cases = [
        (SharedDir(str(tmp_path / "elsewhere"), "x.tmp"), "it does not exist there"),
        (SharedDir(str(tmp_path / "trajectories"), "x.tmp"), "not shared between the nodes"),
    ]
    for shared, problem in cases:
        error = await _error_of_recording_worker(shared, n_episodes=1, concurrency=2)
        assert isinstance(error, ConfigError)
        assert problem in str(error)
        assert repr(shared.folder) in str(error)
        assert "worker 0 of 1" in str(error)


@pytest.mark.anyio
async def test_worker_write_failure_names_the_file(tmp_path: Path) -> None:
    """A trajectory file a worker cannot write stops its loop, naming the episode and the path."""
    (tmp_path / "trajectories").mkdir()
    shared = open_shared_dir(tmp_path)
    # A directory where the file should go: the rename onto it fails.
    (tmp_path / "trajectories" / "episode_000000.npz").mkdir()
    error = await _error_of_recording_worker(shared, n_episodes=2, concurrency=1)
    assert isinstance(error, OSError)
    notes = " ".join(error.__notes__)
    assert "writing the trajectory of episode 0 to" in notes
    assert "episode_000000.npz" in notes
    assert "on Ray worker 0 of 1" in notes


def test_shipped_errors_keep_their_type_and_notes() -> None:
    """An exception that cannot be unpickled as is (keyword-only fields) still crosses over."""
    original = RolloutTimeout("episode 3: step 2 exceeded", phase="step", limit=1.0, step=2)
    original.add_note("in episode 3")
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(original))
    shipped = pickle.loads(pickle.dumps(ShippedError(original, pickle.dumps)))
    restored = shipped.restore()
    assert isinstance(restored, RolloutTimeout)
    assert (restored.phase, restored.limit, restored.step) == ("step", 1.0, 2)
    assert str(restored) == str(original)
    assert restored.__notes__ == ["in episode 3"]

    class Local(Exception):  # not importable: cannot make the trip by reference
        pass

    fallback = pickle.loads(pickle.dumps(ShippedError(Local("boom"), pickle.dumps))).restore()
    assert type(fallback) is RolloutError
    assert "Local: boom" in str(fallback)
