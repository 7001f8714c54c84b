"""Merkle trees over transaction hashes (RFC 6962 shape, domain-separated leaves and nodes).

The tree splits at the largest power of two below n, so no leaf is ever duplicated
(the Bitcoin CVE-2012-2459 ambiguity cannot arise) and an inclusion proof is the
RFC 6962 audit path for (index, tree size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from twinledger.errors import InvalidProof

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_PATH = 64


def leaf_hash(item: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + item).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(items: Sequence[bytes]) -> bytes:
    """Root over the given items (each hashed as a leaf); the empty tree has EMPTY_ROOT."""
    if not items:
        return EMPTY_ROOT
    level = [leaf_hash(item) for item in items]
    return _root_of_hashes(level)


def _root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(_root_of_hashes(hashes[:k]), _root_of_hashes(hashes[k:]))


def merkle_path(items: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path for item ``index``: sibling hashes from the leaf up to the root."""
    if not 0 <= index < len(items):
        raise IndexError(f"index {index} outside a tree of {len(items)} items")
    return _path([leaf_hash(item) for item in items], index)


def _path(hashes: Sequence[bytes], index: int) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return _path(hashes[:k], index) + [_root_of_hashes(hashes[k:])]
    return _path(hashes[k:], index - k) + [_root_of_hashes(hashes[:k])]


def root_from_path(item: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """Recompute the root from an item and its audit path (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise InvalidProof(f"leaf index {index} is outside a tree of {size} leaves")
    if len(path) > MAX_PATH or any(len(h) != 32 for h in path):
        raise InvalidProof("malformed Merkle path")
    fn, sn = index, size - 1
    r = leaf_hash(item)
    for sibling in path:
        if sn == 0:
            raise InvalidProof("Merkle path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(sibling, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("Merkle path is shorter than the tree is deep")
    return r
