"""Records: a file (or only its hash) with metadata, signed onto the chain."""

from __future__ import annotations

import hashlib

from twinledger.contracts import calls
from twinledger.core.types import MAX_TX_BYTES
from twinledger.errors import BadRequest
from twinledger.services.session import Outcome, Session

RECORD_HEADROOM = 2048
"""Bytes of a transaction left for everything but the payload."""


def parse_metadata(items: list[str]) -> dict[str, str]:
    metadata = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"--meta {item!r} is not KEY=VALUE")
        metadata[key] = value
    return metadata


async def put_hash(session: Session, digest: bytes, metadata: dict[str, str],
                   media_type: str = "application/octet-stream", wait: bool = False) -> Outcome:  # fmt: skip
    """Record only a payload's SHA-256 (the payload stays with its owner)."""
    return await session.transact(calls.put_record(media_type, metadata, payload_hash=digest), wait)


async def put(session: Session, data: bytes, metadata: dict[str, str], media_type: str = "application/octet-stream",
              hash_only: bool = False, wait: bool = False) -> Outcome:  # fmt: skip
    """Record ``data`` on chain (or only its SHA-256 with ``hash_only``)."""
    if not hash_only and len(data) > MAX_TX_BYTES - RECORD_HEADROOM:
        raise BadRequest("the file is larger than a transaction may be; record its hash only", code="too_large")
    call = (calls.put_record(media_type, metadata, payload_hash=hashlib.sha256(data).digest()) if hash_only
            else calls.put_record(media_type, metadata, payload=data))  # fmt: skip
    return await session.transact(call, wait)
