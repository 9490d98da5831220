from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from helpers import episode_key
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from async_rollout import (
    ConfigError,
    EpisodeContext,
    EpisodeResult,
    RolloutResult,
    RolloutRunner,
    Sink,
)
from async_rollout._results import Trajectory
from async_rollout._seeding import episode_seeds
from async_rollout._sinks import RunInfo, SinkSet
from async_rollout.recording import (
    EpisodeJournal,
    EventLogSink,
    OutputDir,
    TrajectorySink,
    _npz,
    _trajectories,
    _writer,
    _writer_child,
    iter_trajectories,
    load_trajectory,
    prepare_output_dir,
    write_trajectory,
)
from async_rollout.recording._journal import episode_record
from async_rollout.recording._json import dumps
from async_rollout.recording._writer import FileWriter, WriterError
from async_rollout.testing import ScriptedEnv

pytestmark = pytest.mark.anyio

TIMES = ("wall_time_s", "env_time_s", "policy_time_s")


class _AtIndices(Sink):
    """Plays the runner's part until ``output_dir`` is wired into it.

    The runner will play only the remaining indices of a resumed rollout;
    here a plain run of the remaining episodes (explicit seeds, indices
    0..k-1) is mapped onto their rollout indices before the file sinks see it,
    and the file sinks get the whole rollout's result at the end.
    """

    def __init__(self, out: OutputDir, seed: int, env_seeds: list[int], agent_seeds: list[int]):
        self.out = out
        self.seed = seed
        self.indices = out.remaining
        self.env_seeds = env_seeds
        self.agent_seeds = agent_seeds
        self.inner = SinkSet(out.sinks)
        self.new: list[EpisodeResult] = []

    async def on_run_start(self, run: RunInfo) -> None:
        info = dataclasses.replace(
            run, seed=self.seed, indices=self.indices, n_episodes=self.out.n_episodes
        )
        await self.inner.call("on_run_start", info)

    async def on_episode_start(self, episode: EpisodeContext) -> None:
        ctx = EpisodeContext(self.indices[episode.index], episode.env_seed, episode.agent_seed)
        await self.inner.call("on_episode_start", ctx)

    async def on_episode_end(self, result: EpisodeResult) -> None:
        result = dataclasses.replace(result, index=self.indices[result.index])
        await self.inner.call("on_episode_end", result)
        # What the runner does with an output_dir: the trajectory lives on disk only.
        self.new.append(dataclasses.replace(result, trajectory=None))

    async def on_run_end(self, result: RolloutResult) -> None:
        whole = RolloutResult.from_episodes(
            self.seed, [*self.out.done, *self.new], result.summary["wall_time_s"]
        )
        await self.inner.call("on_run_end", whole)


async def record(
    path: Path,
    env: Any,
    n: int,
    *,
    seed: int = 0,
    resume: bool = False,
    record_trajectory: bool = True,
    record_event_logs: bool = True,
    concurrency: int = 4,
    config: dict[str, Any] | None = None,
    sinks: Iterable[Sink] = (),
    **runner_kwargs: Any,
) -> OutputDir:
    """Run ``n`` episodes into ``path`` as the runner will with ``output_dir``."""
    env_seeds, agent_seeds = episode_seeds(seed, range(n))
    out = prepare_output_dir(
        path,
        resume=resume,
        n_episodes=n,
        env_seeds=env_seeds,
        agent_seeds=agent_seeds,
        record_trajectory=record_trajectory,
        record_event_logs=record_event_logs,
        config=config,
    )
    todo = out.remaining
    runner = RolloutRunner(
        len(todo),
        record_trajectory=record_trajectory,
        concurrency=concurrency,
        env_seeds=[env_seeds[i] for i in todo],
        agent_seeds=[agent_seeds[i] for i in todo],
        sinks=[_AtIndices(out, seed, env_seeds, agent_seeds), *sinks],
        **runner_kwargs,
    )
    await runner.run_with(env)
    return out


def scripted(**kwargs: Any) -> partial[ScriptedEnv]:
    return partial(ScriptedEnv, **kwargs)


def names_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def contents(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def stats_of(path: Path) -> dict[str, Any]:
    return json.loads((path / "stats.json").read_text())  # type: ignore[no-any-return]


def events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "events.jsonl").read_text().splitlines()]


def without_times(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in records]


def trajectory_key(traj: Trajectory) -> tuple[Any, ...]:
    ep = EpisodeResult(0, None, None, 0.0, len(traj), False, False, trajectory=traj)
    return (episode_key(ep), [json.dumps(i, sort_keys=True) for i in traj.infos])


def same_recording(a: Path, b: Path) -> None:
    """Two output dirs hold the same episodes, statistics and trajectories (timings aside)."""
    sa, sb = stats_of(a), stats_of(b)
    assert without_times(sa["episodes"]) == without_times(sb["episodes"])
    for key in ("wall_time_s", "steps_per_s"):
        sa["summary"].pop(key)
        sb["summary"].pop(key)
    assert sa["summary"] == sb["summary"]
    assert sa["complete"]
    assert sb["complete"]
    ta = [(i, trajectory_key(t)) for i, t in iter_trajectories(a)]
    tb = [(i, trajectory_key(t)) for i, t in iter_trajectories(b)]
    assert ta == tb


async def test_known_run_files_and_contents(tmp_path: Path) -> None:
    """A run leaves run.json, stats.json, the journal, events and one trajectory per episode."""
    config = {"env": {"_target_": "x.Y", "episode_length": 5}, "runner": {"n_episodes": 6}}
    await record(tmp_path, scripted(episode_length=5), 6, seed=7, config=config)
    files = ["episodes.jsonl", "events.jsonl", "run.json", "stats.json", "trajectories"]
    assert names_in(tmp_path) == files
    stats = stats_of(tmp_path)
    env_seeds, agent_seeds = episode_seeds(7, range(6))
    assert [e["index"] for e in stats["episodes"]] == list(range(6))
    assert [e["env_seed"] for e in stats["episodes"]] == env_seeds
    assert [e["agent_seed"] for e in stats["episodes"]] == agent_seeds
    assert stats["seed"] == 7
    assert stats["n_episodes"] == 6
    assert stats["complete"] is True
    assert stats["config"] == config
    assert len(stats["config_hash"]) == 64
    assert set(stats["versions"]) == {"async_rollout", "numpy", "gymnasium", "anyio", "python"}
    assert stats["started_at"] <= stats["ended_at"]
    assert stats["summary"]["n_episodes"] == 6
    assert stats["summary"]["total_steps"] == 30
    trajectories = dict(iter_trajectories(tmp_path))
    assert sorted(trajectories) == list(range(6))
    for ep in stats["episodes"]:
        assert set(ep) >= {"return", "length", "terminated", "truncated", "outcome", "error"}
        assert set(ep) >= {*TIMES, "metrics"}
        assert ep["outcome"] == "completed"
        assert ep["metrics"] == {"final_step": 5.0}
        assert ep["trajectory"] == f"trajectories/episode_{ep['index']:06d}.npz"
        traj = trajectories[ep["index"]]
        assert len(traj.observations) == 6
        assert len(traj.actions) == 5
        assert traj.rewards.dtype == np.float64
        # The loop sums rewards one by one from 0.0: the same order gives the same float.
        assert sum(traj.rewards.tolist()) == ep["return"]
        assert traj.terminated.tolist() == [False] * 4 + [True]
        assert traj.infos[0] == {"step": 0}
        assert traj.infos[-1] == {"step": 5, "metrics": {"final_step": 5.0}}


async def test_trajectories_match_the_in_memory_ones(tmp_path: Path) -> None:
    """The files hold exactly what a run without output_dir keeps on EpisodeResult.trajectory."""
    await record(tmp_path, scripted(episode_length=6), 8, seed=3, concurrency=8)
    env_seeds, agent_seeds = episode_seeds(3, range(8))
    runner = RolloutRunner(
        8, record_trajectory=True, env_seeds=env_seeds, agent_seeds=agent_seeds, concurrency=3
    )
    result = await runner.run_with(scripted(episode_length=6))
    in_memory = [trajectory_key(ep.trajectory) for ep in result.episodes if ep.trajectory]
    on_disk = [trajectory_key(traj) for _, traj in iter_trajectories(tmp_path)]
    assert on_disk == in_memory


async def test_standalone_sink_with_backpressure_and_large_episodes(tmp_path: Path) -> None:
    """TrajectorySink alone: a tiny queue and episodes too large to encode on the loop."""
    env = scripted(episode_length=20, obs_shape=(64, 64))
    runner = RolloutRunner(
        12,
        record_trajectory=True,
        concurrency=6,
        sinks=[TrajectorySink(tmp_path / "trajectories", max_pending=1)],
    )
    result = await runner.run_with(env)
    on_disk = [(i, trajectory_key(t)) for i, t in iter_trajectories(tmp_path)]
    in_memory = [
        (ep.index, trajectory_key(ep.trajectory)) for ep in result.episodes if ep.trajectory
    ]
    assert on_disk == in_memory
    assert len(on_disk) == 12


async def test_dict_observations_round_trip(tmp_path: Path) -> None:
    """Dict observations are stored as named arrays and come back as dicts, dtypes kept."""
    env_seeds, agent_seeds = episode_seeds(0, range(3))
    runner = RolloutRunner(3, record_trajectory=True, env_seeds=env_seeds, agent_seeds=agent_seeds)
    expected = await runner.run_with(scripted(episode_length=4, dict_obs=True))
    await record(tmp_path, scripted(episode_length=4, dict_obs=True), 3)
    with np.load(tmp_path / "trajectories" / "episode_000000.npz", allow_pickle=False) as z:
        assert {"observations/position", "observations/mask"} <= set(z.files)
        assert z["observations/position"].shape == (5, 4)
    for (index, traj), ep in zip(iter_trajectories(tmp_path), expected.episodes, strict=True):
        assert index == ep.index
        assert ep.trajectory is not None
        for got, want in zip(traj.observations, ep.trajectory.observations, strict=True):
            assert isinstance(got, dict)
            assert list(got) == list(want)
            for key in want:
                assert got[key].dtype == want[key].dtype
                np.testing.assert_array_equal(got[key], want[key])
        assert trajectory_key(traj) == trajectory_key(ep.trajectory)


def test_nested_spaces_and_odd_infos_round_trip(tmp_path: Path) -> None:
    """Tuple/Dict nesting, '/' in keys, ragged leaves and non-JSON infos survive without pickle."""
    obs = [
        {"a/b": np.full(2, i, np.int16), "t": (np.float32(i), {"x": np.eye(2) * i}), "r": [0] * i}
        for i in range(3)
    ]
    actions = [(np.int64(i), np.array([i, -i])) for i in range(2)]
    infos = [{"o": object(), "arr": np.arange(2), "n": np.float32(0.5), "s": "x"}] * 3
    traj = Trajectory(
        observations=obs,
        actions=actions,
        rewards=np.array([1.0, 2.0]),
        terminated=np.array([False, True]),
        truncated=np.array([False, False]),
        infos=infos,
    )
    path = tmp_path / "t.npz"
    write_trajectory(path, traj)
    back = load_trajectory(path)
    with np.load(path, allow_pickle=False) as z:
        assert "observations/a%2Fb" in z.files
        assert "observations/t/1/x" in z.files
    assert [sorted(o) for o in back.observations] == [["a/b", "r", "t"]] * 3
    for got, want in zip(back.observations, obs, strict=True):
        assert got["a/b"].dtype == np.int16
        np.testing.assert_array_equal(got["a/b"], want["a/b"])
        assert isinstance(got["t"], tuple)
        assert got["t"][0] == want["t"][0]
        np.testing.assert_array_equal(got["t"][1]["x"], want["t"][1]["x"])
        # Ragged lists cannot be one array: they are kept as JSON.
        assert got["r"] == want["r"]
    assert [(int(a), b.tolist()) for a, b in back.actions] == [(0, [0, 0]), (1, [1, -1])]
    assert back.infos[0]["arr"] == [0, 1]
    assert back.infos[0]["n"] == 0.5
    assert back.infos[0]["o"].startswith("<object object")
    assert back.rewards.tolist() == [1.0, 2.0]
    assert not list(tmp_path.glob(".*"))


_leaf = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int8, np.int64, np.bool_, np.uint8]),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
)
_structure = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.dictionaries(st.text(min_size=1, max_size=4), inner, min_size=1, max_size=3),
        st.tuples(inner, inner),
    ),
    max_leaves=5,
)


@settings(deadline=None, max_examples=40)
@given(first=_structure, n=st.integers(1, 4))
def test_any_nested_observation_round_trips(first: Any, n: int) -> None:
    """Any nesting of Dicts and Tuples over arrays comes back equal, dtypes and shapes kept."""
    observations = [first] * n

    def same(a: Any, b: Any) -> None:
        if isinstance(b, dict):
            assert isinstance(a, dict)
            assert list(a) == list(b)
            for k in b:
                same(a[k], b[k])
        elif isinstance(b, tuple):
            assert isinstance(a, tuple)
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                same(x, y)
        else:
            assert np.asarray(a).dtype == b.dtype
            np.testing.assert_array_equal(a, b)

    steps = n - 1
    traj = Trajectory(
        observations,
        [0] * steps,
        np.zeros(steps),
        np.zeros(steps, bool),
        np.zeros(steps, bool),
        [{}] * n,
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "h.npz"
        write_trajectory(path, traj)
        back = load_trajectory(path)
    assert len(back.observations) == n
    for got, want in zip(back.observations, observations, strict=True):
        same(got, want)
    assert [int(a) for a in back.actions] == [0] * steps


async def test_occupied_output_dir_refused(tmp_path: Path) -> None:
    """A second run into a used output_dir is a ConfigError naming it; nothing is touched."""
    await record(tmp_path, scripted(episode_length=3), 4)
    before = contents(tmp_path)
    with pytest.raises(ConfigError, match="resume=True") as info:
        await record(tmp_path, scripted(episode_length=3), 4)
    assert str(tmp_path) in str(info.value)
    assert "runner.resume=true" in str(info.value)
    assert info.value.key == "output_dir"
    after = contents(tmp_path)
    assert after == before


def test_foreign_non_empty_dir_refused(tmp_path: Path) -> None:
    """A folder with someone else's files is refused, with or without resume."""
    (tmp_path / "notes.txt").write_text("mine")
    kwargs: dict[str, Any] = dict(
        n_episodes=1,
        env_seeds=[1],
        agent_seeds=[2],
        record_trajectory=False,
        record_event_logs=False,
        config=None,
    )
    with pytest.raises(ConfigError, match="not empty"):
        prepare_output_dir(tmp_path, resume=False, **kwargs)
    with pytest.raises(ConfigError, match=r"no run\.json"):
        prepare_output_dir(tmp_path, resume=True, **kwargs)
    with pytest.raises(ConfigError, match="is a file"):
        prepare_output_dir(tmp_path / "notes.txt", resume=True, **kwargs)
    assert names_in(tmp_path) == ["notes.txt"]


async def test_resume_with_other_seeds_refused(tmp_path: Path) -> None:
    """Resuming with another base seed or size would mix two rollouts: refused."""
    await record(tmp_path, scripted(episode_length=3), 4, seed=1)
    with pytest.raises(ConfigError, match=r"seeds differ .*episode 0 had env_seed="):
        await record(tmp_path, scripted(episode_length=3), 4, seed=2, resume=True)
    with pytest.raises(ConfigError, match="earlier run had 4 episodes, this one has 5"):
        await record(tmp_path, scripted(episode_length=3), 5, seed=1, resume=True)


async def test_resume_into_new_or_empty_dir_starts_fresh(tmp_path: Path) -> None:
    out = await record(tmp_path / "new", scripted(episode_length=3), 3, resume=True)
    assert not out.resumed
    assert stats_of(tmp_path / "new")["complete"]


async def test_resume_after_simulated_crash(tmp_path: Path) -> None:
    """Lost stats, lost and orphaned trajectories, a torn journal: resume restores everything."""
    env = scripted(episode_length=5, dict_obs=True)
    await record(tmp_path / "clean", env, 12, seed=5)
    crashed = tmp_path / "crashed"
    await record(crashed, env, 12, seed=5)
    (crashed / "stats.json").unlink()
    for i in (2, 7):
        (crashed / "trajectories" / f"episode_{i:06d}.npz").unlink()
    lines = (crashed / "episodes.jsonl").read_text().splitlines(keepends=True)
    by_index = {json.loads(line)["index"]: line for line in lines}
    # Episode 9's line is lost (its file stays, orphaned); episode 4's is torn mid-line.
    kept = [by_index[i] for i in sorted(by_index) if i not in (4, 9)]
    (crashed / "episodes.jsonl").write_text("".join(kept) + by_index[4][:25])
    (crashed / "trajectories" / ".episode_000004.npz.tmp").write_bytes(b"half a zip")
    events = (crashed / "events.jsonl").read_bytes()
    (crashed / "events.jsonl").write_bytes(events[:-10])

    out = await record(crashed, env, 12, seed=5, resume=True)
    assert out.resumed
    assert [ep.index for ep in out.done] == [0, 1, 3, 5, 6, 8, 10, 11]
    assert all(ep.trajectory is None for ep in out.done)
    same_recording(crashed, tmp_path / "clean")
    stats = stats_of(crashed)
    assert stats["resumed"] is True
    assert stats["n_resumed"] == 8
    assert len({e["index"] for e in stats["episodes"]}) == len(stats["episodes"]) == 12
    journal = [json.loads(line) for line in (crashed / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in journal) == list(range(12))
    assert not list((crashed / "trajectories").glob(".*"))
    log = events_of(crashed)
    assert [e["event"] for e in log].count("run_start") == 2
    assert log[-1]["event"] == "run_end"
    assert log[-1]["complete"] is True
    resumed_start = [e for e in log if e["event"] == "run_start"][-1]
    assert resumed_start["resumed"] is True
    assert resumed_start["indices"] == [2, 4, 7, 9]


async def test_resume_after_cancellation(tmp_path: Path) -> None:
    """A cancelled run writes stats.json (incomplete); resume plays the rest, same episodes."""
    env = scripted(episode_length=4, step_latency=0.001)
    await record(tmp_path / "clean", env, 16, seed=9)

    class CancelAfter(Sink):
        def __init__(self, scope: anyio.CancelScope) -> None:
            self.scope = scope
            self.ended = 0

        def on_episode_end(self, result: EpisodeResult) -> None:
            self.ended += 1
            if self.ended == 5:
                self.scope.cancel()

    with anyio.CancelScope() as scope:
        await record(tmp_path / "cut", env, 16, seed=9, sinks=[CancelAfter(scope)])
    assert scope.cancelled_caught
    partial_stats = stats_of(tmp_path / "cut")
    assert partial_stats["complete"] is False
    outcomes = partial_stats["summary"]["outcomes"]
    assert outcomes["cancelled"] >= 1
    assert outcomes["completed"] >= 5
    # No file for a cancelled episode: it is played again.
    cancelled = {e["index"] for e in partial_stats["episodes"] if e["outcome"] == "cancelled"}
    assert cancelled.isdisjoint(i for i, _ in iter_trajectories(tmp_path / "cut"))

    await record(tmp_path / "cut", env, 16, seed=9, resume=True)
    same_recording(tmp_path / "cut", tmp_path / "clean")


async def test_temporary_files_skipped_by_readers(tmp_path: Path) -> None:
    await record(tmp_path, scripted(episode_length=2), 3)
    folder = tmp_path / "trajectories"
    (folder / ".episode_000007.npz.tmp").write_bytes(b"PK\x03\x04 torn")
    (folder / "README").write_text("not a trajectory")
    assert [i for i, _ in iter_trajectories(tmp_path)] == [0, 1, 2]


async def test_events_log_failures_and_parse(tmp_path: Path) -> None:
    """Every line parses; env errors and timeouts end their episodes with outcome and error."""
    env_seeds, _ = episode_seeds(0, range(8))
    env = scripted(episode_length=4, fail_at_step=2, fail_seeds={env_seeds[1]})
    await record(tmp_path, env, 8, on_env_error="skip", concurrency=8)
    log = events_of(tmp_path)
    assert log[0]["event"] == "run_start"
    assert log[0]["n_episodes"] == 8
    assert log[0]["env_seeds"] == env_seeds
    assert log[-1]["event"] == "run_end"
    ends = {e["index"]: e for e in log if e["event"] == "episode_end"}
    starts = [e for e in log if e["event"] == "episode_start"]
    assert sorted(ends) == list(range(8)) == sorted(e["index"] for e in starts)
    assert ends[1]["outcome"] == "env_error"
    assert "scripted failure at step 2" in ends[1]["error"]
    assert ends[1]["length"] == 1
    assert ends[0]["outcome"] == "completed"
    assert log[-1]["summary"]["outcomes"]["env_error"] == 1
    stats = stats_of(tmp_path)
    assert stats["episodes"][1]["outcome"] == "env_error"
    # A failed episode keeps the steps it took before failing.
    assert len(load_trajectory(tmp_path / "trajectories" / "episode_000001.npz")) == 1


async def test_events_log_timeouts_and_retries(tmp_path: Path) -> None:
    """A step deadline is logged as a timeout; a retried episode starts again with attempt 2."""
    env_seeds, _ = episode_seeds(0, range(4))
    env = scripted(episode_length=4, hang_at_step=2, fail_seeds={env_seeds[2]})
    await record(
        tmp_path,
        env,
        4,
        on_env_error="retry",
        max_retries=1,
        step_timeout=0.05,
    )
    log = events_of(tmp_path)
    attempts = [e["attempt"] for e in log if e["event"] == "episode_start" and e["index"] == 2]
    assert attempts == [1, 2]
    (end,) = [e for e in log if e["event"] == "episode_end" and e["index"] == 2]
    assert end["outcome"] == "timeout"
    assert "step_timeout=0.05" in end["error"]
    assert stats_of(tmp_path)["summary"]["outcomes"]["timeout"] == 1


def test_retry_hook_logs_an_event(tmp_path: Path) -> None:
    """Ready for the loop's retry hook: on_retry writes a 'retry' line."""
    sink = EventLogSink(tmp_path)
    failed = EpisodeResult(3, 1, 2, 0.5, 2, False, False, "env_error", "RuntimeError: boom")
    sink.on_retry(failed, 1, 0.05)
    sink.close()
    (line,) = events_of(tmp_path)
    assert line["event"] == "retry"
    assert (line["index"], line["attempt"], line["outcome"]) == (3, 1, "env_error")
    assert line["error"] == "RuntimeError: boom"


async def test_recording_off_writes_only_stats_and_journal(tmp_path: Path) -> None:
    await record(
        tmp_path, scripted(episode_length=2), 3, record_trajectory=False, record_event_logs=False
    )
    assert names_in(tmp_path) == [
        "episodes.jsonl",
        "run.json",
        "stats.json",
    ]
    assert all(e["trajectory"] is None for e in stats_of(tmp_path)["episodes"])
    assert list(iter_trajectories(tmp_path)) == []


_KILLED_RUN = """
import sys
import tempfile
from functools import partial
from pathlib import Path

import anyio

sys.path.insert(0, {tests!r})
from async_rollout.testing import ScriptedEnv
from test_recording import record

env = partial(ScriptedEnv, episode_length=5, step_latency=0.01, dict_obs=True)
anyio.run(partial(record, Path({out!r}), env, 60, seed=11, concurrency=4), backend={backend!r})
"""


async def test_killed_process_leaves_whole_files_and_resumes(
    tmp_path: Path, anyio_backend: str
) -> None:
    """SIGKILL mid-run: only loadable trajectories, parseable lines; resume matches a clean run."""
    out = tmp_path / "killed"
    script = _KILLED_RUN.format(
        tests=str(Path(__file__).parent), out=str(out), backend=anyio_backend
    )
    process = await anyio.open_process([sys.executable, "-c", script])
    try:
        with anyio.fail_after(30):
            while True:
                journal = out / "episodes.jsonl"
                if journal.exists() and journal.read_text().count("\n") >= 8:
                    break
                assert process.returncode is None, "the recording process ended early"
                await anyio.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        with anyio.move_on_after(10, shield=True):
            await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "stats.json").exists()
    finished = list(iter_trajectories(out))
    assert 8 <= len(finished) < 60
    lines = (out / "events.jsonl").read_text().split("\n")
    for line in lines[:-1]:
        json.loads(line)

    env = scripted(episode_length=5, step_latency=0.01, dict_obs=True)
    await record(out, env, 60, seed=11, concurrency=16, resume=True)
    await record(tmp_path / "clean", env, 60, seed=11, concurrency=16)
    same_recording(out, tmp_path / "clean")


async def test_runner_writes_output_dir(tmp_path: Path) -> None:
    """End to end through RolloutRunner(output_dir=...): the lead flips this on."""
    runner = RolloutRunner(
        5, record_trajectory=True, record_event_logs=True, output_dir=str(tmp_path)
    )
    result = await runner.run_with(scripted(episode_length=3))
    assert all(ep.trajectory is None for ep in result.episodes)
    stats = stats_of(tmp_path)
    assert [e["return"] for e in stats["episodes"]] == result.returns
    assert [i for i, _ in iter_trajectories(tmp_path)] == list(range(5))
    assert events_of(tmp_path)[-1]["event"] == "run_end"
    with pytest.raises(ConfigError, match="resume=True"):
        await runner.run_with(scripted(episode_length=3))
    (tmp_path / "stats.json").unlink()
    (tmp_path / "trajectories" / "episode_000003.npz").unlink()
    resumed = RolloutRunner(5, record_trajectory=True, output_dir=str(tmp_path), resume=True)
    again = await resumed.run_with(scripted(episode_length=3))
    assert again.returns == result.returns
    assert [i for i, _ in iter_trajectories(tmp_path)] == list(range(5))


def test_no_pickle_in_trajectory_files(tmp_path: Path) -> None:
    """Every entry loads with allow_pickle=False (the reader's promise to users)."""
    traj = Trajectory(
        [np.zeros(2)] * 2,
        [1],
        np.ones(1),
        np.ones(1, bool),
        np.zeros(1, bool),
        [{}, {"x": object()}],
    )
    write_trajectory(tmp_path / "e.npz", traj)
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        for name in z.files:
            assert not z[name].dtype.hasobject
    assert os.listdir(tmp_path) == ["e.npz"]


# ---------------------------------------------------------------- the writer process


def _plain_trajectory(n: int = 4) -> Trajectory:
    return Trajectory(
        [np.arange(3, dtype=np.float32) + i for i in range(n + 1)],
        [np.int64(i % 2) for i in range(n)],
        np.arange(n, dtype=np.float64),
        np.zeros(n, bool),
        np.array([False] * (n - 1) + [True]),
        [{"i": i} for i in range(n + 1)],
    )


async def test_writer_process_lays_out_the_archive_numpy_savez_would(tmp_path: Path) -> None:
    """A file the writer process laid out is byte for byte the one encoded in-process."""
    traj = _plain_trajectory()
    arrays = _trajectories._arrays(traj, {"index": 3})
    expected = _npz.npz_bytes(arrays)
    payload = _npz.archive_payload(arrays)
    assert expected is not None
    assert payload is not None
    writer = FileWriter()
    writer.acquire()
    await writer.start()
    writer.write_archive(str(tmp_path / "a.npz"), payload)
    await writer.release()
    assert (tmp_path / "a.npz").read_bytes() == expected
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["observations"], np.stack(traj.observations))
    assert names_in(tmp_path) == ["a.npz"]


@pytest.mark.parametrize(
    "result",
    [
        EpisodeResult(3, 11, 12, 2.5, 4, True, False, wall_time_s=0.25, metrics={"a": 1.0}),
        EpisodeResult(4, None, None, float("nan"), 0, False, True, "env_error", 'b "ü"\n'),
        # Not plain values: the sinks format these lines themselves.
        EpisodeResult(5, 1, 2, np.float64(-1.5), 2, np.bool_(True), False, metrics={"m": 2.0}),
    ],
)
def test_lines_the_writer_formats_are_the_sinks_lines(
    tmp_path: Path, result: EpisodeResult
) -> None:
    """Journal and event lines made by the writer process equal the ones the sinks would make."""
    journal = EpisodeJournal(tmp_path, trajectories=False)
    events = EventLogSink(tmp_path)
    events.on_episode_start(EpisodeContext(result.index, result.env_seed, result.agent_seed))
    journal.on_episode_end(result)
    events.on_episode_end(result)
    journal.close()
    events.close()
    (line,) = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert line == dumps(episode_record(result, None))
    start, end = events_of(tmp_path)
    assert start["event"] == "episode_start"
    assert (start["index"], start["env_seed"], start["attempt"]) == (
        result.index,
        result.env_seed,
        1,
    )
    assert end["event"] == "episode_end"
    assert end["return"] == result.total_reward or np.isnan(result.total_reward)
    assert end["terminated"] is bool(result.terminated)


async def test_a_failed_write_stops_the_run(tmp_path: Path) -> None:
    """A file the writer cannot make is a WriterError (an OSError) naming it, at the run's end."""
    writer = FileWriter()
    writer.acquire()
    await writer.start()
    writer.write(str(tmp_path / "missing" / "a.npz"), b"data")
    writer.append(str(tmp_path / "log.jsonl"), "{}\n")
    with pytest.raises(WriterError, match=r"missing/a\.npz.*FileNotFoundError"):
        await writer.release()
    # The rest was written.
    assert (tmp_path / "log.jsonl").read_text() == "{}\n"


async def test_a_writer_process_that_died_is_an_error(tmp_path: Path) -> None:
    """Writing to a writer process that ended is a WriterError saying so, never a hang."""
    writer = FileWriter()
    writer.acquire()
    await writer.start()
    process = writer._process
    assert process is not None
    process.kill()
    process.wait()

    async def keep_writing() -> None:
        # The pipe takes a while before the dead reader shows: write until it does.
        for _ in range(1000):
            writer.append(str(tmp_path / "log"), "x" * 10000 + "\n")
            await writer.wait()

    with pytest.raises(WriterError, match="ended before the run did"):
        await keep_writing()
    with pytest.raises(WriterError):
        await writer.release()


async def test_recording_without_a_writer_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no process can be started, a thread of the rollout's process writes the same files."""
    monkeypatch.setattr(_writer, "_helper_command", lambda: None)
    out = await record(tmp_path / "thread", scripted(episode_length=3, dict_obs=True), 6)
    assert out.sinks
    monkeypatch.undo()
    await record(tmp_path / "process", scripted(episode_length=3, dict_obs=True), 6)
    same_recording(tmp_path / "thread", tmp_path / "process")
    assert contents_of(tmp_path / "thread" / "trajectories") == contents_of(
        tmp_path / "process" / "trajectories"
    )


def contents_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_partial_last_frame_is_dropped(tmp_path: Path) -> None:
    """Input cut mid-frame (a killed rollout) leaves no file and no temporary file behind."""
    path = str(tmp_path / "f.npz")
    encoded = path.encode()
    frame = _writer_child.HEADER.pack(_writer_child.FILE, len(encoded), 6) + encoded + b"abcdef"
    reports: list[str] = []
    handler = _writer_child.FrameHandler(reports.append)
    handler.feed(frame)
    handler.feed(frame[:-3].replace(b"f.npz", b"g.npz"))
    handler.close()
    assert names_in(tmp_path) == ["f.npz"]
    assert (tmp_path / "f.npz").read_bytes() == b"abcdef"
    assert reports == []
