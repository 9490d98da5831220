"""The wire codec, framing and space descriptions, without sockets."""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from fractions import Fraction
from typing import Any

import msgpack
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from async_rollout.remote._spaces import conform, describe_space, restore_space
from async_rollout.remote._wire import (
    EXT_NDARRAY,
    EncodeError,
    ProtocolError,
    _warned_types,
    decode,
    encode,
    frame,
)

SPACES = [
    spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32),
    spaces.Box(low=np.array([-np.inf, 0.0]), high=np.array([np.inf, 2.5]), dtype=np.float64),
    spaces.Box(0, 255, shape=(4, 4, 3), dtype=np.uint8),
    spaces.Discrete(5),
    spaces.Discrete(3, start=-1),
    spaces.MultiDiscrete([3, 4, 2]),
    spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[1, 0], [0, -2]])),
    spaces.MultiBinary(4),
    spaces.MultiBinary([2, 3]),
    spaces.Dict(
        OrderedDict(
            z=spaces.Discrete(2), a=spaces.Box(-1, 1, (2,)), m=spaces.Tuple((spaces.Discrete(3),))
        )
    ),
    spaces.Tuple((spaces.Discrete(3), spaces.Dict({"x": spaces.MultiBinary(2)}))),
]


def roundtrip(value: Any) -> Any:
    return decode(encode({"type": "t", "v": value}))["v"]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: type(s).__name__)
def test_spaces_survive_the_handshake(space: spaces.Space[Any]) -> None:
    """Every supported space comes back equal, with the same key order and dtypes."""
    restored = restore_space(decode(encode({"type": "t", "s": describe_space(space)}))["s"])
    assert restored == space
    assert type(restored) is type(space)
    assert restored.dtype == space.dtype
    if isinstance(space, spaces.Dict):
        assert list(restored.spaces) == list(space.spaces)


@pytest.mark.parametrize("space", SPACES, ids=lambda s: type(s).__name__)
def test_samples_survive_exactly(space: spaces.Space[Any]) -> None:
    """A sample of every space decodes to the same values, types and dtypes."""
    space.seed(3)
    sample = space.sample()
    back = conform(roundtrip(sample), space)
    assert_same(back, sample)
    assert space.contains(back)


def assert_same(actual: Any, expected: Any) -> None:
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype
        assert actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif isinstance(expected, np.generic):
        assert actual.dtype == expected.dtype
        assert actual == expected
    else:
        assert actual == expected


def test_info_values() -> None:
    """Infos carry numbers, strings, bools, None, bytes, arrays, lists and dicts as they are."""
    info = {
        "int": 3,
        "big": 2**63,
        "neg": -(2**63),
        "float": 0.25,
        "nan_free": float("inf"),
        "str": "héllo",
        "bool": True,
        "none": None,
        "bytes": b"\x00\xff",
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "strings": np.array(["a", "bc"]),
        "scalar": np.float32(1.5),
        "bool_": np.bool_(True),
        "empty": np.zeros((0, 3), dtype=np.float64),
        "nested": {"list": [1, "two", [3.0]], 7: "int key"},
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">i4"),
    }
    back = roundtrip(info)
    for key in ("int", "big", "neg", "float", "nan_free", "str", "bool", "none", "bytes"):
        assert back[key] == info[key]
        assert type(back[key]) is type(info[key])
    for key in ("array", "strings", "empty", "fortran", "big_endian"):
        assert back[key].dtype == info[key].dtype
        np.testing.assert_array_equal(back[key], info[key])
    assert back["scalar"] == np.float32(1.5)
    assert back["scalar"].dtype == np.float32
    assert back["bool_"] is np.True_
    assert back["nested"] == {"list": [1, "two", [3.0]], 7: "int key"}
    assert back["array"].flags.writeable


def test_other_values_travel_as_repr_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """What msgpack cannot carry becomes its repr, with one logged warning per type."""
    _warned_types.discard(Fraction)
    with caplog.at_level(logging.WARNING, logger="async_rollout"):
        back = roundtrip({"f": Fraction(1, 3), "g": [Fraction(2, 3)], (1, 2): "tuple key"})
        roundtrip(Fraction(5, 7))
    assert back["f"] == "Fraction(1, 3)"
    assert back["g"] == ["Fraction(2, 3)"]
    assert back["(1, 2)"] == "tuple key"
    fraction_warnings = [r for r in caplog.records if "Fraction" in r.getMessage()]
    assert len(fraction_warnings) == 1
    assert roundtrip(2**64) == "18446744073709551616"
    assert roundtrip(np.array([{}], dtype=object)) == "array([{}], dtype=object)"


def test_no_pickle_anywhere() -> None:
    """An object array is never pickled: its repr goes instead, and a decoder refuses dtype 'O'."""
    payload = encode({"type": "t", "v": np.array([object()], dtype=object)})
    assert b"pickle" not in payload
    dtype = b"|O"
    bad = bytes((len(dtype),)) + dtype + bytes((1,)) + struct.pack(">Q", 1) + b"\x00" * 8
    with pytest.raises(ProtocolError, match="not allowed"):
        decode(msgpack.packb({"type": "t", "v": msgpack.ExtType(EXT_NDARRAY, bad)}))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"no": "type"}),
        msgpack.packb({"type": 5}),
        msgpack.packb({"type": "t"}) + b"\x00",
        msgpack.packb({"type": "t", "v": msgpack.ExtType(EXT_NDARRAY, b"\x03<f4\x01")}),
        msgpack.packb({"type": "t", "v": msgpack.ExtType(EXT_NDARRAY, b"\x02zz\x00")}),
        msgpack.packb({"type": "t", "v": msgpack.ExtType(99, b"")}),
        b"\x82\xa4type\xa1t\x91\x01\x02",  # a map with a list as a key
    ],
)
def test_malformed_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(payload)


def test_array_size_must_match_its_header() -> None:
    dtype = b"<f4"
    header = bytes((len(dtype),)) + dtype + bytes((2,)) + struct.pack(">QQ", 2**40, 2**40)
    ext = msgpack.ExtType(EXT_NDARRAY, header + b"\x00" * 16)
    with pytest.raises(ProtocolError, match="needs"):
        decode(msgpack.packb({"type": "t", "v": ext}))


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=256))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    """Random bytes either decode to a message or raise ProtocolError, nothing else."""
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert isinstance(message["type"], str)


def test_frames_have_a_big_endian_length_prefix() -> None:
    payload = encode({"type": "hello"})
    framed = frame(payload, 1024)
    assert framed[:4] == struct.pack(">I", len(payload))
    assert framed[4:] == payload
    with pytest.raises(EncodeError, match="exceeds"):
        frame(b"x" * 10, 5)


def test_unsupported_space_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Text"):
        describe_space(spaces.Text(5))


@pytest.mark.parametrize(
    "desc",
    [
        None,
        {"type": "Nope"},
        {"type": "Box"},
        {"type": "Discrete", "n": "x"},
        {"type": "Dict", "spaces": {"a": 1}},
        {"type": "Tuple", "spaces": [{"type": "Discrete", "n": -1}]},
        {"type": "Box", "dtype": "<f4", "shape": [2], "low": [0, 0], "high": [1]},
    ],
)
def test_bad_space_descriptions_are_protocol_errors(desc: Any) -> None:
    with pytest.raises(ProtocolError):
        restore_space(desc)
