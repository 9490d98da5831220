"""A fast ``.npz`` encoder: the archive ``numpy.savez`` writes, built in memory in one go.

``numpy.savez`` streams each array into a :class:`zipfile.ZipFile` member;
for the small archives of short episodes its per-member bookkeeping costs
about three times what the bytes do (measured: ~125 us against ~40 us for
a CartPole episode). This module lays out the same thing directly: one
uncompressed ("stored") ZIP member ``NAME.npy`` per array, each a version
1.0 ``.npy`` file with numpy's own header. ``numpy.load`` and
:mod:`zipfile` read it like any ``.npz``. Archives beyond what a plain ZIP
can describe (a member or the whole file over 4 GiB, 65535 members), and
headers beyond a version 1.0 ``.npy``, are left to ``numpy.savez``: the
encoder returns None for them.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["npz_bytes"]

_ZIP32_LIMIT = 0xFFFFFFFF
_MAX_MEMBERS = 0xFFFF
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
# 1980-01-01 00:00, the earliest DOS date: a fixed timestamp keeps equal episodes' files equal.
_DOS_TIME, _DOS_DATE = 0, 0x21
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")


@functools.lru_cache(maxsize=256)
def _descr(dtype: np.dtype[Any]) -> Any:
    return np.lib.format.dtype_to_descr(dtype)


def _npy(array: np.ndarray[Any, Any]) -> bytes | None:
    array = np.ascontiguousarray(array)
    descr = _descr(array.dtype)
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {array.shape!r}, }}"
    # numpy pads the header with spaces so the data starts on a 64-byte boundary.
    padding = -(len(_NPY_MAGIC) + 2 + len(header) + 1) % 64
    text = (header + " " * padding + "\n").encode("latin1")
    if len(text) > 0xFFFF:
        return None
    return _NPY_MAGIC + struct.pack("<H", len(text)) + text + array.tobytes()


def npz_bytes(arrays: Mapping[str, np.ndarray[Any, Any]]) -> bytes | None:
    """The ``.npz`` archive of ``arrays`` (``numpy.load`` reads it back), or None if too large.

    Args:
        arrays: Member name (without ``.npy``) to array; no object arrays.
    """
    if len(arrays) > _MAX_MEMBERS:
        return None
    parts: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, array in arrays.items():
        data = _npy(array)
        if data is None:
            return None
        filename = f"{name}.npy".encode()
        size = len(data)
        crc = zlib.crc32(data)
        if size > _ZIP32_LIMIT or offset > _ZIP32_LIMIT:
            return None
        local = _LOCAL.pack(
            0x04034B50, 20, 0x800, 0, _DOS_TIME, _DOS_DATE, crc, size, size, len(filename), 0
        )
        central.append(
            _CENTRAL.pack(
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
                len(filename),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + filename
        )
        parts += (local, filename, data)
        offset += len(local) + len(filename) + size
    directory = b"".join(central)
    if offset + len(directory) > _ZIP32_LIMIT:
        return None
    end = _END.pack(0x06054B50, 0, 0, len(central), len(central), len(directory), offset, 0)
    return b"".join((*parts, directory, end))
