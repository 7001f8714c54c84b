"""The peer-to-peer wire format: length-prefixed frames of canonical maps.

A frame is a 4-byte big-endian length and the canonical encoding of
``{"v": PROTOCOL_VERSION, "type": <message type>, "body": <map>}``. A peer speaking
another version, an unknown type, an oversized or non-canonical frame is an error that
ends the connection; it never reaches the ledger.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from twinledger.core.encoding import decode, encode
from twinledger.core.types import MAX_BLOCK_BYTES
from twinledger.errors import DecodeError

PROTOCOL_VERSION = 1
MAX_FRAME = MAX_BLOCK_BYTES + (1 << 20)

MESSAGE_TYPES = frozenset(
    {
        "hello",  # identity check and what the sender is: chain, listen address, height
        "peers",  # peer exchange: addresses the sender knows
        "status",  # the sender's committed height, sent periodically
        "txs",  # gossip: submitted transactions
        "proposal",  # gossip: a signed proposal with its block
        "vote",  # gossip: a signed prevote or precommit
        "get_blocks",  # block sync: ask for committed blocks from a height
        "blocks",  # block sync: committed blocks with their commit certificates
    }
)


@dataclass(frozen=True)
class Frame:
    type: str
    body: dict[str, Any]
    raw: bytes
    """The frame's payload bytes, the identity used to de-duplicate gossip."""


def encode_frame(message_type: str, body: dict[str, Any]) -> bytes:
    assert message_type in MESSAGE_TYPES
    payload = encode({"v": PROTOCOL_VERSION, "type": message_type, "body": body})
    if len(payload) > MAX_FRAME:
        raise DecodeError(f"{message_type} message of {len(payload)} bytes exceeds the frame limit")
    return len(payload).to_bytes(4, "big") + payload


def parse_frame(payload: bytes) -> Frame:
    message = decode(payload, max_size=MAX_FRAME)
    if not isinstance(message, dict) or set(message) != {"v", "type", "body"}:
        raise DecodeError("frame: expected a map of v, type and body")
    if message["v"] != PROTOCOL_VERSION:
        raise DecodeError(f"frame: protocol version {message['v']!r}, this node speaks {PROTOCOL_VERSION}")
    if message["type"] not in MESSAGE_TYPES:
        raise DecodeError(f"frame: unknown message type {str(message['type'])[:40]!r}")
    if not isinstance(message["body"], dict):
        raise DecodeError("frame: body must be a map")
    return Frame(message["type"], message["body"], payload)


async def read_payload(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> bytes:
    """The next frame's payload, undecoded (so gossip seen before is dropped unparsed)."""
    length = int.from_bytes(await reader.readexactly(4), "big")
    if length > limit:
        raise DecodeError(f"frame of {length} bytes exceeds the limit of {limit}")
    return await reader.readexactly(length)


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; raises DecodeError for a bad frame, IncompleteReadError at the end."""
    return parse_frame(await read_payload(reader))
