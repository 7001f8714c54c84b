"""The signed and hashed objects of the off-chain store.

An *item* is what an ACL protects: a document (its manifest and encrypted chunks) or a
sensor feed (its signed updates and their encrypted segments). Its ACL is signed by the
item's owner key and versioned; a store node takes a newer version only with the same
owner's signature. Each reader entry carries the item's data key sealed to that
organisation's X25519 key, so the ACL is also the paper's list of encrypted access keys
(Dietz et al. §4.2). It may also carry the item's public attributes and the data key
KP-CPRE-encrypted for the owner organisation (a *capsule*): organisations the owner
granted access to read through a proxy that re-encrypts the capsule (docs/sharing.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from twinledger.core.attributes import twin_attribute
from twinledger.core.encoding import decode, encode, from_obj, to_obj
from twinledger.core.hashing import hash_obj
from twinledger.crypto.keys import SigningKey, verify_signature
from twinledger.crypto.policy import Policy, PolicyError, attribute_set, satisfied
from twinledger.crypto.policy import from_obj as policy_from_obj
from twinledger.errors import DecodeError, TwinledgerError

ACL_TAG = "twinledger/store/acl/v1"
ITEM_TAG = "twinledger/store/item/v1"
KEY_COMMITMENT_TAG = "twinledger/store/data-key/v1"
FEED_UPDATE_TAG = "twinledger/store/feed-update/v1"
FEED_HEAD_TAG = "twinledger/store/feed-head/v1"
MAX_FEED_UPDATE_BYTES = 1024
ITEM_KINDS = ("document", "feed")
MAX_READERS = 64
MAX_ACL_BYTES = 64 * 1024
MAX_CAPSULE_BYTES = 16 * 1024
MAX_CHUNKS = 1 << 20
CHUNK_SIZE = 1 << 20
"""Plaintext bytes per document chunk."""


class StoreError(TwinledgerError):
    code = "store"


class AccessDenied(StoreError):
    code = "access_denied"
    http_status = 403


def chunk_hash(data: bytes) -> bytes:
    """A chunk's address: plain SHA-256, so any tool can check a chunk."""
    return hashlib.sha256(data).digest()


def item_id(owner: bytes, kind: str, label: bytes) -> bytes:
    """Items are named by their owner key, so no one can claim another owner's item id;
    a feed's label is its topic, so its id is hash(owner key, topic)."""
    return hash_obj(ITEM_TAG, [owner, kind, label])


def key_commitment(data_key: bytes) -> bytes:
    """Binds a manifest to one data key: AES-GCM alone would let an uploader give two
    readers two keys that decrypt the same ciphertext to different plaintexts."""
    return hash_obj(KEY_COMMITMENT_TAG, data_key)


@dataclass(frozen=True)
class Reader:
    organisation: str
    key: bytes
    """The organisation's X25519 key the data key is sealed to."""
    sealed_key: bytes


@dataclass(frozen=True)
class Epoch:
    """A data key an item used before its current one (a feed's key is replaced when
    access is revoked): its commitment, capsule and named readers' sealed copies."""

    commitment: bytes
    capsule: bytes
    readers: tuple[Reader, ...]


@dataclass(frozen=True)
class ItemAcl:
    item: bytes
    kind: str
    owner: bytes
    """The Ed25519 key that signs every version of the ACL (and a feed's updates)."""
    owner_organisation: str
    label: bytes
    """With ``owner`` and ``kind``, what the item id is derived from (``item_id``)."""
    version: int
    readers: tuple[Reader, ...]
    issued: int
    """Milliseconds since the epoch."""
    attributes: tuple[str, ...] = ()
    """Public attributes of the data (twin, kind, component, …): what grants' policies are checked against."""
    capsule: bytes = b""
    """The data key, KP-CPRE-encrypted for the owner organisation under ``attributes`` (docs/sharing.md)."""
    retired: tuple[Epoch, ...] = ()
    """Earlier data keys, oldest first; ``readers`` and ``capsule`` hold the current one."""
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return hash_obj(ACL_TAG, to_obj(replace(self, signature=b"")))

    def signed(self, key: SigningKey) -> ItemAcl:
        if key.public != self.owner:
            raise StoreError("an ACL is signed by its owner key", code="bad_acl")
        return replace(self, signature=key.sign(self.signing_bytes()))

    def encoded(self) -> bytes:
        return encode(to_obj(self))

    def allows(self, organisation: str) -> bool:
        return organisation == self.owner_organisation or any(r.organisation == organisation for r in self.readers)

    def reader(self, organisation: str) -> Reader | None:
        return next((r for r in self.readers if r.organisation == organisation), None)

    def epoch(self, commitment: bytes | None) -> Epoch:
        """The retired epoch whose data key has ``commitment``; else (None, or a commitment
        not retired) the current one, whose commitment only the data key itself tells."""
        for epoch in self.retired:
            if epoch.commitment == commitment:
                return epoch
        return Epoch(b"", self.capsule, self.readers)


@dataclass(frozen=True)
class ReadGrant:
    """A grant as store nodes enforce it: ``recipient`` reads ``owner``'s items of ``twin``
    whose attributes satisfy ``policy``, until ``valid_until`` (ms; 0: no end)."""

    owner: str
    recipient: str
    twin: str
    policy: Policy
    valid_until: int

    @classmethod
    def of(cls, grant: Mapping[str, Any]) -> ReadGrant:
        """From a grant as the sharing contract stores it (or the API lists it)."""
        return cls(grant["owner"], grant["recipient"], grant["twin"], policy_from_obj(grant["policy"]), grant["valid_until"])

    def covers(self, acl: ItemAcl, organisation: str, now_ms: int) -> bool:
        return (organisation == self.recipient and acl.owner_organisation == self.owner
                and (not self.valid_until or now_ms < self.valid_until)
                and twin_attribute(self.twin) in acl.attributes and satisfied(self.policy, acl.attributes))  # fmt: skip


def decode_acl(raw: bytes) -> ItemAcl:
    """A well-formed ACL with a valid owner signature, or StoreError naming what is wrong."""
    if len(raw) > MAX_ACL_BYTES:
        raise StoreError(f"ACL of {len(raw)} bytes exceeds {MAX_ACL_BYTES}", code="bad_acl")
    try:
        acl = from_obj(ItemAcl, decode(raw), "acl")
    except DecodeError as exc:
        raise StoreError(f"malformed ACL: {exc.message}", code="bad_acl") from None
    if len(acl.owner) != 32 or acl.kind not in ITEM_KINDS or acl.version < 1 or len(acl.label) > 256:
        raise StoreError("malformed ACL: a 32-byte owner, kind document or feed, version from 1",
                         code="bad_acl")  # fmt: skip
    names = [r.organisation for r in acl.readers]
    if len(names) > MAX_READERS or len(set(names)) != len(names) or any(len(r.key) != 32 for r in acl.readers):
        raise StoreError(f"malformed ACL: at most {MAX_READERS} distinct readers with 32-byte keys", code="bad_acl")
    try:
        canonical = attribute_set(acl.attributes) if acl.attributes else ()
    except PolicyError as exc:
        raise StoreError(f"malformed ACL: {exc.message}", code="bad_acl") from None
    if canonical != acl.attributes or len(acl.capsule) > MAX_CAPSULE_BYTES or (acl.capsule and not acl.attributes):
        raise StoreError("malformed ACL: attributes must be a sorted set, and a capsule needs them", code="bad_acl")
    commitments = [epoch.commitment for epoch in acl.retired]
    if len(set(commitments)) != len(commitments) or any(
            len(epoch.commitment) != 32 or len(epoch.capsule) > MAX_CAPSULE_BYTES or len(epoch.readers) > MAX_READERS
            or any(len(r.key) != 32 for r in epoch.readers) for epoch in acl.retired):  # fmt: skip
        raise StoreError("malformed ACL: retired epochs need distinct 32-byte commitments", code="bad_acl")
    if acl.item != item_id(acl.owner, acl.kind, acl.label):
        raise StoreError("malformed ACL: the item id is not derived from its owner and label", code="bad_acl")
    if not verify_signature(acl.owner, acl.signing_bytes(), acl.signature):
        raise StoreError("ACL signature does not verify against its owner key", code="bad_signature")
    return acl


@dataclass(frozen=True)
class Manifest:
    """A document's table of contents; its hash is what the chain records."""

    size: int
    chunk_size: int
    chunks: tuple[bytes, ...]
    key_commitment: bytes
    cipher: str = "aes-256-gcm"

    def encoded(self) -> bytes:
        return encode(to_obj(self))


def decode_manifest(raw: bytes) -> Manifest:
    try:
        manifest = from_obj(Manifest, decode(raw), "manifest")
    except DecodeError as exc:
        raise StoreError(f"malformed manifest: {exc.message}", code="bad_manifest") from None
    expected = -(-manifest.size // manifest.chunk_size) if manifest.chunk_size > 0 else -1
    if (manifest.cipher != "aes-256-gcm" or manifest.size < 0 or manifest.chunk_size < 1
            or len(manifest.chunks) != max(expected, 1) or any(len(c) != 32 for c in manifest.chunks)):  # fmt: skip
        raise StoreError("malformed manifest: its chunk count does not match its size", code="bad_manifest")
    return manifest


@dataclass(frozen=True)
class FeedUpdate:
    """One step of a feed: the owner's signed statement that ``segment`` holds the samples
    between ``first`` and ``last``, following the update whose hash is ``previous``. The
    hash chain makes the history one sequence no store can reorder or thin out unseen."""

    feed: bytes
    sequence: int
    time: int
    """Microseconds since the epoch when the owner made the update; strictly increasing."""
    previous: bytes
    """The hash of update ``sequence - 1``; 32 zero bytes for the first update."""
    segment: bytes
    """The chunk hash of the encrypted segment."""
    samples: int
    first: int
    last: int
    """The times of the segment's first and last sample (microseconds)."""
    key_commitment: bytes
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return hash_obj(FEED_UPDATE_TAG, to_obj(replace(self, signature=b"")))

    def signed(self, key: SigningKey) -> FeedUpdate:
        return replace(self, signature=key.sign(self.signing_bytes()))

    def encoded(self) -> bytes:
        return encode(to_obj(self))

    @property
    def hash(self) -> bytes:
        """What the next update's ``previous`` and an on-chain checkpoint's head name."""
        return hash_obj(FEED_HEAD_TAG, to_obj(self))


def decode_feed_update(raw: bytes, owner: bytes) -> FeedUpdate:
    """A well-formed update signed by ``owner``, or StoreError naming what is wrong."""
    if not isinstance(raw, bytes) or len(raw) > MAX_FEED_UPDATE_BYTES:
        raise StoreError(f"a feed update is a byte string of at most {MAX_FEED_UPDATE_BYTES} bytes", code="bad_update")
    try:
        update = from_obj(FeedUpdate, decode(raw), "feed update")
    except DecodeError as exc:
        raise StoreError(f"malformed feed update: {exc.message}", code="bad_update") from None
    if (any(len(value) != 32 for value in (update.feed, update.previous, update.segment, update.key_commitment))
            or not 0 <= update.sequence < 1 << 62 or not 0 < update.samples <= MAX_CHUNKS
            or not 0 <= update.first <= update.last or update.time < 0):  # fmt: skip
        raise StoreError("malformed feed update: 32-byte hashes, a sequence from 0, at least one sample",
                         code="bad_update")  # fmt: skip
    if (update.sequence == 0) != (update.previous == bytes(32)):
        raise StoreError("malformed feed update: only the first update has no previous one", code="bad_update")
    if not verify_signature(owner, update.signing_bytes(), update.signature):
        raise StoreError("feed update signature does not verify against the feed owner's key", code="bad_signature")
    return update


def check_successor(head: FeedUpdate | None, update: FeedUpdate) -> None:
    """Whether ``update`` may follow ``head`` (None: the feed is empty); raises StoreError
    with code out_of_order otherwise. Replays are told apart by the caller, who holds
    the update already stored at that sequence."""
    if head is None:
        if update.sequence != 0:
            raise StoreError(f"update {update.sequence} does not follow: this node holds none of the feed yet",
                             code="out_of_order")  # fmt: skip
        return
    if update.sequence != head.sequence + 1:
        raise StoreError(f"update {update.sequence} does not follow the head, update {head.sequence}",
                         code="out_of_order")  # fmt: skip
    if update.previous != head.hash:
        raise StoreError(f"update {update.sequence} names another previous update than the stored one",
                         code="out_of_order")  # fmt: skip
    if update.time <= head.time:
        raise StoreError(f"update {update.sequence} is not later than update {head.sequence}", code="out_of_order")
    if update.first <= head.last:
        raise StoreError(f"the samples of update {update.sequence} start at {update.first} µs, not after those of "
                         f"update {head.sequence} ({head.last} µs)", code="out_of_order")  # fmt: skip
