"""env_factory(spec, offload="process"): one child process per env, reaped on every path."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import gymnasium as gym
import pytest
from helpers import episode_key

from async_rollout import RemoteEnvError, RolloutRunner, Sink, env_factory
from async_rollout.remote._process import ProcessEnv, live_children
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
