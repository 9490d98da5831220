"""The writer of an output directory: a helper process makes the files the event loop sends it.

The file sinks of an output directory share one :class:`FileWriter`. As an
episode ends, the event loop encodes what it leaves (the ``.npz`` archive's
arrays, the journal and event-log records) and hands it to a pipe in one
non-blocking ``write``. A small helper process (:mod:`._writer_child`,
standard library only, started with the run) reads the pipe and makes the
files: it lays out the archive, writes it under a temporary name and renames
it, and appends the log lines it formats. The loop never opens, writes or
waits for a file, unless the pipe is full.

Why a process, not a writer thread (measured with
``benchmarks/bench_recording.py`` on a 2-core VM, CartPole, 64 episodes in
flight, where a CartPole episode costs ~270 us): the loop of a fast rollout
is busy in Python, and a writer thread needs the GIL back after each of its
system calls (four per file) and to encode anything. Each hand-off of the GIL, and
each wake-up of a sleeping thread, costs the busy loop far more than the
write itself (tens to a hundred microseconds of loop CPU, from the hand-off,
preemption and cache refills): with the files written by a thread, batched,
recording cost 1.7-2x the rollout on a tmpfs, against ~1.5x with the same
work done by this process, when the machine's second core is free. The
helper shares no GIL, and while the loop keeps sending it sleeps between
reads instead of waiting on the pipe, so the loop's writes do not wake it
either. Where no process can be started (a frozen application, a sandbox),
the same reader runs in a thread of the rollout's process.

Crash safety: a file appears under its name only whole, and what the loop
wrote into the pipe is written even if the loop's process is killed right
after (the helper finishes its input, drops a partial last frame, and
exits). Each episode's lines leave the loop's process as the episode ends.
Nothing is fsync'ed: a crash of the machine may lose recent files (see
:mod:`._run_dir`).

Back-pressure: the pipe holds 1 MiB. When it is full, what is sent waits in
a backlog and the sink's hook returns an awaitable that waits until the
helper has taken it: a slow disk slows the rollout rather than piling
episodes up in memory. A failed write (a full disk) is reported by the
helper and raised on the event loop at a later hook (:meth:`FileWriter.check`)
or at the run's end, so a recording that cannot be written stops the run.

The helper costs a fixed ~15 ms per run (a Python interpreter starting,
in parallel with the run's first episodes; a run shorter than that waits
for it at its end).
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from . import _writer_child
from ._writer_child import APPEND, FILE, HEADER, NPZ, RECORDS, FrameHandler

__all__ = ["FileWriter", "WriterError", "temporary_name", "write_file"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
#: What the pipe to the helper holds (Linux allows an unprivileged process 1 MiB).
PIPE_BYTES = 1 << 20
#: How often queueing calls look at the helper's reports, in seconds.
_CHECK_EVERY_S = 0.05
_F_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux


class WriterError(OSError):
    """A recording file could not be written (the helper's report, or the helper died)."""


def temporary_name(path: str) -> str:
    """Where ``path`` is written before its rename (``.NAME.tmp``: readers skip it)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp")


def write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder, then rename it.

    Blocking. A process killed mid-write leaves only the temporary file.
    """
    tmp = temporary_name(path)
    fd = os.open(tmp, _FLAGS, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


#: The types a record may hold as they are. marshal writes a numpy scalar as its raw bytes,
#: not as a number: such values are refused here, and the caller formats its lines itself.
_PLAIN = frozenset({int, float, bool, str, type(None)})


def _plain_dict(value: dict[Any, Any]) -> bool:
    """A dict of str to plain values (an episode's metrics)."""
    return all(type(key) is str for key in value) and _PLAIN.issuperset(map(type, value.values()))


def _helper_command() -> list[str] | None:
    """How to start the helper process, or None where this interpreter cannot."""
    if getattr(sys, "frozen", False) or not sys.executable:
        return None
    # -I: no user site, no PYTHON* variables, no cwd on the path; -S: no site (fast start).
    return [sys.executable, "-I", "-S", str(Path(_writer_child.__file__))]


class FileWriter:
    """Sends files and log lines to the helper that writes them (see the module documentation).

    Queueing (:meth:`write`, :meth:`append`) never blocks and is meant for one
    thread, the event loop's. The helper starts at :meth:`start` (what is
    queued before waits for it) and ends when its last user releases it
    (:meth:`release`), or at :meth:`close`.
    """

    def __init__(self) -> None:
        self._fd = -1  # the pipe's write end, non-blocking
        self._reports = -1  # the read end of the helper's report pipe
        self._wake = -1  # closed to tell the helper to finish without delay
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._backlog: list[bytes] = []
        self._held: list[Any] = []  # frames (as buffers) not sent yet, see write(flush=False)
        self._users = 0
        self._errors: list[str] = []
        self._raised = 0
        self._partial_report = b""
        self._next_check = 0.0
        self._paths: dict[str, bytes] = {}

    # ------------------------------------------------------------------ state

    @property
    def started(self) -> bool:
        """Whether the helper runs (then queued items go straight to it)."""
        return self._fd >= 0

    @property
    def waiting(self) -> bool:
        """Whether items wait because the pipe was full: the caller should :meth:`wait`.

        Before :meth:`start`, items wait for the helper without counting here.
        """
        return bool(self._backlog) and self._fd >= 0

    def acquire(self) -> None:
        """Count one more user (a sink of the run): the last :meth:`release` ends the helper."""
        self._users += 1

    # ------------------------------------------------------------------ queueing

    def write(self, path: str, data: bytes, *, flush: bool = True) -> None:
        """Queue the file ``path`` with ``data`` (written through a temporary name).

        With ``flush`` false the item is held until the next flushed one: the
        sinks of an output directory send an episode's file and lines in one
        ``write`` that way.
        """
        self._send(FILE, path, (data,), len(data), flush)

    def append(self, path: str, text: str, *, flush: bool = True) -> None:
        """Queue appending ``text`` (whole lines) to the log ``path`` (``flush``: as in write)."""
        data = text.encode("utf-8")
        self._send(APPEND, path, (data,), len(data), flush)

    def append_records(
        self, path: str, records: list[tuple[Any, ...]], *, flush: bool = True
    ) -> None:
        """Queue log lines the helper formats from ``records`` (see :func:`format_record`).

        Raises:
            ValueError: A value is not a plain one (an int, float, bool, str,
                None, or a dict or list of them); the caller formats the
                lines itself then.
        """
        for record in records:
            if not _PLAIN.issuperset(map(type, record)):
                for value in record:
                    if type(value) is dict:
                        if not _plain_dict(value):
                            raise ValueError(f"not plain values: {value!r}")
                    elif type(value) not in _PLAIN:
                        raise ValueError(f"not a plain value: {value!r}")
        data = marshal.dumps(records)
        self._send(RECORDS, path, (data,), len(data), flush)

    def write_archive(
        self, path: str, payload: tuple[list[Any], int], *, flush: bool = True
    ) -> None:
        """Queue the ``.npz`` file ``path``; the helper lays the archive out from its members.

        Args:
            path: The file to write (through a temporary name).
            payload: The members as :func:`._npz.archive_payload` lays them
                out (the arrays are sent as they are, not copied), and
                their size in bytes.
            flush: See :meth:`write`.
        """
        self._send(NPZ, path, payload[0], payload[1], flush)

    def _send(self, kind: int, path: str, parts: Any, size: int, flush: bool) -> None:
        """Queue a frame of data ``parts`` (``size`` bytes); send what is held if ``flush``."""
        encoded = self._paths.get(path)
        if encoded is None:
            encoded = self._paths[path] = path.encode("utf-8")
        self._held += (HEADER.pack(kind, len(encoded), size), encoded, *parts)
        if flush:
            self.flush()

    def flush(self) -> None:
        """Send the held items, in one write (the pipe's reader is not woken by it)."""
        if not self._held:
            return
        data = b"".join(self._held)
        self._held.clear()
        if self._backlog or self._fd < 0:
            self._backlog.append(data)
            return
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except BrokenPipeError as exc:
            raise self._died() from exc
        if sent < len(data):
            self._backlog.append(data[sent:])

    def check(self) -> None:
        """Raise the helper's first report of a failed write not raised yet (looks every 50 ms)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + _CHECK_EVERY_S
            self._read_reports()
        self._raise_errors()

    def _raise_errors(self) -> None:
        if self._raised < len(self._errors):
            first = self._errors[self._raised]
            self._raised = len(self._errors)
            path, _, message = first.partition("\t")
            more = len(self._errors) - 1
            also = f" (and {more} more failed writes)" if more else ""
            raise WriterError(f"could not write {path}: {message}{also}")

    def _read_reports(self) -> None:
        if self._reports < 0:
            return
        chunks = [self._partial_report]
        while True:
            try:
                chunk = os.read(self._reports, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        text = b"".join(chunks)
        lines = text.split(b"\n")
        self._partial_report = lines.pop()
        for line in lines:
            if line.startswith(b"E "):
                self._errors.append(line[2:].decode("utf-8", "replace"))

    async def wait(self) -> None:
        """Wait until the backlog is in the pipe (the helper took enough), then :meth:`check`."""
        self.flush()
        while self._backlog:
            if self._fd < 0:
                await self.start()
                continue
            self._push()
            if self._backlog:
                await anyio.sleep(0.001)
        self.check()

    def _push(self) -> None:
        """Move what fits of the backlog into the pipe."""
        if not self._backlog:
            return
        data = b"".join(self._backlog)
        self._backlog = []
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BlockingIOError:
            pass
        except BrokenPipeError as exc:
            raise self._died() from exc
        finally:
            if view:
                self._backlog.append(bytes(view))

    def _died(self) -> WriterError:
        process = self._process
        status = process.poll() if process is not None else None
        self._read_reports()
        with contextlib.suppress(WriterError):
            self._raise_errors()
        return WriterError(
            "the recording writer process ended before the run did "
            f"(exit status {status}); files after that point were not written"
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the helper (in a worker thread: starting a process blocks), if not running."""
        if self._fd < 0:
            await anyio.to_thread.run_sync(self._start)
            self._push()

    def _start(self) -> None:
        read_end, write_end = os.pipe()
        report_read, report_write = os.pipe()
        wake_read, wake_write = os.pipe()
        try:
            if _F_SETPIPE_SZ is not None:
                with contextlib.suppress(OSError):
                    fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_BYTES)
            command = _helper_command()
            process = None
            if command is not None:
                try:
                    process = subprocess.Popen(
                        [*command, str(wake_read)],
                        stdin=read_end,
                        stdout=report_write,
                        close_fds=True,
                        pass_fds=(wake_read,),
                    )
                except OSError:
                    process = None
            if process is None:
                # No process here: the same reader, in a thread of this one.
                thread = threading.Thread(
                    target=_serve_and_close,
                    args=(read_end, report_write, wake_read),
                    name="async-rollout-writer",
                    daemon=True,
                )
                thread.start()
                self._thread = thread
                read_end = report_write = wake_read = -1  # the thread closes them
            self._process = process
        finally:
            for fd in (read_end, report_write, wake_read):
                if fd >= 0:
                    os.close(fd)
        os.set_blocking(write_end, False)
        os.set_blocking(report_read, False)
        self._fd, self._reports, self._wake = write_end, report_read, wake_write

    async def release(self) -> None:
        """Forget one user; after the last, write everything, end the helper, raise failures."""
        self._users = max(0, self._users - 1)
        if self._users:
            self.check()
            return
        try:
            await self.wait()
        finally:
            await anyio.to_thread.run_sync(self._finish, abandon_on_cancel=True)
        self._raise_errors()

    def close(self) -> None:
        """Write what is queued and end the helper, blocking (for synchronous callers)."""
        self._users = 0
        self.flush()
        if self._fd < 0:
            # Never started: write in this thread.
            if self._backlog:
                data, self._backlog = b"".join(self._backlog), []
                handler = FrameHandler(lambda line: self._errors.append(line[2:].rstrip("\n")))
                try:
                    handler.feed(data)
                finally:
                    handler.close()
        else:
            os.set_blocking(self._fd, True)
            self._push()
            self._finish()
        self._raise_errors()

    def _finish(self) -> None:
        """Close the pipe and wait until the helper has written everything and ended."""
        for fd in (self._fd, self._wake):  # the end of input, and a wake-up to see it
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake = -1
        process, self._process = self._process, None
        if process is not None:
            process.wait()
            if process.returncode != 0:
                self._errors.append(
                    f"(the recording writer process)\tit ended with status {process.returncode}"
                )
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if self._reports >= 0:
            os.set_blocking(self._reports, True)
            self._read_reports()  # up to the end of the helper's reports
            os.close(self._reports)
            self._reports = -1


def _serve_and_close(source: int, report: int, wake: int) -> None:
    try:
        _writer_child.serve(source, report, wake)
    finally:
        for fd in (source, report, wake):
            os.close(fd)
