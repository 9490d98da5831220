"""serve_env and RemoteEnv over real sockets on 127.0.0.1, on both anyio backends."""

from __future__ import annotations

import logging
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import anyio
import anyio.abc
import gymnasium as gym
import msgpack
import numpy as np
import pytest
from gymnasium import spaces
from helpers import episode_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_rollout import RandomPolicy, RemoteEnvError, RolloutRunner
from async_rollout.remote import PROTOCOL_VERSION, RemoteEnv, RemoteEnvState, serve_env
from async_rollout.remote._spaces import describe_space
from async_rollout.testing import EnvTracker, ScriptedEnv

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@asynccontextmanager
async def serving(factory: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """Run serve_env in the background for the block; yields the bound address."""
    async with anyio.create_task_group() as tg:
        address = await tg.start(partial(serve_env, factory, HOST, **kwargs))
        try:
            yield address
        finally:
            tg.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a condition about another process or task (a hang guard, not a timing claim)."""
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110  (sockets and other tasks: no event to wait on)
            await anyio.sleep(0.01)


# --- a gymnasium env in every space -----------------------------------------------------------

SPACE_KINDS: dict[str, Callable[[], spaces.Space[Any]]] = {
    "box_float32": lambda: spaces.Box(-1.0, 1.0, shape=(3, 2), dtype=np.float32),
    "box_uint8": lambda: spaces.Box(0, 255, shape=(6, 6, 3), dtype=np.uint8),
    "discrete": lambda: spaces.Discrete(7, start=-2),
    "multi_discrete": lambda: spaces.MultiDiscrete([3, 5, 2]),
    "multi_binary": lambda: spaces.MultiBinary(5),
    "dict": lambda: spaces.Dict(
        {
            "pos": spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64),
            "grid": spaces.Box(0, 9, shape=(3, 3), dtype=np.int32),
            "mode": spaces.Discrete(3),
        }
    ),
    "tuple": lambda: spaces.Tuple(
        (spaces.Discrete(4), spaces.Box(-1, 1, (2,), np.float32), spaces.MultiBinary(3))
    ),
}


class SpacesEnv(gym.Env[Any, Any]):
    """Observes and acts in one of SPACE_KINDS; its episodes are a function of the seed."""

    def __init__(self, kind: str) -> None:
        self.observation_space = SPACE_KINDS[kind]()
        self.action_space = SPACE_KINDS[kind]()
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self._t = 0
        info = {"t": 0, "options": options, "array": np.arange(3.0), "flag": True, "none": None}
        return self.observation_space.sample(), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        assert self.action_space.contains(action), action
        self._t += 1
        info = {"t": self._t, "action_type": type(action).__name__, "nested": {"l": [1, "x"]}}
        reward = float(self.np_random.random())
        return self.observation_space.sample(), reward, self._t >= 4, False, info


def assert_same(actual: Any, expected: Any) -> None:
    """Equal values with equal types, dtypes and shapes, recursively."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, np.ndarray):
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    else:
        assert actual == expected


@pytest.mark.parametrize("kind", list(SPACE_KINDS))
async def test_over_the_wire_equals_local(kind: str) -> None:
    """reset/step over the wire give exactly what the local env gives for the same seed."""
    local = SpacesEnv(kind)
    actions_space = SPACE_KINDS[kind]()
    actions_space.seed(5)
    actions = [actions_space.sample() for _ in range(4)]
    with anyio.fail_after(20):
        async with serving(partial(SpacesEnv, kind)) as (_, port):
            async with RemoteEnv(port=port) as remote:
                assert remote.observation_space == local.observation_space
                assert remote.action_space == local.action_space
                for seed in (0, 123):
                    assert_same(
                        await remote.reset(seed=seed, options={"a": 1}),
                        local.reset(seed=seed, options={"a": 1}),
                    )
                    for action in actions:
                        assert_same(await remote.step(action), local.step(action))


async def test_integer_actions_keep_their_type_over_the_wire(tmp_path: Any) -> None:
    """Equal actions of different integer types stay apart (the client caches step frames)."""
    path = str(tmp_path / "env.sock")
    with anyio.fail_after(10):
        async with serving(partial(SpacesEnv, "discrete"), path=path):
            async with RemoteEnv(path=path) as env:
                await env.reset(seed=0)
                for action in (1, np.int64(1), 1, np.int32(1), np.int64(1)):
                    *_, info = await env.step(action)
                    assert info["action_type"] == type(action).__name__


async def test_64_concurrent_sessions_match_the_local_rollout() -> None:
    """64 sessions on one server give the same episodes as the same rollout in-process."""
    tracker = EnvTracker()
    policy = RandomPolicy(spaces.Discrete(2))
    runner = RolloutRunner(128, concurrency=64, seed=11, record_trajectory=True)
    with anyio.fail_after(40):
        local = await runner.run_with(lambda: ScriptedEnv(episode_length=12), agent=policy)
        async with serving(lambda: ScriptedEnv(episode_length=12, tracker=tracker)) as (_, port):
            remote = await runner.run_with(lambda: RemoteEnv(port=port), agent=policy)
            await wait_until(lambda: not tracker.open)
    assert [episode_key(ep) for ep in remote.episodes] == [episode_key(ep) for ep in local.episodes]
    assert remote.summary["outcomes"]["completed"] == 128
    assert len(tracker.created) == 64


async def test_unix_socket(tmp_path: Any) -> None:
    path = str(tmp_path / "env.sock")
    with anyio.fail_after(10):
        async with serving(ScriptedEnv, path=path) as address:
            assert address == path
            async with RemoteEnv(path=path) as env:
                _, info = await env.reset(seed=1)
                assert info == {"step": 0}
                assert (await env.step(0))[4] == {"step": 1}
                assert await env.render() == "step 1/10"


async def test_unix_socket_client_large_frames_and_limits(tmp_path: Any) -> None:
    """The Unix socket client (its own stream on each backend) reads frames of any size."""
    path = str(tmp_path / "env.sock")
    local = ScriptedEnv(obs_shape=(300, 300))  # 360 KB observations: several reads each
    with anyio.fail_after(20):
        async with serving(partial(ScriptedEnv, obs_shape=(300, 300)), path=path):
            async with RemoteEnv(path=path) as env:
                assert_same(await env.reset(seed=4), await local.reset(seed=4))
                for action in (1, 0, 1):
                    assert_same(await env.step(action), await local.step(action))
            async with RemoteEnv(path=path, max_frame_size=65536) as env:
                with pytest.raises(RemoteEnvError, match=r"EncodeError.*exceeds"):
                    await env.reset(seed=0)
                assert await env.render() == "step 0/10"


async def test_unix_socket_client_failures(tmp_path: Any) -> None:
    """Over a Unix socket too: env errors, timeouts, reconnection, and a server that leaves."""
    path = str(tmp_path / "env.sock")
    tracker = EnvTracker()
    factory = partial(ScriptedEnv, fail_at_step=2, hang_at_step=3, tracker=tracker)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(partial(serve_env, factory, path=path))
            env = RemoteEnv(path=path, request_timeout=0.3)
            await env.reset(seed=0)
            await env.step(0)
            with pytest.raises(RemoteEnvError, match="RuntimeError: scripted failure"):
                await env.step(0)
            with pytest.raises(RemoteEnvError, match=r"no reply from unix:.* within 0\.3s"):
                await env.step(0)
            assert env.state is RemoteEnvState.BROKEN
            _, info = await env.reset(seed=0)
            assert info == {"step": 0}
            await wait_until(lambda: len(tracker.open) == 1)
            tg.cancel_scope.cancel()
        with pytest.raises(RemoteEnvError, match=r"step: the connection to unix:.* was lost"):
            await env.step(0)
        await env.close()
    assert tracker.open == []


async def fake_server(path: str, reply: bytes, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    """Answer a hello with a welcome, then anything with ``reply``, then hang up."""
    spaces_ = {
        "observation_space": describe_space(spaces.Discrete(2)),
        "action_space": describe_space(spaces.Discrete(2)),
    }
    async with await anyio.create_unix_listener(path) as listener:
        task_status.started()
        stream = await listener.accept()
        async with stream:
            await read_frame(stream)
            await stream.send(frame({"type": "welcome", "version": PROTOCOL_VERSION, **spaces_}))
            await read_frame(stream)
            await stream.send(reply)


BAD_REPLIES = {
    "huge prefix": r"broke the protocol: frame of 2147483648 bytes exceeds",
    "empty frame": "broke the protocol: empty frame",
    "cut short": r"was lost \(IncompleteRead",
    "wrong type": "expected a 'reset' reply",
}


@pytest.mark.parametrize("kind", list(BAD_REPLIES))
async def test_unix_socket_client_refuses_bad_replies(tmp_path: Any, kind: str) -> None:
    reply = {
        "huge prefix": struct.pack(">I", 2**31),
        "empty frame": struct.pack(">I", 0),
        "cut short": struct.pack(">I", 100) + b"cut short",
        "wrong type": frame({"type": "step"}),
    }[kind]
    path = str(tmp_path / "fake.sock")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(fake_server, path, reply)
            env = RemoteEnv(path=path)
            with pytest.raises(RemoteEnvError, match=BAD_REPLIES[kind]):
                await env.reset(seed=0)
            assert env.state is RemoteEnvState.BROKEN
            await env.close()


async def test_spaces_before_connect_are_a_clear_error() -> None:
    env = RemoteEnv(port=9)
    with pytest.raises(RemoteEnvError, match=r"await env\.connect\(\)"):
        _ = env.action_space
    assert getattr(env, "observation_space", None) is None
    with pytest.raises(RemoteEnvError, match="reset"):
        await env.step(0)


async def test_server_side_exception_is_an_error_frame() -> None:
    """The env's exception reaches the client as a RemoteEnvError; the session goes on."""
    tracker = EnvTracker()
    factory = partial(ScriptedEnv, fail_at_step=2, tracker=tracker)
    with anyio.fail_after(10):
        async with serving(factory) as (_, port), RemoteEnv(port=port) as env:
            await env.reset(seed=0)
            await env.step(0)
            with pytest.raises(RemoteEnvError, match="RuntimeError: scripted failure") as info:
                await env.step(0)
            assert info.value.request == "step"
            assert info.value.address == f"tcp://{HOST}:{port}"
            assert env.state is RemoteEnvState.CONNECTED
            await env.reset(seed=1)
            await env.step(1)
            assert len(tracker.created) == 1


async def test_server_killed_mid_episode() -> None:
    """A server that goes away mid-episode is a RemoteEnvError, never a hang."""
    tracker = EnvTracker()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            _, port = await tg.start(partial(serve_env, partial(ScriptedEnv, tracker=tracker)))
            env = RemoteEnv(port=port, request_timeout=30)
            await env.reset(seed=0)
            await env.step(0)
            tg.cancel_scope.cancel()
        assert tracker.open == []
        with pytest.raises(RemoteEnvError, match=r"step: the connection to tcp://.* was lost"):
            await env.step(0)
        assert env.state is RemoteEnvState.BROKEN
        with pytest.raises(RemoteEnvError, match="cannot connect"):
            await env.reset(seed=0)
        await env.close()
        assert env.state is RemoteEnvState.CLOSED


async def test_timeout_breaks_the_session_and_reset_reconnects() -> None:
    """A hung server call times out; the server abandons it when the client leaves."""
    tracker = EnvTracker()
    factory = partial(ScriptedEnv, hang_at_step=2, tracker=tracker)
    with anyio.fail_after(15):
        async with serving(factory) as (_, port):
            env = RemoteEnv(port=port, request_timeout=0.3)
            await env.reset(seed=0)
            await env.step(0)
            with pytest.raises(RemoteEnvError, match=r"no reply from .* within 0\.3s"):
                await env.step(0)
            with pytest.raises(RemoteEnvError, match=r"reset\(\) opens a new session"):
                await env.step(0)
            _, info = await env.reset(seed=0)
            assert info == {"step": 0}
            assert len(tracker.created) == 2
            await wait_until(lambda: tracker.created[0].closed)
            await env.close()
            await wait_until(lambda: not tracker.open)


async def test_wrong_token_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    tracker = EnvTracker()
    with anyio.fail_after(10), caplog.at_level(logging.WARNING, logger="async_rollout"):
        async with serving(partial(ScriptedEnv, tracker=tracker), token="s3cret") as (_, port):
            for token in ("wrong", None, "s3cret-but-longer"):
                env = RemoteEnv(port=port, token=token)
                with pytest.raises(RemoteEnvError, match="refused the connection") as info:
                    await env.reset(seed=0)
                assert "AuthenticationError" in str(info.value)
                await env.close()
            assert tracker.created == []
            async with RemoteEnv(port=port, token="s3cret") as env:
                await env.reset(seed=0)
    refusals = [r for r in caplog.records if "refused a client" in r.getMessage()]
    assert len(refusals) == 3


async def test_too_many_connections_are_refused() -> None:
    with anyio.fail_after(10):
        async with serving(ScriptedEnv, max_connections=2) as (_, port):
            async with RemoteEnv(port=port) as one, RemoteEnv(port=port) as two:
                with pytest.raises(RemoteEnvError, match="TooManyConnections"):
                    await RemoteEnv(port=port).connect()
                await one.reset(seed=0)
                await two.reset(seed=0)


async def test_version_mismatch_is_refused() -> None:
    with anyio.fail_after(10):
        async with serving(ScriptedEnv) as (_, port):
            stream = await anyio.connect_tcp(HOST, port)
            async with stream:
                await stream.send(frame({"type": "hello", "version": PROTOCOL_VERSION + 1}))
                reply = await read_frame(stream)
    assert reply["type"] == "error"
    assert reply["error"] == "VersionError"
    assert reply["fatal"] is True


async def test_env_that_cannot_be_described_or_made() -> None:
    def text_env() -> ScriptedEnv:
        env = ScriptedEnv()
        env.observation_space = spaces.Text(4)
        return env

    def broken() -> ScriptedEnv:
        raise ValueError("no simulator licence")

    with anyio.fail_after(10):
        async with serving(text_env) as (_, port):
            with pytest.raises(RemoteEnvError, match=r"UnsupportedSpace.*Text"):
                await RemoteEnv(port=port).connect()
        async with serving(broken) as (_, port):
            with pytest.raises(RemoteEnvError, match=r"ValueError.*no simulator licence"):
                await RemoteEnv(port=port).connect()


async def test_reply_larger_than_the_client_accepts() -> None:
    """An oversized reply becomes an error frame; the session survives."""
    with anyio.fail_after(10):
        async with serving(partial(ScriptedEnv, obs_shape=(100_000,))) as (_, port):
            async with RemoteEnv(port=port, max_frame_size=65536) as env:
                with pytest.raises(RemoteEnvError, match=r"EncodeError.*exceeds"):
                    await env.reset(seed=0)
                assert env.state is RemoteEnvState.CONNECTED
                assert await env.render() == "step 0/10"


async def test_oversized_frame_closes_only_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = EnvTracker()
    with anyio.fail_after(10), caplog.at_level(logging.WARNING, logger="async_rollout"):
        async with serving(partial(ScriptedEnv, tracker=tracker)) as (_, port):
            async with RemoteEnv(port=port) as good:
                await good.reset(seed=0)
                stream = await anyio.connect_tcp(HOST, port)
                async with stream:
                    await stream.send(frame(hello()))
                    assert (await read_frame(stream))["type"] == "welcome"
                    await stream.send(struct.pack(">I", 2**31))
                    reply = await read_frame(stream)
                    assert reply["error"] == "ProtocolError"
                    assert "exceeds" in reply["message"]
                await wait_until(lambda: len(tracker.open) == 1)
                await good.step(1)
    assert any("exceeds" in r.getMessage() for r in caplog.records)


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_tls_round_trip(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts
    tracker = EnvTracker()
    local = ScriptedEnv()
    with anyio.fail_after(10):
        factory = partial(ScriptedEnv, tracker=tracker)
        async with serving(factory, ssl_context=server_context, token="t") as (_, port):
            async with RemoteEnv(port=port, ssl_context=client_context, token="t") as env:
                assert env.address.startswith("tls://")
                assert_same(await env.reset(seed=4), await local.reset(seed=4))
                assert_same(await env.step(1), await local.step(1))
            with pytest.raises(RemoteEnvError, match=r"lost|broke"):
                await RemoteEnv(port=port, token="t", connect_timeout=5).connect()
            with pytest.raises(RemoteEnvError, match="CERTIFICATE_VERIFY_FAILED"):
                await RemoteEnv(port=port, ssl_context=ssl.create_default_context()).connect()
            await wait_until(lambda: not tracker.open)
    assert len(tracker.created) == 1


# --- fuzzing the frame decoder ----------------------------------------------------------------


def hello(**fields: Any) -> dict[str, Any]:
    return {"type": "hello", "version": PROTOCOL_VERSION, "token": None, **fields}


def frame(message: Any) -> bytes:
    payload = msgpack.packb(message)
    return struct.pack(">I", len(payload)) + payload


async def read_frame(stream: Any) -> dict[str, Any]:
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        data += await stream.receive()
    return msgpack.unpackb(  # type: ignore[no-any-return]
        data[4:], strict_map_key=False, ext_hook=parse_ext
    )


def parse_ext(code: int, data: bytes) -> Any:
    """Section 3.1 of the protocol, read without the package's codec."""
    size = data[0]
    dtype = np.dtype(data[1 : 1 + size].decode())
    ndim = data[1 + size]
    start = 2 + size + 8 * ndim
    shape = struct.unpack(f">{ndim}Q", data[2 + size : start])
    array = np.frombuffer(data[start:], dtype).reshape(shape)
    return array[()] if code == 2 else array


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = values | st.fixed_dictionaries(
    {
        "type": st.sampled_from(["hello", "reset", "step", "render", "close", "welcome", "?"])
        | values
    },
    optional={"seed": values, "options": values, "action": values, "version": values},
)


@st.composite
def attacks(draw: st.DrawFn) -> list[bytes]:
    """Byte sequences a broken or hostile client may send, after a valid hello or not."""
    kind = draw(st.sampled_from(["bytes", "framed", "huge", "messages", "truncated"]))
    prefix = [frame(hello())] if draw(st.booleans()) else []
    if kind == "bytes":
        return [*prefix, draw(st.binary(min_size=1, max_size=300))]
    if kind == "framed":
        payload = draw(st.binary(max_size=300))
        return [*prefix, struct.pack(">I", len(payload)) + payload]
    if kind == "huge":
        size = draw(st.integers(65_536, 2**32 - 1))
        return [*prefix, struct.pack(">I", size) + draw(st.binary(max_size=64))]
    if kind == "messages":
        return [*prefix, *(frame(m) for m in draw(st.lists(messages, min_size=1, max_size=4)))]
    whole = frame(draw(messages))
    return [*prefix, whole[: draw(st.integers(0, len(whole) - 1))]]


@pytest.fixture
async def fuzz_target() -> AsyncIterator[tuple[int, EnvTracker, RemoteEnv]]:
    """A server with one well-behaved session, kept across hypothesis examples."""
    tracker = EnvTracker()
    async with serving(partial(ScriptedEnv, episode_length=10**9, tracker=tracker)) as (_, port):
        good = RemoteEnv(port=port)
        await good.reset(seed=0)
        yield port, tracker, good
        await good.close()
        await wait_until(lambda: not tracker.open)


@settings(
    deadline=None,
    max_examples=60,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(attack=attacks())
async def test_fuzzed_frames_never_hurt_the_server(
    fuzz_target: tuple[int, EnvTracker, RemoteEnv], attack: list[bytes]
) -> None:
    """Garbage closes its own connection (and env) at most; the good session keeps working."""
    port, tracker, good = fuzz_target
    with anyio.fail_after(10):
        stream = await anyio.connect_tcp(HOST, port)
        async with stream:
            with suppress(anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                for chunk in attack:
                    await stream.send(chunk)
                with anyio.move_on_after(0.05):
                    while await stream.receive():
                        pass
        _, _, terminated, _, info = await good.step(1)
        assert not terminated
        assert info["step"] >= 1
        await wait_until(lambda: len(tracker.open) == 1)


# --- a server written from docs/PROTOCOL.md alone ---------------------------------------------


def ext_array(array: np.ndarray) -> msgpack.ExtType:
    """Section 3.1 of the protocol, written out without the package's codec."""
    typestr = array.dtype.str.encode()
    header = bytes([len(typestr)]) + typestr + bytes([array.ndim])
    dims = b"".join(struct.pack(">Q", d) for d in array.shape)
    return msgpack.ExtType(1, header + dims + array.tobytes())


async def foreign_session(stream: Any) -> None:
    """One session of a minimal server: a counter env (Box(1) observation, Discrete(3) action)."""
    async with stream:
        hello_msg = await read_frame(stream)
        assert hello_msg["type"] == "hello"
        assert hello_msg["version"] == 1
        box = {
            "type": "Box",
            "shape": [1],
            "dtype": "<f4",
            "low": ext_array(np.array(0, np.float32)),
            "high": ext_array(np.array(100, np.float32)),
        }
        discrete = {"type": "Discrete", "n": 3}
        await stream.send(
            frame(
                {
                    "type": "welcome",
                    "version": 1,
                    "observation_space": box,
                    "action_space": discrete,
                }
            )
        )
        count = 0
        while True:
            request = await read_frame(stream)
            if request["type"] == "reset":
                count = request["seed"] or 0
                obs = ext_array(np.array([count], np.float32))
                await stream.send(frame({"type": "reset", "observation": obs, "info": {}}))
            elif request["type"] == "step":
                count += int(request["action"])  # a numpy scalar (ext 2) or an int
                reply = {
                    "type": "step",
                    "observation": ext_array(np.array([count], np.float32)),
                    "reward": 1,
                    "terminated": count >= 10,
                    "truncated": False,
                    "info": {"count": count},
                }
                await stream.send(frame(reply))
            else:
                await stream.send(frame({"type": "closed"}))
                return


async def test_a_server_written_from_the_protocol_document() -> None:
    """docs/PROTOCOL.md is enough: RemoteEnv drives a server that shares no code with it."""
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host=HOST)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, foreign_session)
            async with RemoteEnv(port=port) as env:
                assert env.observation_space == spaces.Box(0, 100, (1,), np.float32)
                assert env.action_space == spaces.Discrete(3)
                obs, info = await env.reset(seed=5)
                assert obs.tolist() == [5.0]
                assert info == {}
                obs, reward, terminated, truncated, info = await env.step(np.int64(2))
                assert (obs.tolist(), reward, terminated, truncated) == ([7.0], 1.0, False, False)
                assert info == {"count": 7}
            tg.cancel_scope.cancel()
