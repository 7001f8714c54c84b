"""The TCP ingest protocol: records from plant-floor programs to a node (docs/ingest-protocol.md).

A frame is a 4-byte big-endian length and the canonical encoding of a map with a
``type``. The client opens mutual TLS (tier 1) with a certificate of the node's own
organisation, says ``hello`` for one *stream*, then sends ``record`` frames numbered
1, 2, 3 … within the stream. The node answers each with ``ack`` once the payload is in
the store (write quorum) and its ``records.put`` transaction is committed, or with
``rejected``; ``busy`` says a record is held up; ``error`` ends the connection.

This module is the pure part: message shapes, their checks, and the named errors.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.contracts.arguments import MAX_TEXT
from twinledger.contracts.records import MAX_METADATA_ENTRIES
from twinledger.core.encoding import decode, encode
from twinledger.crypto.policy import MAX_ATTRIBUTES
from twinledger.errors import DecodeError, TwinledgerError

PROTOCOL = "twinledger-ingest/1"
STREAM_BYTES = 16
DEFAULT_WINDOW = 256
"""Records a client may have sent and not yet seen answered."""
DEFAULT_MAX_RECORD = 16 << 20
FRAME_OVERHEAD = 64 << 10
"""Room in a frame for everything but the payload: the largest metadata fits."""
RESERVED_METADATA = ("ingest", "store", "part")
"""Metadata the node writes itself; a client may not set them."""

CLIENT_MESSAGES = frozenset({"hello", "record"})
NODE_MESSAGES = frozenset({"welcome", "ack", "rejected", "busy", "error"})


class IngestError(TwinledgerError):
    """A refusal the protocol names; ``fatal`` ones end the connection."""

    code = "ingest"
    fatal = True


class RecordRejected(IngestError):
    """One record is not taken; the stream goes on."""

    code = "record_invalid"
    fatal = False


def max_frame(max_record: int) -> int:
    return max_record + FRAME_OVERHEAD


def frame(message: dict[str, Any]) -> bytes:
    payload = encode(message)
    return len(payload).to_bytes(4, "big") + payload


async def read_message(reader: asyncio.StreamReader, limit: int, expected: frozenset[str]) -> dict[str, Any]:
    """The next message; IngestError names a frame that is too large, undecodable, not
    a map, or of a type this side does not expect. IncompleteReadError at the end."""
    length = int.from_bytes(await reader.readexactly(4), "big")
    if length > limit:
        raise IngestError(f"a frame of {length} bytes exceeds the limit of {limit} bytes "
                          f"(records may hold {limit - FRAME_OVERHEAD} bytes)", code="frame_too_large")  # fmt: skip
    raw = await reader.readexactly(length)
    try:
        message = decode(raw, max_size=limit)
    except DecodeError as exc:
        raise IngestError(f"undecodable frame: {exc.message}", code="malformed_frame") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise IngestError("a frame must be a map with a string type", code="malformed_frame")
    if message["type"] not in expected:
        raise IngestError(f"unexpected message type {message['type'][:40]!r} (expected one of "
                          f"{', '.join(sorted(expected))})", code="unknown_message")  # fmt: skip
    return message


@dataclass(frozen=True)
class Hello:
    stream: bytes
    organisation_certificate: bytes
    attributes: tuple[str, ...] = ()
    """What the stream's records are shared under (empty: private to the organisation)."""


def parse_hello(message: Mapping[str, Any]) -> Hello:
    if message.get("type") != "hello":
        raise IngestError("the first message must be hello", code="handshake")
    if message.get("protocol") != PROTOCOL:
        raise IngestError(f"this node speaks {PROTOCOL}, not {str(message.get('protocol'))[:40]!r}",
                          code="protocol_version")  # fmt: skip
    stream, certificate = message.get("stream"), message.get("organisation_certificate")
    if not isinstance(stream, bytes) or len(stream) != STREAM_BYTES:
        raise IngestError(f"hello: stream must be {STREAM_BYTES} bytes", code="malformed_frame")
    if not isinstance(certificate, bytes):
        raise IngestError("hello: organisation_certificate must be DER bytes", code="malformed_frame")
    attributes = message.get("attributes", [])
    if not isinstance(attributes, list) or len(attributes) > MAX_ATTRIBUTES or \
            not all(isinstance(a, str) for a in attributes):  # fmt: skip
        raise IngestError(f"hello: attributes must be a list of at most {MAX_ATTRIBUTES} strings",
                          code="attributes_invalid")  # fmt: skip
    return Hello(stream, certificate, tuple(attributes))


@dataclass(frozen=True)
class IngestRecord:
    seq: int
    payload: bytes
    media_type: str
    metadata: dict[str, str]

    @property
    def digest(self) -> bytes:
        """What a resent record must match to be the same record."""
        return hashlib.sha256(encode([self.payload, self.media_type, self.metadata])).digest()


def record_seq(message: Mapping[str, Any]) -> int:
    seq = message.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise IngestError("record: seq must be an integer from 1", code="malformed_frame")
    return seq


def parse_record(message: Mapping[str, Any], max_record: int) -> IngestRecord:
    """A record frame's record; anything wrong rejects only this record (a wrong seq,
    checked first with ``record_seq``, is fatal: no answer could name the record)."""
    seq = record_seq(message)
    payload = message.get("payload")
    if not isinstance(payload, bytes):
        raise RecordRejected(f"record {seq}: payload must be bytes")
    if len(payload) > max_record:
        raise RecordRejected(f"record {seq}: payload of {len(payload)} bytes exceeds the node's limit of "
                             f"{max_record} bytes", code="record_too_large")  # fmt: skip
    media_type = message.get("media_type", "application/octet-stream")
    if not isinstance(media_type, str) or not 0 < len(media_type) <= MAX_TEXT:
        raise RecordRejected(f"record {seq}: media_type must be a short string")
    metadata = message.get("metadata", {})
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_ENTRIES - len(RESERVED_METADATA):
        raise RecordRejected(f"record {seq}: metadata must be a map of at most "
                             f"{MAX_METADATA_ENTRIES - len(RESERVED_METADATA)} entries")  # fmt: skip
    for key, value in metadata.items():
        if not isinstance(value, str) or not key or len(key) > MAX_TEXT or len(value) > MAX_TEXT:
            raise RecordRejected(f"record {seq}: metadata {str(key)[:40]!r} must map a short string to a short string")
        if key in RESERVED_METADATA:
            raise RecordRejected(f"record {seq}: metadata {key!r} is set by the node")
    return IngestRecord(seq, payload, media_type, dict(metadata))


def record_message(record: IngestRecord) -> dict[str, Any]:
    return {"type": "record", "seq": record.seq, "payload": record.payload, "media_type": record.media_type,
            "metadata": record.metadata}  # fmt: skip


def error_message(exc: TwinledgerError, seq: int | None = None) -> dict[str, Any]:
    if seq is not None:
        return {"type": "rejected", "seq": seq, "code": exc.code, "message": exc.message}
    return {"type": "error", "code": exc.code, "message": exc.message}
