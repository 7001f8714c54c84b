"""The ``records`` contract: a signed record of a payload (or its hash) with metadata.

State: ``records/<record id hex>`` → the record, where the record id is the hash of the
transaction that stored it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.contracts.arguments import MAX_TEXT, Arguments
from twinledger.contracts.runtime import Call, Contract, Method
from twinledger.core.types import MAX_TX_BYTES

MAX_METADATA_ENTRIES = 32


def record_key(record_id: bytes) -> str:
    return f"records/{record_id.hex()}"


@dataclass(frozen=True)
class PutArgs:
    payload: bytes | None
    payload_hash: bytes
    media_type: str
    metadata: dict[str, str]


def parse_put(args: Mapping[str, Any]) -> PutArgs:
    read = Arguments("records.put", args, ("payload", "payload_hash", "media_type", "metadata"))
    payload = read.blob("payload", max_size=MAX_TX_BYTES, default=None)
    digest = read.digest("payload_hash", default=None)
    if (payload is None) == (digest is None):
        raise read.error("give exactly one of payload and payload_hash")
    if payload is not None:
        digest = hashlib.sha256(payload).digest()
    media_type = read.text("media_type", default="application/octet-stream")
    metadata = read.mapping("metadata", max_items=MAX_METADATA_ENTRIES, default={})
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > MAX_TEXT or len(value) > MAX_TEXT:
            raise read.error(f"metadata entry {key[:40]!r} must map a short string to a short string")
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
