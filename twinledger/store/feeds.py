"""Sensor feeds: signed, hash-linked updates pointing at encrypted segments of samples.

A feed is an item named by its owner key and topic (Dietz et al. §4.3, feeds as in
Swarm). Its owner batches samples into *segments*: 16-byte samples (a microsecond
timestamp and a float64 value), sealed with AES-256-GCM under the feed's data key and
stored as chunks. Each segment gets an owner-signed ``FeedUpdate`` with the next
sequence number, a later time and the hash of the update before; store nodes append
only updates that follow their head, so history is one chain. Now and then the owner
records the head on chain (a checkpoint), after which no one, the owner included, can
rewrite what came before without ``verify_feed`` noticing.

A feed's data key lasts an *epoch*: ``FeedWriter.rotate`` starts a new one (when access
is revoked, so nothing written later opens with a key the revoked party may hold).
Every update names its epoch by the commitment to its key; the ACL keeps the earlier
epochs' capsules and sealed keys, so readers open each segment with its own key.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from twinledger.crypto.keys import EncryptionKey, SigningKey
from twinledger.crypto.seal import seal
from twinledger.errors import DecryptionFailed, TwinledgerError
from twinledger.store.client import StoreClient
from twinledger.store.documents import (
    CapsuleKey,
    Unlock,
    as_reader,
    capsule_generation,
    new_acl,
    new_data_key,
    sealed_key_context,
)
from twinledger.store.items import (
    CHUNK_SIZE,
    MAX_ACL_BYTES,
    Epoch,
    FeedUpdate,
    ItemAcl,
    Reader,
    StoreError,
    chunk_hash,
    item_id,
    key_commitment,
)

log = logging.getLogger("twinledger.store")
SAMPLE = struct.Struct("<qd")
"""A sample: microseconds since the epoch and a float64 value (16 bytes)."""
NONCE_SIZE = 12
MAX_SEGMENT_SAMPLES = (CHUNK_SIZE - NONCE_SIZE - 16) // SAMPLE.size
SEGMENT_AAD = b"twinledger/store/feed-segment/v1"
REFERENCE = re.compile(r"^store:([0-9a-f]{64})$")
CHECKPOINT_EVERY = 60
"""Updates between on-chain checkpoints: once a minute with 1 s segments."""
ACL_REFRESH = 5.0
"""Seconds between a writer's looks for a newer epoch started elsewhere (a revocation)."""
READ_AHEAD = 16
"""Segments a reader fetches at once."""

Sample = tuple[int, float]
Checkpointer = Callable[[FeedUpdate], Awaitable[None]]
"""Records (feed, sequence, head hash) on chain; the writer calls it every few updates."""


class BadSample(StoreError):
    code = "bad_sample"


def sample_problem(samples: Sequence[Sample], after: int = -1) -> str | None:
    """What makes ``samples`` unfit for a feed — a value that is not a finite number, a
    time not after the one before (or after ``after``) — or None."""
    previous = after
    for index, (moment, value) in enumerate(samples):
        if not math.isfinite(value):
            return f"sample {index + 1} (time {moment} µs) has the value {value}, not a finite number"
        if moment <= previous:
            return (f"sample {index + 1} has the time {moment} µs, not after {previous} µs: a feed's samples are "
                    "in strictly increasing time")  # fmt: skip
        previous = moment
    return None


def appendable(samples: Iterable[Sample], after: int) -> tuple[list[Sample], int]:
    """The samples a feed ending at ``after`` can take — finite values, each later than
    the one before — and how many others were left out (for a device, which reads what
    its plant gives: a repeated reading after a restart, a sensor's NaN)."""
    kept: list[Sample] = []
    dropped = 0
    for moment, value in samples:
        if math.isfinite(value) and moment > (kept[-1][0] if kept else after):
            kept.append((moment, value))
        else:
            dropped += 1
    return kept, dropped


def feed_reference(item: bytes) -> str:
    """What the specification contract records for a store feed."""
    return f"store:{item.hex()}"


def parse_feed_reference(reference: str) -> bytes:
    match = REFERENCE.match(reference)
    if match is None:
        raise StoreError(f"{reference[:80]!r} is not a store feed reference (store:<feed id>)", code="not_stored")
    return bytes.fromhex(match[1])


def update_view(update: FeedUpdate) -> dict[str, Any]:
    """An update as JSON, for the CLI and the node's feed event stream."""
    return {"feed": update.feed.hex(), "sequence": update.sequence, "time": update.time, "samples": update.samples,
            "first": update.first, "last": update.last, "hash": update.hash.hex(), "segment": update.segment.hex()}


SharingNow = Callable[[], Awaitable[CapsuleKey | None]]
"""The owner organisation's public sharing key and the feed's twin's access generation, as of now."""


def now_us() -> int:
    return time.time_ns() // 1000


async def create_feed(store: StoreClient, owner: SigningKey, organisation: str, key: EncryptionKey, topic: str,
                      recipients: Mapping[str, bytes], attributes: Sequence[str] = (),
                      sharing: CapsuleKey | None = None) -> ItemAcl:  # fmt: skip
    """``owner``'s feed on ``topic`` (its id is hash(owner key, topic)), readable by
    ``recipients`` (organisation → X25519 key) and the owner's organisation, and with
    ``attributes`` and the organisation's ``sharing`` key by whom it grants access; an
    existing feed of the same owner and topic is returned as it is."""
    item = item_id(owner.public, "feed", topic.encode())
    try:
        return await store.get_acl(item)
    except StoreError as exc:
        if exc.code != "not_found":
            raise
    secret, canonical, capsule = new_data_key(sharing, attributes)
    acl = new_acl(owner, organisation, "feed", topic.encode(), secret, {**recipients, organisation: key.public},
                  canonical, capsule)  # fmt: skip
    await store.put_acl(acl)
    return acl


# -- segments --------------------------------------------------------------------------------------


def _segment_aad(feed: bytes, sequence: int) -> bytes:
    """Binds a segment to its feed and place: a store cannot move it to another update."""
    return SEGMENT_AAD + feed + sequence.to_bytes(8, "big")


def seal_segment(secret: bytes, feed: bytes, sequence: int, samples: Sequence[Sample]) -> bytes:
    """A random nonce per segment: a writer that crashes and seals sequence n again with
    other samples must never reuse a nonce under the feed's key."""
    if not 0 < len(samples) <= MAX_SEGMENT_SAMPLES:
        raise StoreError(f"a segment holds 1 to {MAX_SEGMENT_SAMPLES} samples, not {len(samples)}",
                         code="bad_segment")  # fmt: skip
    nonce = os.urandom(NONCE_SIZE)
    plain = b"".join([SAMPLE.pack(t, v) for t, v in samples])
    return nonce + AESGCM(secret).encrypt(nonce, plain, _segment_aad(feed, sequence))


def open_segment(secret: bytes, update: FeedUpdate, data: bytes) -> list[Sample]:
    """The samples of ``update``'s segment; DecryptionFailed if anything does not match."""
    if chunk_hash(data) != update.segment:
        raise DecryptionFailed()
    try:
        plain = AESGCM(secret).decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], _segment_aad(update.feed, update.sequence))
    except (InvalidTag, ValueError):
        raise DecryptionFailed() from None
    if len(plain) != update.samples * SAMPLE.size:
        raise DecryptionFailed()
    return list(SAMPLE.iter_unpack(plain))


# -- writing ---------------------------------------------------------------------------------------


class FeedWriter:
    """Appends segments to one feed. Samples given to ``extend`` are sealed by ``flush``,
    which the caller runs once per segment period. A segment whose update did not reach
    a write quorum is kept, as signed, and sent again first: retrying never forks the
    feed, and a failed flush loses no sample.

    A shared feed follows its twin's access generation: ``sharing`` tells the current one
    (asked when the writer opens and every ACL_REFRESH seconds of writing), and a feed
    whose key is older gets a new key first — whoever owns it, however long it was
    stopped — so nothing written after a grant ended is under a key that grant covered."""

    def __init__(self, store: StoreClient, owner: SigningKey, acl: ItemAcl, unlock: Unlock, secret: bytes,
                 head: FeedUpdate | None, checkpoint: Checkpointer | None = None,
                 checkpoint_every: int = CHECKPOINT_EVERY, sharing: SharingNow | None = None) -> None:  # fmt: skip
        self.store = store
        self.owner = owner
        self.acl = acl
        self.unlock = unlock
        self.secret = secret
        self.sharing = sharing
        self.generation = capsule_generation(acl.capsule)
        """The generation of the current key's capsule (None: the feed has no capsule)."""
        self._acl_checked = time.monotonic()
        self.head = head
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.checkpointed = head.sequence if head is not None else -1
        self._pending: list[Sample] = []
        self._unsent: list[tuple[FeedUpdate, bytes]] = []
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, store: StoreClient, owner: SigningKey, organisation: str, key: EncryptionKey, feed: bytes,
                   checkpoint: Checkpointer | None = None, checkpoint_every: int = CHECKPOINT_EVERY,
                   sharing: SharingNow | None = None) -> FeedWriter:  # fmt: skip
        """The writer of ``owner``'s ``feed``, continuing from the newest stored head, with a
        new key first if its twin's access generation moved on; ``sharing`` (the
        organisation's public sharing key and the generation) is needed to rotate its key."""
        acl = await store.get_acl(feed)
        if acl.kind != "feed" or acl.owner != owner.public:
            raise StoreError(f"item {feed.hex()[:16]}… is not a feed of this key; only its owner appends",
                             code="not_item_owner")  # fmt: skip
        unlock = as_reader(organisation, key)
        writer = cls(store, owner, acl, unlock, await unlock(acl, None), await store.feed_head(acl), checkpoint,
                     checkpoint_every, sharing)  # fmt: skip
        await writer.follow_generation()
        return writer

    @property
    def feed(self) -> bytes:
        return self.acl.item

    @property
    def end(self) -> int:
        """The time of the last sample appended (-1: none yet): the next must be later."""
        if self._pending:
            return self._pending[-1][0]
        return self.head.last if self.head is not None else -1

    def extend(self, samples: Iterable[Sample]) -> None:
        """Queue samples for the next flush: finite values at strictly increasing times
        after ``end`` (BadSample otherwise, and none of them is taken)."""
        batch = list(samples)
        problem = sample_problem(batch, self.end)
        if problem is not None:
            raise BadSample(problem)
        self._pending.extend(batch)

    async def flush(self) -> list[FeedUpdate]:
        """Seal what was added into segments and append them; returns the new updates.
        Raises if a segment found no write quorum (it stays queued)."""
        async with self._lock:
            if self._pending and time.monotonic() - self._acl_checked >= ACL_REFRESH:
                await self._refresh()
                await self._follow_generation()
            while self._pending:
                batch = self._pending[:MAX_SEGMENT_SAMPLES]
                self._unsent.append(self._sealed(batch))
                del self._pending[: len(batch)]
            written = []
            while self._unsent:
                update, segment = self._unsent[0]
                await self.store.put_chunk(self.feed, segment, self.acl)
                await self.store.put_feed_update(self.acl, update)
                self._unsent.pop(0)
                written.append(update)
            if written and self.head is not None and self.head.sequence - self.checkpointed >= self.checkpoint_every:
                try:
                    await self.record_checkpoint()
                except TwinledgerError as exc:  # the samples are stored; the next flush tries again
                    log.warning("checkpoint of feed %s failed: %s", self.feed.hex()[:16], exc.message)
            return written

    def _sealed(self, samples: list[Sample]) -> tuple[FeedUpdate, bytes]:
        """The next update with its segment; it becomes the head at once, so the segment
        after it links to it even before both are written."""
        head = self.head
        sequence = head.sequence + 1 if head is not None else 0
        segment = seal_segment(self.secret, self.feed, sequence, samples)
        times = [t for t, _ in samples]
        update = FeedUpdate(self.feed, sequence, max(now_us(), head.time + 1 if head is not None else 0),
                            head.hash if head is not None else bytes(32), chunk_hash(segment), len(samples),
                            min(times), max(times), key_commitment(self.secret)).signed(self.owner)  # fmt: skip
        self.head = update
        return update, segment

    async def _refresh(self) -> None:
        """Adopt a newer epoch another writer of the owner started (``twinledger revoke``)."""
        acl = await self.store.get_acl(self.feed)
        self._acl_checked = time.monotonic()
        if acl.version > self.acl.version and acl.owner == self.acl.owner:
            self.acl, self.secret = acl, await self.unlock(acl, None)
            self.generation = capsule_generation(acl.capsule)

    async def follow_generation(self) -> bool:
        """Give the feed a new key if its twin's access generation moved past its key's;
        True if it did."""
        async with self._lock:
            return await self._follow_generation()

    async def _follow_generation(self) -> bool:
        if self.sharing is None or not self.acl.capsule:
            return False
        now = await self.sharing()
        if now is None or (self.generation is not None and self.generation >= now.generation):
            return False
        await self._rotate(now)
        return True

    async def rotate(self) -> ItemAcl:
        """Start a new epoch: a fresh data key, sealed to the same named readers and
        KP-CPRE-encrypted under the same attributes and the twin's generation now, for
        everything sealed from now on. The old key moves to the ACL's retired epochs, so
        history stays readable to whoever could read it."""
        async with self._lock:
            return await self._rotate(await self.sharing() if self.sharing is not None else None)

    async def _rotate(self, sharing: CapsuleKey | None) -> ItemAcl:
        old = self.acl
        if old.capsule and sharing is None:
            raise StoreError("rotating a shared feed's key needs the organisation's sharing key", code="no_sharing_key")
        secret, _, capsule = new_data_key(sharing, old.attributes)
        context = sealed_key_context(old.item)
        readers = tuple(Reader(r.organisation, r.key, seal(r.key, secret, context)) for r in old.readers)
        retired = (*old.retired, Epoch(key_commitment(self.secret), old.capsule, old.readers))
        acl = replace(old, version=old.version + 1, readers=readers, capsule=capsule, retired=retired,
                      issued=int(time.time() * 1000), signature=b"").signed(self.owner)  # fmt: skip
        if len(acl.encoded()) > MAX_ACL_BYTES:
            raise StoreError(f"feed {self.feed.hex()[:16]}… has changed its key {len(retired)} times and its ACL is "
                             "full; start a new feed", code="acl_full")  # fmt: skip
        await self.store.put_acl(acl)
        self.acl, self.secret = acl, secret
        self.generation = sharing.generation if capsule and sharing is not None else None
        self._acl_checked = time.monotonic()
        return acl

    async def record_checkpoint(self) -> None:
        """Record the head on chain now (``flush`` does every ``checkpoint_every`` updates,
        and tries again at the next flush if the chain could not be reached)."""
        if self.checkpoint is None or self.head is None or self._unsent or self.head.sequence == self.checkpointed:
            return
        await self.checkpoint(self.head)
        self.checkpointed = self.head.sequence

    async def close(self) -> None:
        """Flush what is left and checkpoint the head."""
        await self.flush()
        await self.record_checkpoint()


async def rotate_feed(store: StoreClient, owner: SigningKey, organisation: str, key: EncryptionKey, feed: bytes,
                      sharing: SharingNow | None) -> ItemAcl:  # fmt: skip
    """Start a new epoch of ``owner``'s ``feed`` (see ``FeedWriter.rotate``): one, in the
    twin's current generation."""
    writer = await FeedWriter.open(store, owner, organisation, key, feed)  # not following: rotate makes the one epoch
    writer.sharing = sharing
    return await writer.rotate()


# -- reading ---------------------------------------------------------------------------------------


class EpochKeys:
    """The data keys of a feed's epochs, unlocked once each as updates name them."""

    def __init__(self, store: StoreClient, acl: ItemAcl, unlock: Unlock) -> None:
        self.store, self.acl, self.unlock = store, acl, unlock
        self._keys: dict[bytes, bytes] = {}
        self._unlocking = asyncio.Lock()  # segments fetched at once ask a proxy once per epoch

    async def get(self, update: FeedUpdate) -> bytes:
        commitment = update.key_commitment
        if commitment in self._keys:
            return self._keys[commitment]
        async with self._unlocking:
            return await self._unlock(commitment, update)

    async def _unlock(self, commitment: bytes, update: FeedUpdate) -> bytes:
        if commitment not in self._keys:
            try:
                secret: bytes | None = await self.unlock(self.acl, commitment)
            except StoreError as exc:  # a proxy checks the key against the commitment itself
                if exc.code != "bad_proxy":
                    raise
                secret = None
            if secret is None or key_commitment(secret) != commitment:  # a newer epoch than this ACL copy knows
                self.acl = await self.store.get_acl(self.acl.item)
                secret = await self.unlock(self.acl, commitment)
            if key_commitment(secret) != commitment:
                raise StoreError(f"update {update.sequence} is sealed under a data key the feed's ACL does not hold",
                                 code="wrong_key")  # fmt: skip
            self._keys[commitment] = secret
        return self._keys[commitment]


@dataclass(frozen=True)
class Segment:
    update: FeedUpdate
    samples: list[Sample]


class FeedReader:
    """Reads a feed as one of its reader organisations: updates checked against the
    owner's signature and each other, segments against their hash and key."""

    def __init__(self, store: StoreClient, acl: ItemAcl, unlock: Unlock) -> None:
        self.store, self.acl = store, acl
        self.keys = EpochKeys(store, acl, unlock)

    @classmethod
    async def open(cls, store: StoreClient, feed: bytes, unlock: Unlock) -> FeedReader:
        acl = await store.get_acl(feed)
        if acl.kind != "feed":
            raise StoreError(f"item {feed.hex()[:16]}… is a {acl.kind}, not a feed", code="not_a_feed")
        return cls(store, acl, unlock)

    async def segment(self, update: FeedUpdate) -> Segment:
        secret = await self.keys.get(update)
        return Segment(update, open_segment(secret, update, await self.store.get_chunk(self.acl.item, update.segment)))

    async def history(self, after: int = -1, until_sequence: int | None = None, since: int | None = None,
                      until: int | None = None) -> AsyncIterator[Segment]:  # fmt: skip
        """Segments after sequence ``after`` (up to ``until_sequence``), or those whose
        samples overlap [``since``, ``until``] microseconds, oldest first; up to
        ``READ_AHEAD`` segments are fetched at once, so a feed of many small segments
        reads at the store's speed rather than one round trip at a time."""
        while True:
            updates = await self.store.feed_updates(self.acl, after, since=since, until=until)
            wanted = [u for u in updates if until_sequence is None or u.sequence <= until_sequence]
            async with contextlib.aclosing(self._in_order(wanted)) as pieces:  # a reader stopping early stops them
                async for segment in pieces:
                    yield segment
            if not updates or len(wanted) < len(updates):
                return
            after = updates[-1].sequence

    async def _in_order(self, updates: list[FeedUpdate]) -> AsyncIterator[Segment]:
        """The updates' segments in their order, fetched ``READ_AHEAD`` at a time."""
        fetching: collections.deque[asyncio.Task[Segment]] = collections.deque()
        try:
            for update in updates:
                fetching.append(asyncio.ensure_future(self.segment(update)))
                if len(fetching) >= READ_AHEAD:
                    yield await fetching.popleft()
            while fetching:
                yield await fetching.popleft()
        finally:  # a reader that stops early (or fails) leaves nothing running
            for task in fetching:
                task.cancel()
            await asyncio.gather(*fetching, return_exceptions=True)

    async def latest(self) -> Segment | None:
        head = await self.store.feed_head(self.acl)
        return await self.segment(head) if head is not None else None

    async def follow(self, after: int = -1, wait: float = 15.0) -> AsyncIterator[Segment]:
        """Segments after ``after`` as they arrive (a long poll on the feed's replica:
        the store answers the moment an update lands)."""
        while True:
            for update in await self.store.feed_updates(self.acl, after, wait=wait):
                yield await self.segment(update)
                after = update.sequence
