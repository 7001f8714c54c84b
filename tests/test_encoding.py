from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinledger.core.encoding import decode, encode
from twinledger.core.types import decode_block, decode_header, decode_transaction
from twinledger.errors import DecodeError

# Test vectors, also listed in docs/encoding.md.
VECTORS = [
    (None, "c0"),
    (True, "c3"),
    (0, "00"),
    (-1, "ff"),
    (300, "cd012c"),
    (2**64 - 1, "cfffffffffffffffff"),
    ("twin", "a47477696e"),
    (b"\x01\x02", "c4020102"),
    ([1, "a"], "9201a161"),
    ({"b": 1, "a": [b""]}, "82a16191c400a16201"),
]


@pytest.mark.parametrize(("value", "hex_bytes"), VECTORS)
def test_vectors(value, hex_bytes):
    assert encode(value).hex() == hex_bytes
    assert decode(bytes.fromhex(hex_bytes)) == value


@pytest.mark.parametrize(
    ("hex_bytes", "why"),
    [
        ("82a16201a16101", "keys out of order"),
        ("82a16101a16102", "duplicate key"),
        ("cb3ff0000000000000", "float"),
        ("cc05", "integer in a long form"),
        ("c0c0", "trailing bytes"),
        ("a2ff00", "invalid UTF-8"),
        ("81c40161c0", "byte-string map key"),
        ("d40100", "extension type"),
        ("", "empty"),
        ("92", "truncated"),
    ],
)
def test_non_canonical_forms_are_rejected(hex_bytes, why):
    with pytest.raises(DecodeError):
        decode(bytes.fromhex(hex_bytes))


def test_floats_and_foreign_types_cannot_be_encoded():
    for value in (1.5, {1: "x"}, object(), 2**64):
        with pytest.raises(DecodeError):
            encode(value)


def test_nesting_is_limited():
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(DecodeError):
        encode(deep)
    with pytest.raises(DecodeError):
        decode(b"\x91" * 40 + b"\xc0")


def test_size_limit():
    with pytest.raises(DecodeError, match="exceed"):
        decode(encode(b"x" * 100), max_size=50)


canonical = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(canonical)
def test_roundtrip(value):
    assert decode(encode(value)) == value


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decoders_raise_only_decode_errors_on_garbage(data):
    for decoder in (decode, decode_transaction, decode_header, decode_block):
        with contextlib.suppress(DecodeError):
            decoder(data)


@given(canonical)
def test_structured_decoders_reject_well_formed_wrong_shapes(value):
    data = encode(value)
    for decoder in (decode_transaction, decode_header, decode_block):
        with pytest.raises(DecodeError):
            decoder(data)
