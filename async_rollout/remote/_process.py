"""Process offload: each env in a child process of its own, behind the remote protocol.

``env_factory(spec, offload="process")`` calls :func:`process_env_maker`. Each
env it makes spawns ``python -m async_rollout.remote._child``, which builds
the env from the spec (sent as JSON: the spec must be importable), wraps it
in the gymnasium wrappers that come before any async one (sent the same
way), serves it on a Unix socket in a private temporary directory, and exits
when its stdin closes — which happens when the env is closed, and also when
the parent dies, however it dies.

Spaces before the first reset: the runner reads ``action_space`` before any
``await`` (to build a random policy), and a property cannot await. So the
child, once its env exists and its socket listens, writes one *ready* frame
(the spaces, in the protocol's own encoding) to its stdout. Reading a space
before connecting reads that frame synchronously, which blocks the event loop
for the child's start-up (the imports, then making the env) once; ``reset``
reads it asynchronously instead, so children spawned together start in
parallel. Computing the spaces in the parent instead would mean building every
env twice, in the process the offload exists to spare.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import anyio
import gymnasium as gym

from .._types import to_container
from ..errors import RemoteEnvError
from ._child import TEMP_PREFIX
from ._client import RemoteEnv
from ._spaces import restore_space
from ._wire import PROTOCOL_VERSION, ProtocolError, decode, field

__all__ = ["ProcessEnv", "live_children", "process_env_maker", "spec_to_json"]

#: Seconds a child may take to import, build its env and listen.
STARTUP_TIMEOUT_S = 60.0
#: Seconds a child may take to exit once its stdin is closed, and then once terminated.
EXIT_TIMEOUT_S = 1.0

_HEADER_SIZE = 4
_LOST_CONNECTION = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    ConnectionError,
)

# Every child spawned and not yet reaped, by pid: for diagnostics and tests.
_live: dict[int, subprocess.Popen[bytes]] = {}


def live_children() -> list[int]:
    """Pids of the env processes spawned by this process and not yet reaped."""
    return sorted(_live)


# --- specs -------------------------------------------------------------------------------------


def _dotted_path(fn: Any, what: str = "an env spec") -> str:
    """The dotted path that imports ``fn`` back, or a ValueError saying why there is none."""
    from .._instantiate import locate

    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        raise ValueError(
            f"offload='process' needs {what} the child process can import: {fn!r} has no "
            "importable dotted path (a lambda, a local function, a partial?); define it at "
            "module level, or pass {'_target_': 'package.module.name', ...}"
        )
    if module == "__main__":
        raise ValueError(
            f"offload='process': {qualname} is defined in __main__, which the child process "
            "cannot import; move it to a module"
        )
    path = f"{module}.{qualname}"
    try:
        found = locate(path)
    except Exception as exc:
        raise ValueError(f"offload='process': {path!r} does not import back: {exc}") from exc
    if found is not fn:
        raise ValueError(f"offload='process': {path!r} imports another object than {fn!r}")
    return path


def _spec_data(spec: Any) -> dict[str, Any]:
    if isinstance(spec, str):
        return {"id": spec}
    spec = to_container(spec)
    if isinstance(spec, Mapping):
        if "_target_" not in spec:
            raise TypeError(f"an env config mapping needs a _target_ key; got keys {list(spec)}")
        config = dict(spec)
        target = config["_target_"]
        config["_target_"] = target if isinstance(target, str) else _dotted_path(target)
        return {"config": config}
    if callable(spec) and not isinstance(spec, gym.Env):
        return {"callable": _dotted_path(spec)}
    raise TypeError(
        "offload='process' needs an env spec the child process can rebuild: a gymnasium id, "
        f"a _target_ mapping, or a module-level callable; got {type(spec).__name__}: {spec!r}"
    )


def spec_to_json(
    spec: Any, wrappers: Sequence[tuple[Callable[..., Any], Mapping[str, Any]]] = ()
) -> str:
    """Encode an env spec for the child process, checking that it can be rebuilt there.

    Args:
        spec: The env spec.
        wrappers: ``(wrapper, kwargs)`` pairs the child applies to the env it
            makes, in order: the gymnasium wrappers.

    Raises:
        TypeError: The spec is not a gymnasium id, a ``_target_`` mapping or a
            callable, or a config value is not JSON.
        ValueError: A callable (or ``_target_``) has no importable dotted path.
    """
    data = _spec_data(spec)
    if wrappers:
        data["wrappers"] = [
            {"target": _dotted_path(fn, "a wrapper"), "kwargs": dict(kwargs)}
            for fn, kwargs in wrappers
        ]
    try:
        return json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"offload='process' sends the env config to the child process as JSON, "
            f"but {exc}; use plain numbers, strings, lists and mappings"
        ) from exc


def spec_from_json(text: str) -> tuple[Any, list[tuple[Callable[..., Any], dict[str, Any]]]]:
    """Inverse of :func:`spec_to_json`, in the child: the spec, and the wrappers to apply."""
    from .._instantiate import locate

    data = json.loads(text)
    wrappers = [(locate(w["target"]), w["kwargs"]) for w in data.get("wrappers", ())]
    if "id" in data:
        return data["id"], wrappers
    if "config" in data:
        return data["config"], wrappers
    return locate(data["callable"]), wrappers


def process_env_maker(
    spec: Any, wrappers: Sequence[tuple[Callable[..., Any], Mapping[str, Any]]] = ()
) -> Callable[[int], RemoteEnv]:
    """Return ``make(worker_index)``, spawning one child process per env.

    Called by :func:`async_rollout.env_factory` with ``offload="process"``; the
    spec is checked here, so a spec the child cannot rebuild fails at once.

    Args:
        spec: The env spec.
        wrappers: ``(wrapper, kwargs)`` pairs applied in the child, in order.

    Raises:
        TypeError: See :func:`spec_to_json`.
        ValueError: See :func:`spec_to_json`.
    """
    payload = spec_to_json(spec, wrappers)

    def make(worker_index: int = 0) -> RemoteEnv:
        return ProcessEnv(payload, worker_index)

    return make


# --- the env -----------------------------------------------------------------------------------


def _child_environment() -> dict[str, str]:
    """The parent's environment, with its import path, so the child imports what the parent can."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _reap(proc: subprocess.Popen[bytes], directory: str) -> None:
    """Make sure the child is gone and its files too (synchronous, bounded)."""
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        if proc.poll() is None:
            try:
                proc.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(EXIT_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()
    finally:
        _live.pop(proc.pid, None)
        shutil.rmtree(directory, ignore_errors=True)


async def _wait_exit(proc: subprocess.Popen[bytes]) -> None:
    """Wait for ``proc`` to exit without blocking the event loop."""
    if proc.poll() is not None:
        return
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd (old kernel, sandbox): poll
        while proc.poll() is None:  # noqa: ASYNC110  (a process exit is no event anyio offers)
            await anyio.sleep(0.01)
        return
    try:
        await anyio.wait_readable(pidfd)  # a pidfd turns readable when its process exits
    finally:
        os.close(pidfd)


class ProcessEnv(RemoteEnv):
    """A :class:`RemoteEnv` whose server is a child process serving one env.

    ``close()`` closes the env, then ends the child: it closes the child's
    stdin, waits a moment, then terminates and if need be kills it, and
    reaps it. An env dropped without ``close()`` is reaped when collected,
    or at interpreter exit.

    Args:
        spec_json: The env spec, as made by :func:`spec_to_json`.
        worker_index: Passed to the spec where it accepts ``worker_index``.
        startup_timeout: Seconds the child may take to be ready.
        request_timeout: Seconds each reset or step may take.
    """

    def __init__(
        self,
        spec_json: str,
        worker_index: int = 0,
        *,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        request_timeout: float = 60.0,
    ) -> None:
        directory = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        socket_path = os.path.join(directory, "env.sock")
        super().__init__(
            path=socket_path, connect_timeout=startup_timeout, request_timeout=request_timeout
        )
        self.worker_index = worker_index
        self.startup_timeout = startup_timeout
        self._directory = directory
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "async_rollout.remote._child",
                    "--socket",
                    socket_path,
                    "--worker-index",
                    str(worker_index),
                    "--spec",
                    spec_json,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_child_environment(),
                close_fds=True,
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._proc = proc
        _live[proc.pid] = proc
        self._finalizer = weakref.finalize(self, _reap, proc, directory)
        assert proc.stdout is not None
        self._stdout: IO[bytes] | None = proc.stdout
        os.set_blocking(proc.stdout.fileno(), False)
        self._startup = bytearray()
        self._started_at = time.monotonic()

    @property
    def pid(self) -> int:
        """The child process's id."""
        return self._proc.pid

    def _context(self) -> str:
        code = self._proc.poll()
        return "" if code is None else f" (the env process {self.pid} exited with code {code})"

    # --- readiness ------------------------------------------------------------------------------

    def _take_ready(self, data: bytes) -> bool:
        """Add output from the child; True once the ready frame is complete and applied."""
        if not data:
            code = self._proc.poll()
            raise RemoteEnvError(
                f"connect: the env process {self.pid} exited"
                + ("" if code is None else f" with code {code}")
                + " before it was ready (its stderr says why)",
                address=self.address,
                request="connect",
            )
        buffer = self._startup
        buffer += data
        if len(buffer) < _HEADER_SIZE:
            return False
        size = int.from_bytes(buffer[:_HEADER_SIZE], "big")
        if len(buffer) < _HEADER_SIZE + size:
            return False
        try:
            message = decode(bytes(buffer[_HEADER_SIZE : _HEADER_SIZE + size]))
            if message["type"] == "error":
                raise RemoteEnvError(
                    f"connect: the env process could not make its env: "
                    f"{message.get('error')}: {message.get('message')}",
                    address=self.address,
                    request="connect",
                )
            if message["type"] != "ready" or field(message, "version", int) != PROTOCOL_VERSION:
                raise ProtocolError(f"unexpected start-up message {message!r}")
            spaces = (
                restore_space(field(message, "observation_space", dict)),
                restore_space(field(message, "action_space", dict)),
            )
        except ProtocolError as exc:
            raise RemoteEnvError(
                f"connect: the env process sent a bad start-up message: {exc}",
                address=self.address,
                request="connect",
            ) from exc
        finally:
            self._close_stdout()
        self._spaces = spaces
        return True

    def _close_stdout(self) -> None:
        stdout, self._stdout = self._stdout, None
        if stdout is not None:
            stdout.close()

    def _remaining(self) -> float:
        return self.startup_timeout - (time.monotonic() - self._started_at)

    def _startup_timeout(self) -> RemoteEnvError:
        return RemoteEnvError(
            f"connect: the env process {self.pid} was not ready within {self.startup_timeout}s",
            address=self.address,
            request="connect",
        )

    def _wait_ready_blocking(self) -> None:
        """Read the ready frame, blocking: for a space read before any await."""
        while self._stdout is not None:
            remaining = self._remaining()
            if remaining <= 0:
                raise self._startup_timeout()
            readable, _, _ = select.select([self._stdout], [], [], remaining)
            if readable:
                try:
                    data = os.read(self._stdout.fileno(), 65536)
                except BlockingIOError:
                    continue
                self._take_ready(data)

    async def _wait_ready(self) -> None:
        if self._stdout is None:
            return
        with anyio.move_on_after(max(self._remaining(), 0)) as scope:
            while self._stdout is not None:
                await anyio.wait_readable(self._stdout)
                try:
                    data = os.read(self._stdout.fileno(), 65536)
                except BlockingIOError:
                    continue
                self._take_ready(data)
        if scope.cancelled_caught:
            raise self._startup_timeout()

    def _known_spaces(self, name: str) -> tuple[gym.Space[Any], gym.Space[Any]]:
        if self._spaces is None and self._stdout is not None:
            self._wait_ready_blocking()
        return super()._known_spaces(name)

    async def _explained(self, exc: RemoteEnvError) -> RemoteEnvError:
        """Add the child's exit to an error about a lost connection, when it died."""
        cause = exc.__cause__
        if self._proc.poll() is None and isinstance(cause, _LOST_CONNECTION):
            # A crash closes the socket a moment before the exit status can be read.
            with anyio.move_on_after(0.5):
                await _wait_exit(self._proc)
        context = self._context()
        if not context or context in str(exc):
            return exc
        return RemoteEnvError(f"{exc}{context}", address=exc.address, request=exc.request)

    async def _request(self, request: str, message: dict[str, Any]) -> dict[str, Any]:
        try:
            return await super()._request(request, message)
        except RemoteEnvError as exc:
            explained = await self._explained(exc)
            if explained is exc:
                raise
            raise explained from exc.__cause__

    # --- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Wait for the child to be ready, then open the session."""
        await self._wait_ready()
        await super().connect()

    async def close(self) -> None:
        """Close the env, then end and reap the child (on every path, cancellation included)."""
        try:
            await super().close()
        finally:
            await self._end_child()

    async def _end_child(self) -> None:
        proc = self._proc
        try:
            self._close_stdout()
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()  # the child's cue to exit
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(EXIT_TIMEOUT_S):
                    await _wait_exit(proc)
                if proc.poll() is None:
                    proc.terminate()
                    with anyio.move_on_after(EXIT_TIMEOUT_S):
                        await _wait_exit(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            self._finalizer()  # waits for the killed child, removes the directory

    def __repr__(self) -> str:
        return f"ProcessEnv(pid={self.pid}, {self.state.value})"
