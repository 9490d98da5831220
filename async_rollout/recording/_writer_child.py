r"""The writer process of an output directory: it makes the files the event loop sends it.

Run as ``python -I -S _writer_child.py`` by :mod:`._writer` (standard library
only: it must start in milliseconds and never import the package), or used
in-process (:class:`FrameHandler`) where no process can be started.

Input (standard input, a pipe): frames ``<kind:u8><path length:u32><data
length:u64><path, UTF-8><data>``:

- ``FILE``: write ``data`` to ``.NAME.tmp`` in the path's folder, then rename
  it to ``path`` (a reader, or a process killed at any moment, sees the whole
  file or none);
- ``NPZ``: the same with a ``.npz`` archive the process lays out itself from
  its members (:func:`zip_stored`): ``data`` is ``<count:u32>``, then per
  member ``<name length:u16><head length:u32><body length:u64>`` followed by
  its name, head and body (the member's content is head + body: an ``.npy``
  header and the array's bytes);
- ``APPEND``: append ``data`` (whole lines) to the log ``path``;
- ``RECORDS``: the same with lines this process formats: ``data`` is a
  :mod:`marshal`-ed list of records, tuples of plain values made by the
  event loop (a ``marshal.dumps`` costs a sixth of a ``json.dumps``), each a
  line of ``episodes.jsonl`` or ``events.jsonl`` (:func:`format_record`).

Lines are appended once per read of the input, after the files of that
read: a journal line never names a file not yet written.

Output (standard output, a pipe): one line ``E <path>\t<error>`` per write
that failed (the process goes on with the next frames). A partial last frame
(the parent was killed mid-write) is dropped. At the end of its input the
process finishes the frames it has and exits.

While frames keep coming, it reads its input every few milliseconds rather
than waiting on it: the event loop's writes then never wake a sleeping
process, which on a busy machine costs the loop more than the write itself.
Idle, it waits on the pipe, and the next write wakes it.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import struct
import sys
import time
import zlib
from _json import encode_basestring_ascii, make_encoder

# No runtime import of typing: the process must start in milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from typing_extensions import Buffer

__all__ = [
    "APPEND",
    "EPISODE_END",
    "EPISODE_END_FIELDS",
    "EPISODE_START",
    "EPISODE_START_FIELDS",
    "FILE",
    "HEADER",
    "JOURNAL_FIELDS",
    "JOURNAL_LINE",
    "MEMBER",
    "NPZ",
    "RECORDS",
    "FrameHandler",
    "dumps",
    "format_record",
    "iso_time",
    "main",
    "serve",
    "zip_stored",
]

FILE, APPEND, NPZ, RECORDS = 1, 2, 4, 5
#: Kinds of record of a ``RECORDS`` frame (its first item).
JOURNAL_LINE, EPISODE_START, EPISODE_END = 1, 2, 3
#: Frame header: kind, path length, data length.
HEADER = struct.Struct("<BIQ")
#: An NPZ frame's member entry: name length, head length, body length.
MEMBER = struct.Struct("<HIQ")
_COUNT = struct.Struct("<I")
#: How long the process sleeps between two reads of its input while idle.
POLL_S = 0.004
#: Failed writes reported at most (the first ones say what is wrong).
MAX_ERRORS = 100

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


_ZIP32_LIMIT = 0xFFFFFFFF
_MAX_MEMBERS = 0xFFFF
# 1980-01-01 00:00, the earliest DOS date: a fixed timestamp keeps equal episodes' files equal.
_DOS_TIME, _DOS_DATE = 0, 0x21
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")


def zip_stored(members: Sequence[tuple[bytes, bytes, Buffer]]) -> list[Buffer] | None:
    """The parts of an uncompressed ("stored") ZIP archive, in order, or None beyond ZIP32.

    Args:
        members: ``(file name, head, body)`` per member; its content is head
            followed by body (both bytes-like), so a large body is never copied.
    """
    if len(members) > _MAX_MEMBERS:
        return None
    parts: list[Buffer] = []
    central: list[bytes] = []
    offset = 0
    local_pack, central_pack, crc32 = _LOCAL.pack, _CENTRAL.pack, zlib.crc32
    for filename, head, body in members:
        size = len(head) + (len(body) if type(body) is bytes else memoryview(body).nbytes)
        # The CRC of the head, continued over the body: no copy of the body.
        crc = crc32(body, crc32(head))
        if size > _ZIP32_LIMIT or offset > _ZIP32_LIMIT:
            return None
        n = len(filename)
        parts += (
            local_pack(0x04034B50, 20, 0x800, 0, _DOS_TIME, _DOS_DATE, crc, size, size, n, 0),
            filename,
            head,
            body,
        )
        central.append(
            central_pack(
                0x02014B50,
                20,
                20,
                0x800,
                0,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                size,
                size,
                n,
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + filename
        )
        offset += _LOCAL.size + n + size
    directory = b"".join(central)
    if offset + len(directory) > _ZIP32_LIMIT:
        return None
    end = _END.pack(0x06054B50, 0, 0, len(central), len(central), len(directory), offset, 0)
    parts += (directory, end)
    return parts


_ENCODE = make_encoder(None, repr, encode_basestring_ascii, None, ":", ",", False, False, True)
_second_text: tuple[int, str] = (-1, "")


def dumps(value: object) -> str:
    """One line of JSON of plain values, as :func:`json.dumps` with compact separators writes it."""
    return "".join(_ENCODE(value, 0))


def iso_time(when: float) -> str:
    """A :func:`time.time` value as ISO 8601 text in UTC, with microseconds.

    The text of ``datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")``;
    the date and time of day are formatted once per second.
    """
    global _second_text
    second = int(when // 1)
    cached, text = _second_text  # one object: threads see a second with its own text
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)
    return f"{text}.{int((when - second) * 1e6):06d}+00:00"


#: The fields of a record of each kind, after the kind (and, for events, the time).
JOURNAL_FIELDS = (
    "index",
    "env_seed",
    "agent_seed",
    "return",
    "length",
    "terminated",
    "truncated",
    "outcome",
    "error",
    "wall_time_s",
    "env_time_s",
    "policy_time_s",
    "metrics",
    "trajectory",
)
EPISODE_START_FIELDS = ("index", "env_seed", "agent_seed", "attempt")
EPISODE_END_FIELDS = (
    "index",
    "outcome",
    "error",
    "return",
    "length",
    "terminated",
    "truncated",
    "wall_time_s",
)
_EVENTS = {EPISODE_START: "episode_start", EPISODE_END: "episode_end"}
_EVENT_FIELDS = {EPISODE_START: EPISODE_START_FIELDS, EPISODE_END: EPISODE_END_FIELDS}


def format_record(record: tuple[Any, ...]) -> str:
    """The log line (with its newline) of a record of a ``RECORDS`` frame.

    A record is a tuple: its kind, then the values of :data:`JOURNAL_FIELDS`
    (a line of ``episodes.jsonl``), or the :func:`time.time` of the event
    and the values of :data:`EPISODE_START_FIELDS` or
    :data:`EPISODE_END_FIELDS` (a line of ``events.jsonl``).
    """
    kind = record[0]
    if kind == JOURNAL_LINE:
        line = dict(zip(JOURNAL_FIELDS, record[1:], strict=True))
    elif kind in _EVENTS:
        line = {"event": _EVENTS[kind], "time": iso_time(record[1])}
        line.update(zip(_EVENT_FIELDS[kind], record[2:], strict=True))
    else:
        raise ValueError(f"unknown record kind {kind!r}")
    return dumps(line) + "\n"


def _members(data: memoryview) -> list[tuple[bytes, bytes, Buffer]]:
    """The members of an NPZ frame's data (see the module documentation)."""
    (count,) = _COUNT.unpack_from(data, 0)
    position = _COUNT.size
    members: list[tuple[bytes, bytes, Buffer]] = []
    for _ in range(count):
        name_length, head_length, body_length = MEMBER.unpack_from(data, position)
        name_end = position + MEMBER.size + name_length
        head_end = name_end + head_length
        body_end = head_end + body_length
        members.append(
            (
                bytes(data[position + MEMBER.size : name_end]),
                bytes(data[name_end:head_end]),
                data[head_end:body_end],
            )
        )
        position = body_end
    if position != len(data):
        raise ValueError("a malformed NPZ frame")
    return members


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FrameHandler:
    """Parses frames and makes the files; reports go to ``report(line)``."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report
        self._logs: dict[str, int] = {}
        self._buffer = bytearray()
        self._lines: dict[str, list[bytes]] = {}
        self._errors = 0

    def feed(self, data: bytes | bytearray) -> None:
        """Handle every whole frame of what came so far (``data`` is appended first)."""
        buffer = self._buffer
        buffer += data
        size = HEADER.size
        end = len(buffer)
        position = 0
        with memoryview(buffer) as view:
            while end - position >= size:
                kind, path_length, data_length = HEADER.unpack_from(view, position)
                start = position + size + path_length
                stop = start + data_length
                if stop > end:
                    break
                path = str(view[position + size : start], "utf-8")
                self._handle(kind, path, view[start:stop])
                position = stop
        del buffer[:position]
        self._append_lines()

    def _append_lines(self) -> None:
        """Append each log's lines of the frames handled so far, one write per log."""
        pending, self._lines = self._lines, {}
        for path, lines in pending.items():
            try:
                fd = self._logs.get(path, -1)
                if fd < 0:
                    fd = self._logs[path] = os.open(path, _APPEND, 0o666)
                _write_all(fd, b"".join(lines))
            except Exception as exc:
                self._failed(path, exc)

    def _handle(self, kind: int, path: str, data: memoryview) -> None:
        try:
            if kind == FILE or kind == NPZ:
                parts = zip_stored(_members(data)) if kind == NPZ else [data]
                if parts is None:
                    raise ValueError("the archive is beyond what a plain ZIP holds")
                folder, name = os.path.split(path)
                tmp = os.path.join(folder, f".{name}.tmp")
                fd = os.open(tmp, _FLAGS, 0o666)
                try:
                    _write_all(fd, parts[0] if len(parts) == 1 else b"".join(parts))
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            elif kind == APPEND or kind == RECORDS:
                # Appended once per read, after the files of that read (see feed).
                lines = self._lines.get(path)
                if lines is None:
                    lines = self._lines[path] = []
                if kind == APPEND:
                    lines.append(bytes(data))
                else:
                    records = marshal.loads(data)
                    lines.append("".join(map(format_record, records)).encode("utf-8"))
            else:
                raise ValueError(f"unknown frame kind {kind}")
        except Exception as exc:  # reported, then the next frames
            self._failed(path, exc)

    def _failed(self, path: str, exc: Exception) -> None:
        self._errors += 1
        if self._errors <= MAX_ERRORS:
            message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            self._report(f"E {path}\t{message}\n")

    def close(self) -> None:
        """Close the logs (a partial frame left in the buffer is dropped)."""
        self._append_lines()
        logs, self._logs = self._logs, {}
        for fd in logs.values():
            os.close(fd)


def serve(source: int, report_fd: int, wake: int = -1, poll_s: float = POLL_S) -> None:
    """Handle the frames read from ``source`` until its end; reports go to ``report_fd``.

    While frames keep coming, it reads every ``poll_s`` and waits in
    between on ``wake`` only, so that the writes of a busy event loop never
    wake it; the parent closes ``wake`` when it closes ``source``, to be
    done without waiting out ``poll_s``. When a read finds nothing, it waits
    on ``source`` instead: the next write (or the end of input) wakes it.
    """

    def report(line: str) -> None:
        _write_all(report_fd, line.encode("utf-8"))

    handler = FrameHandler(report)
    os.set_blocking(source, False)
    watch = [wake] if wake >= 0 else []
    try:
        while True:
            got = 0
            while True:
                try:
                    chunk = os.read(source, 1 << 20)
                except BlockingIOError:
                    break
                if not chunk:
                    return
                got += len(chunk)
                handler.feed(chunk)
            if got == 0:
                select.select([source, *watch], [], [])  # idle: until the next write
            elif got < 1 << 19 and watch:
                select.select(watch, [], [], poll_s)  # busy: let the next writes pile up
            elif got < 1 << 19:
                time.sleep(poll_s)
    finally:
        handler.close()


def main() -> None:
    """The process: frames on standard input, reports on standard output.

    Its argument, if any, is the descriptor of the wake-up pipe (see :func:`serve`).

    Ctrl-C and SIGTERM sent to the parent's process group are ignored: the
    parent stops its run cleanly and closes the pipe, and the writer ends
    once it has written what it got.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(0, 1, int(sys.argv[1]) if len(sys.argv) > 1 else -1)
    # Everything is written and closed: skip the interpreter's shutdown.
    os._exit(0)


if __name__ == "__main__":
    main()
