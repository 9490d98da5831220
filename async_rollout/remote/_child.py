"""The child side of process offload: ``python -m async_rollout.remote._child``.

Builds one env from a JSON spec, serves it with :func:`serve_env` on a Unix
socket, writes one ready frame (the spaces) or error frame to stdout, and
exits when its stdin closes: the parent closed the env, or died.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from functools import partial
from typing import IO, Any

import anyio
from anyio import CancelScope

from .._env import AsyncEnv, env_factory
from .._loop import close_env
from ._server import serve_env
from ._spaces import describe_space
from ._wire import PROTOCOL_VERSION, encode, frame

__all__ = ["main"]

#: The prefix of the temporary directories process offload makes for its sockets.
TEMP_PREFIX = "async-rollout-"
# A ready frame has no peer limit to respect, only the pipe; spaces are small.
_READY_MAX = 2**32 - 1


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


async def _serve(spec: Any, worker_index: int, socket_path: str, out: IO[bytes]) -> int:
    factory = env_factory(spec)
    try:
        env = factory(worker_index)
        ready = {
            "type": "ready",
            "version": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "observation_space": describe_space(env.observation_space),
            "action_space": describe_space(env.action_space),
        }
    except Exception as exc:
        _write(out, {"type": "error", "error": type(exc).__name__, "message": str(exc)})
        raise
    # The env made to learn the spaces serves the first session; later sessions
    # (after a reconnect) get fresh ones.
    spare: list[AsyncEnv] = [env]

    def make() -> AsyncEnv:
        return spare.pop() if spare else factory(worker_index)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_parent, tg.cancel_scope)
            await tg.start(partial(serve_env, make, path=socket_path, max_connections=4))
            _write(out, ready)
            out.close()
    finally:
        if spare:
            await close_env(spare.pop())
    return 0


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
    # Keep stdout for the ready frame alone: whatever the env prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        spec = spec_from_json(args.spec)
    except Exception as exc:
        _write(out, {"type": "error", "error": type(exc).__name__, "message": str(exc)})
        raise
    try:
        return anyio.run(_serve, spec, args.worker_index, args.socket, out)
    finally:
        # The parent removes the directory too, unless it died first.
        directory = os.path.dirname(os.path.abspath(args.socket))
        if os.path.basename(directory).startswith(TEMP_PREFIX):
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
