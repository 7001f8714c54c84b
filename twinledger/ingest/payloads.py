"""Reading an ingested record's payload back: its part of a store document, opened."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twinledger.errors import TwinledgerError
from twinledger.ingest.sender import SenderKey, record_context
from twinledger.store.client import StoreClient
from twinledger.store.documents import Unlock, download_document

PART = re.compile(r"^(\d+)\+(\d+)$")


async def read_payload(store: StoreClient, record: Mapping[str, Any], unlock: Unlock,
                       tier2: SenderKey | None = None) -> bytes:  # fmt: skip
    """The payload of ``record`` (GET /v1/records/{id}), checked against the document hash
    the chain records; opened with ``tier2`` if the sender sealed it (DecryptionFailed if
    that key is not the sender's)."""
    metadata = record.get("metadata") or {}
    part = PART.match(str(metadata.get("part", "")))
    if "store" not in metadata or part is None:
        raise TwinledgerError(f"record {record.get('id', '')} keeps no payload in the store", code="not_stored")
    with tempfile.TemporaryDirectory(prefix="twinledger-record-") as scratch:
        whole = Path(scratch) / "document"
        await download_document(store, metadata["store"], bytes.fromhex(record["payload_hash"]), unlock, whole)
        with whole.open("rb") as document:
            document.seek(int(part[1]))
            payload = document.read(int(part[2]))
    if len(payload) != int(part[2]):
        raise TwinledgerError(f"record {record.get('id', '')}: the document is shorter than the part the record names",
                              code="size_mismatch")  # fmt: skip
    if "tier2" in metadata:
        if tier2 is None or tier2.key_id != metadata["tier2"]:
            raise TwinledgerError("the payload is sealed with its sender's tier-2 key, which this home does not hold",
                                  code="no_tier2_key")  # fmt: skip
        payload = tier2.open(payload, tier2_context(metadata))
    return payload


def tier2_context(metadata: Mapping[str, Any]) -> bytes:
    """The record a tier-2 payload was sealed for, as the node recorded where it came from."""
    stream, _, seq = str(metadata.get("ingest", "")).partition("/")
    try:
        return record_context(bytes.fromhex(stream), int(seq))
    except ValueError:
        raise TwinledgerError("the record does not say which stream and sequence number it came from",
                              code="not_stored") from None
