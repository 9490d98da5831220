"""env_factory(spec, offload="process"): one child process per env, reaped on every path."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import anyio
import anyio.to_thread
import gymnasium as gym
import numpy as np
import pytest
from helpers import episode_key

from async_rollout import AsyncEnvWrapper, RemoteEnvError, RolloutRunner, Sink, env_factory
from async_rollout.remote import serve_env
from async_rollout.remote._blocking import serve_blocking
from async_rollout.remote._child import ORPHAN_GRACE_S
from async_rollout.remote._process import ProcessEnv, live_children, spec_to_json
from async_rollout.remote._wire import encode
from async_rollout.remote._wire import frame as encode_frame
from async_rollout.testing import ScriptedEnv

pytestmark = pytest.mark.anyio

SCRIPTED = "async_rollout.testing.ScriptedEnv"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def no_children_left() -> Any:
    assert live_children() == []
    yield
    assert live_children() == []


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a foreign parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def wait_gone(pids: list[int], limit: float = 10.0) -> None:
    """Hang guard for another process's exit (not a timing claim)."""
    with anyio.fail_after(limit):
        while not all(gone(pid) for pid in pids):  # noqa: ASYNC110  (a foreign exit: no event)
            await anyio.sleep(0.02)


class ChildSpy(Sink):
    """Records the live children seen at each episode start."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def on_episode_start(self, episode: Any) -> None:
        self.pids.update(live_children())


async def test_process_offload_gives_the_same_episodes_as_inline() -> None:
    """Same seeds, same episodes; the default RandomPolicy gets its space before any reset."""
    spec = {"_target_": SCRIPTED, "episode_length": 6, "dict_obs": True}
    spy = ChildSpy()
    with anyio.fail_after(40):
        inline = await RolloutRunner(5, concurrency=2, record_trajectory=True).run_with(spec)
        runner = RolloutRunner(5, concurrency=2, record_trajectory=True, sinks=[spy])
        offloaded = await runner.run_with(env_factory(spec, offload="process"))
    assert [episode_key(ep) for ep in offloaded.episodes] == [
        episode_key(ep) for ep in inline.episodes
    ]
    assert len(spy.pids) == 2
    assert live_children() == []
    await wait_gone(sorted(spy.pids), limit=1.0)


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})])
async def test_process_offload_on_uvloop() -> None:
    """uvloop's transports are not asyncio.Transport subclasses: the client must not care."""
    pytest.importorskip("uvloop")
    spec = {"_target_": SCRIPTED, "episode_length": 4}
    with anyio.fail_after(40):
        inline = await RolloutRunner(3, concurrency=2, record_trajectory=True).run_with(spec)
        offloaded = await RolloutRunner(3, concurrency=2, record_trajectory=True).run_with(
            env_factory(spec, offload="process")
        )
    assert [episode_key(ep) for ep in offloaded.episodes] == [
        episode_key(ep) for ep in inline.episodes
    ]


async def test_module_level_callable_and_worker_index() -> None:
    factory = env_factory(ScriptedEnv, offload="process")
    env = factory(worker_index=3)
    try:
        assert isinstance(env, ProcessEnv)
        with anyio.fail_after(30):
            obs, _ = await env.reset(seed=2)
            assert obs.shape == (4,)
            assert await env.render() == "step 0/10"
    finally:
        await env.close()
    assert gone(env.pid)


async def test_gymnasium_id() -> None:
    env = env_factory("CartPole-v1", offload="process")()
    local = gym.make("CartPole-v1")
    try:
        assert env.action_space == local.action_space
        with anyio.fail_after(30):
            obs, _ = await env.reset(seed=7)
            assert (obs == local.reset(seed=7)[0]).all()
            step = await env.step(1)
            assert (step[0] == local.step(1)[0]).all()
    finally:
        await env.close()
        local.close()


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (lambda: ScriptedEnv(), ValueError, "no importable dotted path"),
        (functools.partial(ScriptedEnv, episode_length=3), ValueError, "no importable"),
        ({"_target_": SCRIPTED, "tracker": object()}, TypeError, "JSON"),
        ({"episode_length": 3}, TypeError, "_target_"),
        (ScriptedEnv(), TypeError, "module-level callable"),
        (42, TypeError, "gymnasium id"),
    ],
)
async def test_specs_that_cannot_reach_a_child(spec: Any, error: type, match: str) -> None:
    """A spec the child cannot rebuild fails at env_factory time, with the reason."""
    with pytest.raises(error, match=match):
        env_factory(spec, offload="process")


async def test_main_module_callable_is_refused() -> None:
    def make() -> ScriptedEnv:
        return ScriptedEnv()

    make.__module__ = "__main__"
    make.__qualname__ = "make"
    with pytest.raises(ValueError, match="__main__"):
        env_factory(make, offload="process")


async def test_child_that_fails_to_make_its_env() -> None:
    env = env_factory({"_target_": SCRIPTED, "no_such_argument": 1}, offload="process")()
    try:
        with anyio.fail_after(30), pytest.raises(RemoteEnvError, match="could not make its env"):
            await env.reset(seed=0)
    finally:
        await env.close()


async def test_child_killed_mid_episode() -> None:
    """A crashed env process is a RemoteEnvError naming its exit, never a hang."""
    env = env_factory(SCRIPTED_SPEC, offload="process")()
    try:
        with anyio.fail_after(30):
            await env.reset(seed=0)
            await env.step(0)
            os.kill(env.pid, signal.SIGKILL)
            with pytest.raises(RemoteEnvError, match="exited with code -9"):
                await env.step(0)
    finally:
        await env.close()


SCRIPTED_SPEC = {"_target_": SCRIPTED, "episode_length": 50, "step_latency": 0.01}


async def test_children_are_reaped_when_the_run_fails_or_is_cancelled() -> None:
    factory = env_factory({**SCRIPTED_SPEC, "fail_at_step": 3}, offload="process")
    with anyio.fail_after(40):
        with pytest.raises(RemoteEnvError, match="scripted failure"):
            await RolloutRunner(4, concurrency=2).run_with(factory)
        assert live_children() == []
        spy = ChildSpy()
        with anyio.move_on_after(2) as scope:
            runner = RolloutRunner(40, concurrency=2, sinks=[spy])
            await runner.run_with(env_factory(SCRIPTED_SPEC, offload="process"))
        assert scope.cancelled_caught
        assert len(spy.pids) == 2
        assert live_children() == []
        await wait_gone(sorted(spy.pids), limit=1.0)


async def test_children_exit_when_their_parent_is_killed() -> None:
    """A parent killed with SIGKILL closes no env; its children notice and exit."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from async_rollout import env_factory
        env = env_factory({SCRIPTED_SPEC!r}, offload="process")()
        env.action_space  # the child is up
        print(env.pid, env.path, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    with anyio.fail_after(40):
        parent = await anyio.run_process(
            [sys.executable, "-c", script], check=False, stderr=subprocess.PIPE
        )
        assert parent.returncode == -signal.SIGKILL, parent.stderr.decode()
        pid, path = parent.stdout.decode().split()
        await wait_gone([int(pid)])
        assert not await anyio.Path(path).parent.exists()


# --- synchronous envs: the child's event-loop-free server ------------------------------------


class SyncEnv(gym.Env[np.ndarray, np.int64]):
    """A gymnasium env for the blocking server: seeded episodes, scripted failures and stalls.

    ``info["made"]`` counts the envs made in its process, so a test can tell a
    fresh env from a reused one.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"]}  # noqa: RUF012
    made = 0
    closed = 0

    def __init__(
        self,
        episode_length: int = 10,
        fail_at_step: int | None = None,
        stall_at_step: int | None = None,
        stall_s: float = 0.0,
    ) -> None:
        SyncEnv.made += 1
        self.number = SyncEnv.made
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.render_mode = "ansi"
        self.episode_length = episode_length
        self.fail_at_step = fail_at_step
        self.stall_at_step = stall_at_step
        self.stall_s = stall_s
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return obs, {"step": 0, "made": self.number, "options": options}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        if self._t == self.fail_at_step:
            raise RuntimeError("scripted failure")
        if self._t == self.stall_at_step:
            time.sleep(self.stall_s)
        obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        reward = float(self.np_random.random()) + float(action)
        return obs, reward, self._t >= self.episode_length, False, {"step": self._t}

    def render(self) -> str:
        return f"step {self._t}"

    def close(self) -> None:
        SyncEnv.closed += 1


SYNC = f"{__name__}.SyncEnv"


def frame_of(message: dict[str, Any]) -> bytes:
    return encode_frame(encode(message), 2**26)


async def transcript(path: str, messages: list[dict[str, Any]]) -> list[bytes]:
    """Send each message on a new connection to ``path``; return the raw reply payloads."""
    stream = await anyio.connect_unix(path)
    replies = []
    async with stream:
        buffer = b""
        for message in messages:
            await stream.send(frame_of(message))
            while len(buffer) < 4 or len(buffer) < 4 + int.from_bytes(buffer[:4], "big"):
                try:
                    buffer += await stream.receive()
                except anyio.EndOfStream:
                    return replies
            size = int.from_bytes(buffer[:4], "big")
            replies.append(buffer[4 : 4 + size])
            buffer = buffer[4 + size :]
    return replies


CONVERSATIONS = {
    "episode": [
        {"type": "hello", "version": 1, "token": None, "max_frame_size": 2**20},
        {"type": "reset", "seed": 3, "options": {"level": [1, 2]}},
        {"type": "step", "action": 1},
        {"type": "step", "action": np.int64(2)},
        {"type": "render"},
        {"type": "dance"},
        {"type": "step", "action": 0},
        {"type": "close"},
    ],
    "env error": [
        {"type": "hello", "version": 1},
        {"type": "reset", "seed": 5},
        {"type": "step", "action": 0},
        {"type": "step", "action": 0},
        {"type": "step", "action": 0},
    ],
    "protocol error": [
        {"type": "hello", "version": 1},
        {"type": "reset", "seed": "three"},
    ],
    "no action": [{"type": "hello", "version": 1}, {"type": "step"}],
    "bad version": [{"type": "hello", "version": 99}],
    "not a hello": [{"type": "reset"}],
}


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
async def test_blocking_server_answers_byte_for_byte_as_serve_env(
    conversation: str, tmp_path: Any
) -> None:
    """The child's server for sync envs speaks serve_env's protocol: the same bytes back."""
    make = functools.partial(SyncEnv, fail_at_step=2)
    messages = CONVERSATIONS[conversation]
    with anyio.fail_after(20):
        SyncEnv.made = SyncEnv.closed = 0
        async with anyio.create_task_group() as tg:
            path = await tg.start(functools.partial(serve_env, make, path=str(tmp_path / "a")))
            expected = await transcript(path, messages)
            # Let the session see the end of its connection first: cancelling a Unix socket
            # stream that is about to turn readable trips an anyio race on asyncio (#1267).
            while SyncEnv.closed < SyncEnv.made:  # noqa: ASYNC110  (another task's progress)
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        SyncEnv.made = SyncEnv.closed = 0
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "b"))
        listener.listen()
        stop_read, stop_write = os.pipe()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    functools.partial(
                        anyio.to_thread.run_sync, serve_blocking, make, listener, stop_read
                    )
                )
                got = await transcript(str(tmp_path / "b"), messages)
                os.close(stop_write)  # the server's cue to end
        finally:
            listener.close()
            os.close(stop_read)
    assert got == expected
    assert SyncEnv.closed == SyncEnv.made  # every session's env, on every path
    assert len(got) == {"episode": 8, "env error": 5}.get(conversation, len(messages))


async def test_sync_env_gives_the_same_episodes_as_inline() -> None:
    """The blocking server in the child: same seeds, same episodes, with or without wrappers."""
    wrappers = [
        gym.wrappers.TimeAwareObservation,
        {"gymnasium.wrappers.ClipReward": {"min_reward": 0.0, "max_reward": 1.5}},
    ]
    with anyio.fail_after(40):
        for spec, wrap in ((SyncEnv, ()), ("CartPole-v1", wrappers)):
            inline = await RolloutRunner(5, concurrency=2, record_trajectory=True).run_with(
                env_factory(spec, wrappers=wrap)
            )
            offloaded = await RolloutRunner(5, concurrency=2, record_trajectory=True).run_with(
                env_factory(spec, wrappers=wrap, offload="process")
            )
            assert [episode_key(ep) for ep in offloaded.episodes] == [
                episode_key(ep) for ep in inline.episodes
            ]


async def test_gymnasium_wrappers_wrap_the_env_in_the_child() -> None:
    """Wrappers before the first async wrapper run in the child; the async ones here."""
    factory = env_factory(
        "CartPole-v1",
        wrappers=[gym.wrappers.TimeAwareObservation, AddStep],
        offload="process",
        max_episode_steps=3,
    )
    env = factory()
    try:
        assert isinstance(env.unwrapped, ProcessEnv)  # type: ignore[attr-defined]
        assert env.observation_space.shape == (5,)  # TimeAwareObservation's extra entry
        with anyio.fail_after(30):
            obs, info = await env.reset(seed=0)
            assert obs[-1] == 0
            for _ in range(3):
                obs, _, _, truncated, info = await env.step(0)
            assert obs[-1] == 3
            assert info["steps_here"] == 3
            assert truncated
    finally:
        await env.close()


class AddStep(AsyncEnvWrapper):
    """An async wrapper (it stays in the parent): counts steps into the info."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.steps = 0

    async def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = await self.env.step(action)
        self.steps += 1
        return obs, reward, terminated, truncated, {**info, "steps_here": self.steps}


async def test_wrappers_the_child_cannot_import_fail_early() -> None:
    with pytest.raises(ValueError, match="needs a wrapper the child process can import"):
        env_factory("CartPole-v1", wrappers=[lambda env: env], offload="process")
    with pytest.raises(TypeError, match="JSON"):
        env_factory(
            "CartPole-v1",
            wrappers=[{"gymnasium.wrappers.ClipReward": {"min_reward": object()}}],
            offload="process",
        )


async def test_sync_env_error_is_a_reply_and_the_session_goes_on() -> None:
    env = env_factory({"_target_": SYNC, "fail_at_step": 2}, offload="process")()
    try:
        with anyio.fail_after(30):
            await env.reset(seed=0)
            await env.step(0)
            with pytest.raises(RemoteEnvError, match="RuntimeError: scripted failure"):
                await env.step(0)
            await env.step(0)
            assert await env.render() == "step 3"  # type: ignore[attr-defined]
    finally:
        await env.close()


async def test_stalled_sync_env_times_out_and_reset_gets_a_fresh_env() -> None:
    """A deadline interrupts the parent's call; the next reset opens a session on a new env."""
    spec = spec_to_json({"_target_": SYNC, "stall_at_step": 1, "stall_s": 1.0})
    env = ProcessEnv(spec, request_timeout=0.3)
    try:
        with anyio.fail_after(30):
            _, info = await env.reset(seed=0)
            assert info["made"] == 1
            with pytest.raises(RemoteEnvError, match=r"no reply from .* within 0\.3s"):
                await env.step(0)
            _, info = await env.reset(seed=0)  # served once the stalled step is over
            assert info["made"] == 2
            assert await env.render() == "step 0"
    finally:
        await env.close()
    assert gone(env.pid)


async def test_runner_step_timeout_ends_a_stalled_offloaded_episode() -> None:
    """The runner's step_timeout cancels the parent's wait on a child stuck in a sync step."""
    spec = {"_target_": SYNC, "stall_at_step": 2, "stall_s": 30.0}
    with anyio.fail_after(40):
        runner = RolloutRunner(1, step_timeout=0.5, on_env_error="skip")
        result = await runner.run_with(env_factory(spec, offload="process"))
    assert result.episodes[0].outcome == "timeout"
    assert live_children() == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the backend runs in the parent script
async def test_orphaned_child_stuck_in_a_sync_step_exits() -> None:
    """A parent killed while its env blocks in a step: the child exits after a grace period."""
    script = textwrap.dedent(
        f"""
        import os, signal, anyio
        from async_rollout import env_factory

        async def main():
            env = env_factory({{"_target_": {SYNC!r}, "stall_at_step": 1, "stall_s": 600.0}},
                              offload="process")()
            await env.reset(seed=0)
            print(env.pid, flush=True)
            with anyio.move_on_after(0.5):
                await env.step(0)
            os.kill(os.getpid(), signal.SIGKILL)

        anyio.run(main)
        """
    )
    with anyio.fail_after(40):
        parent = await anyio.run_process(
            [sys.executable, "-c", script],
            check=False,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert parent.returncode == -signal.SIGKILL, parent.stderr.decode()
        await wait_gone([int(parent.stdout.decode())], limit=ORPHAN_GRACE_S + 10)
