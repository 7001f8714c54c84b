"""SHA-256 with a domain tag per kind of object, so no hash can stand for another kind."""

from __future__ import annotations

import hashlib
from typing import Any

from twinledger.core.encoding import encode

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)


def tagged_hash(tag: str, *parts: bytes) -> bytes:
    """SHA-256 over a length-prefixed tag followed by the parts."""
    tag_bytes = tag.encode("ascii")
    digest = hashlib.sha256(len(tag_bytes).to_bytes(1, "big") + tag_bytes)
    for part in parts:
        digest.update(part)
    return digest.digest()


def hash_obj(tag: str, value: Any) -> bytes:
    """Tagged hash of the canonical encoding of ``value``."""
    return tagged_hash(tag, encode(value))
