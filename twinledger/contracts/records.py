"""The ``records`` contract: a signed record of a payload (or its hash) with metadata.

State: ``records/<record id hex>`` → the record, where the record id is the hash of the
transaction that stored it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.contracts.runtime import Call, Contract, Method
from twinledger.errors import InvalidTransaction

MAX_METADATA_ENTRIES = 32
MAX_TEXT = 256


def record_key(record_id: bytes) -> str:
    return f"records/{record_id.hex()}"


@dataclass(frozen=True)
class PutArgs:
    payload: bytes | None
    payload_hash: bytes
    media_type: str
    metadata: dict[str, str]


def _bad(message: str) -> InvalidTransaction:
    return InvalidTransaction(f"records.put: {message}", code="bad_arguments")


def parse_put(args: Mapping[str, Any]) -> PutArgs:
    unknown = set(args) - {"payload", "payload_hash", "media_type", "metadata"}
    if unknown:
        raise _bad(f"unknown arguments {sorted(unknown)}")
    payload = args.get("payload")
    digest = args.get("payload_hash")
    if (payload is None) == (digest is None):
        raise _bad("give exactly one of payload and payload_hash")
    if payload is not None:
        if not isinstance(payload, bytes):
            raise _bad("payload must be bytes")
        digest = hashlib.sha256(payload).digest()
    elif not isinstance(digest, bytes) or len(digest) != 32:
        raise _bad("payload_hash must be a 32-byte SHA-256 digest")
    media_type = args.get("media_type", "application/octet-stream")
    if not isinstance(media_type, str) or not 0 < len(media_type) <= MAX_TEXT:
        raise _bad("media_type must be a short string")
    metadata = args.get("metadata", {})
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_ENTRIES:
        raise _bad(f"metadata must be a map of at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > MAX_TEXT or len(value) > MAX_TEXT:
            raise _bad(f"metadata entry {key[:40]!r} must map a short string to a short string")
    return PutArgs(payload, digest, media_type, metadata)


def put(call: Call, args: PutArgs) -> None:
    record_id = call.tx.hash
    call.state.set(
        record_key(record_id),
        {
            "owner": call.sender,
            "payload_hash": args.payload_hash,
            "size": len(args.payload) if args.payload is not None else None,
            "media_type": args.media_type,
            "metadata": args.metadata,
            "height": call.header.height,
            "timestamp": call.header.timestamp,
        },
    )
    call.emit("RecordStored", record=record_id, owner=call.sender, payload_hash=args.payload_hash)


RECORDS = Contract("records", {"put": Method(parse_put, put)})
