"""The child side of process offload: ``python -m async_rollout.remote._child``.

Builds one env from a JSON spec (and the gymnasium wrappers the parent sent),
serves it on a Unix socket, writes one ready frame (the spaces) or error
frame to stdout, and exits when its stdin closes: the parent closed the env,
or died (an env stuck in a call gets ``ORPHAN_GRACE_S``, then the process
exits anyway).

A synchronous (gymnasium) env is served by :func:`~._blocking.serve_blocking`,
with no event loop at all: for a step of a millisecond the loop, its tasks
and its cancel scopes cost more than the env's own overhead. An async env is
served by :func:`serve_env`. Both speak the same protocol.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import IO, Any

import anyio
import gymnasium as gym
from anyio import CancelScope

from .._env import AsyncEnv, _maker, is_async_env, wrap_env
from .._loop import close_env
from ..errors import ConfigError
from ._blocking import serve_blocking
from ._server import serve_env
from ._spaces import describe_space
from ._wire import PROTOCOL_VERSION, encode, frame

__all__ = ["main"]

#: The prefix of the temporary directories process offload makes for its sockets.
TEMP_PREFIX = "async-rollout-"
# A ready frame has no peer limit to respect, only the pipe; spaces are small.
_READY_MAX = 2**32 - 1
#: Seconds an orphaned child whose env call blocks gets before it exits anyway.
ORPHAN_GRACE_S = 5.0


def _write(out: IO[bytes], message: dict[str, Any]) -> None:
    out.write(frame(encode(message), _READY_MAX))
    out.flush()


async def _watch_parent(scope: CancelScope) -> None:
    """Cancel everything once stdin reaches its end: the parent is done with us, or dead."""
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    while True:
        await anyio.wait_readable(fd)
        try:
            if not os.read(fd, 4096):
                break
        except BlockingIOError:
            continue
    scope.cancel()


def _ready(env: Any) -> dict[str, Any]:
    return {
        "type": "ready",
        "version": PROTOCOL_VERSION,
        "pid": os.getpid(),
        "observation_space": describe_space(env.observation_space),
        "action_space": describe_space(env.action_space),
    }


def _first_env(
    make: Callable[[int], Any], worker_index: int, out: IO[bytes]
) -> tuple[Any, dict[str, Any]]:
    """Make the first env and its ready frame; on failure, write an error frame and raise."""
    try:
        env = make(worker_index)
        if not is_async_env(env):
            wrap_env(env)  # the check inline offload makes: a gymnasium env, or an error
        return env, _ready(env)
    except Exception as exc:
        _write(out, {"type": "error", "error": type(exc).__name__, "message": str(exc)})
        raise


def _serve_sync(
    make: Callable[[int], Any],
    env: Any,
    ready: dict[str, Any],
    worker_index: int,
    socket_path: str,
    out: IO[bytes],
) -> int:
    """Serve a synchronous env without an event loop (see :mod:`._blocking`)."""
    # The env made to learn the spaces serves the first session; later sessions
    # (after a reconnect) get fresh ones.
    spare: list[Any] = [env]

    def make_env() -> Any:
        return spare.pop() if spare else make(worker_index)

    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(socket_path)
            listener.listen(4)
            _write(out, ready)
            out.close()
            serve_blocking(make_env, listener, sys.stdin.fileno())
        finally:
            listener.close()
            with suppress(OSError):
                os.unlink(socket_path)
    finally:
        if spare:
            spare.pop().close()
    return 0


def _start_orphan_guard() -> None:
    """Exit shortly after stdin's end even when the env blocks and never lets the server see it.

    The server notices the end of stdin between calls (or at an await); a
    call that blocks for good would keep an orphan alive forever once its
    parent is gone (a living parent terminates it). This thread sleeps in a
    ``select`` until stdin turns readable, which is its end (the parent
    never writes to it), and costs nothing before.
    """
    fd = sys.stdin.fileno()

    def guard() -> None:
        select.select([fd], [], [])
        time.sleep(ORPHAN_GRACE_S)
        os._exit(1)

    threading.Thread(target=guard, name="orphan-guard", daemon=True).start()


async def _serve_async(
    make: Callable[[int], Any],
    env: AsyncEnv,
    ready: dict[str, Any],
    worker_index: int,
    socket_path: str,
    out: IO[bytes],
) -> int:
    """Serve an async env with :func:`serve_env`."""
    spare: list[AsyncEnv] = [env]

    def make_env() -> AsyncEnv:
        return spare.pop() if spare else wrap_env(make(worker_index))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_parent, tg.cancel_scope)
            await tg.start(partial(serve_env, make_env, path=socket_path, max_connections=4))
            _write(out, ready)
            out.close()
    finally:
        if spare:
            await close_env(spare.pop())
    return 0


def _wrapped_maker(
    spec: Any, wrappers: list[tuple[Callable[..., Any], dict[str, Any]]]
) -> Callable[[int], Any]:
    """``make(worker_index)`` for the spec, with the wrappers the parent sent applied in order."""
    make = _maker(spec)
    if not wrappers:
        return make

    def make_wrapped(worker_index: int) -> Any:
        env = make(worker_index)
        for fn, kwargs in wrappers:
            if isinstance(fn, type) and issubclass(fn, gym.Wrapper) and is_async_env(env):
                raise ConfigError(
                    f"the gymnasium wrapper {fn.__name__} cannot wrap the async env {env!r}"
                )
            env = fn(env, **kwargs)
        return env

    return make_wrapped


def _serve(
    spec: Any,
    wrappers: list[tuple[Callable[..., Any], dict[str, Any]]],
    worker_index: int,
    socket_path: str,
    out: IO[bytes],
) -> int:
    make = _wrapped_maker(spec, wrappers)
    env, ready = _first_env(make, worker_index, out)
    _start_orphan_guard()
    if is_async_env(env):
        return anyio.run(_serve_async, make, env, ready, worker_index, socket_path, out)
    return _serve_sync(make, env, ready, worker_index, socket_path, out)


def _yield_to_the_parent() -> None:
    """Mark this process as a batch job for the scheduler (Linux): it never preempts on wake-up.

    The parent answers each env in a few tens of microseconds and must not
    wait behind one: when a reply wakes this process on the parent's core,
    a normal process takes the core at once, and the parent, runnable,
    waits for a whole time slice while the other envs idle for its answer
    (measured: two 1 ms envs on 2 cores took turns instead of running side
    by side). A batch process gets the same share of the CPU, only without
    that wake-up preemption.
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with suppress(OSError):
            os.sched_setscheduler(0, policy, os.sched_param(0))


def main(argv: list[str] | None = None) -> int:
    """Run the child: ``--socket PATH --spec JSON [--worker-index K]``."""
    from ._process import spec_from_json

    parser = argparse.ArgumentParser(prog="python -m async_rollout.remote._child")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--worker-index", type=int, default=0)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the parent decides when its envs end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _yield_to_the_parent()
    # Keep stdout for the ready frame alone: whatever the env prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        spec, wrappers = spec_from_json(args.spec)
    except Exception as exc:
        _write(out, {"type": "error", "error": type(exc).__name__, "message": str(exc)})
        raise
    try:
        return _serve(spec, wrappers, args.worker_index, args.socket, out)
    finally:
        # The parent removes the directory too, unless it died first.
        directory = os.path.dirname(os.path.abspath(args.socket))
        if os.path.basename(directory).startswith(TEMP_PREFIX):
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
