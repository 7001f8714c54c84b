from __future__ import annotations

import dataclasses

import pytest

from twinledger.core.encoding import decode, encode
from twinledger.core.types import (
    MAX_TX_BYTES,
    Transaction,
    decode_transaction,
    encode_transaction,
    sign_transaction,
)
from twinledger.crypto.keys import SigningKey
from twinledger.errors import DecodeError, InvalidTransaction
from twinledger.ledger.validation import validate_transaction

KEY = SigningKey(bytes(range(32)))


def make(**overrides) -> Transaction:
    fields = dict(chain_id="c", nonce=1, contract="records", method="put",
                  args={"payload": b"x", "metadata": {"k": "v"}}, timestamp=1_700_000_000_000)  # fmt: skip
    fields.update(overrides)
    return sign_transaction(KEY, **fields)


def test_roundtrip_and_hash_stability():
    tx = make()
    again = decode_transaction(encode_transaction(tx))
    assert again == tx and again.hash == tx.hash
    validate_transaction(again, "c")


def test_stripped_keeps_hash_and_signature():
    tx = make()
    stripped = decode_transaction(encode_transaction(tx.strip()))
    assert stripped.stripped and stripped.hash == tx.hash
    assert "args" not in decode(encode_transaction(stripped))
    validate_transaction(stripped, "c")


@pytest.mark.parametrize(
    ("field", "value"),
    [("chain_id", "d"), ("nonce", 2), ("contract", "other"), ("method", "get"),
     ("args", {"payload": b"y", "metadata": {"k": "v"}}), ("timestamp", 1), ("sender", bytes(32))],
)  # fmt: skip
def test_any_changed_field_breaks_the_signature(field, value):
    tampered = dataclasses.replace(make(), **{field: value})
    with pytest.raises(InvalidTransaction) as info:
        validate_transaction(tampered, tampered.chain_id)
    assert info.value.code == "bad_signature"


def test_byte_flips_never_pass():
    data = encode_transaction(make())
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x04
        try:
            tx = decode_transaction(bytes(flipped))
            validate_transaction(tx, "c")
        except (DecodeError, InvalidTransaction):
            continue
        pytest.fail(f"flipping byte {i} went unnoticed")


def test_wrong_chain_and_clock():
    tx = make()
    with pytest.raises(InvalidTransaction) as info:
        validate_transaction(tx, "other-chain")
    assert info.value.code == "wrong_chain"
    with pytest.raises(InvalidTransaction) as info:
        validate_transaction(tx, "c", now_ms=tx.timestamp + 3_600_000)
    assert info.value.code == "bad_timestamp"


def test_size_limit():
    big = make(args={"payload": b"x" * MAX_TX_BYTES})
    with pytest.raises(DecodeError):
        decode_transaction(encode_transaction(big))
    with pytest.raises(InvalidTransaction) as info:
        validate_transaction(big, "c")
    assert info.value.code == "too_large"


def test_shape_errors_name_the_field():
    obj = decode(encode_transaction(make()))
    obj["sender"] = b"short"
    with pytest.raises(DecodeError, match="sender"):
        decode_transaction(encode(obj))
    obj = decode(encode_transaction(make()))
    obj["nonce"] = "1"
    with pytest.raises(DecodeError, match="nonce"):
        decode_transaction(encode(obj))
    obj = decode(encode_transaction(make()))
    obj["extra"] = 1
    with pytest.raises(DecodeError, match="unknown fields"):
        decode_transaction(encode(obj))
