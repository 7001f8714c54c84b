"""Documents end to end: streamed, chunked, encrypted, replicated, and read back verified.

A document is an item. Its file is read one chunk at a time (never whole in memory),
each chunk sealed with AES-256-GCM under a fresh data key (the nonce is the chunk's
index, the AAD says whether it is the last), and stored by the hash of its ciphertext.
The manifest lists the chunk hashes and commits to the data key; its hash is what the
specification contract records. The data key is sealed to each reader organisation's
X25519 key inside the item's owner-signed ACL.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from twinledger.core.attributes import GENERATION, generation_of, with_generation, without_generation
from twinledger.core.files import create_fresh
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import EncryptionKey, SigningKey
from twinledger.crypto.seal import seal, unseal
from twinledger.errors import DecryptionFailed
from twinledger.store.client import StoreClient
from twinledger.store.items import (
    CHUNK_SIZE,
    AccessDenied,
    ItemAcl,
    Manifest,
    Reader,
    StoreError,
    decode_manifest,
    item_id,
    key_commitment,
)

DATA_KEY_CONTEXT = b"twinledger/store/data-key/v1"
CHUNK_AAD = b"twinledger/store/document-chunk/v1"
IN_FLIGHT = 8
"""Chunks uploaded or fetched at once."""
REFERENCE = re.compile(r"^store:([0-9a-f]{64})/([0-9a-f]{64})$")

Progress = Callable[[int], None]
"""Called with the number of plaintext bytes just done."""
Unlock = Callable[[ItemAcl, bytes | None], Awaitable[bytes]]
"""Gives the data key with a commitment (None: the current one) of the item an ACL
protects: as a named reader, or through a grant."""


@dataclass(frozen=True)
class StoredDocument:
    item: bytes
    manifest: bytes
    """The manifest's hash: the document's hash on the chain."""
    size: int
    chunks: int
    readers: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"store:{self.item.hex()}/{self.manifest.hex()}"


def parse_reference(reference: str) -> tuple[bytes, bytes]:
    """(item, manifest hash) of a ``store:`` reference."""
    match = REFERENCE.match(reference)
    if match is None:
        raise StoreError(f"{reference[:80]!r} is not a store reference (store:<item>/<manifest>)", code="not_stored")
    return bytes.fromhex(match[1]), bytes.fromhex(match[2])


def sealed_key_context(item: bytes) -> bytes:
    return DATA_KEY_CONTEXT + item


def new_acl(owner: SigningKey, organisation: str, kind: str, label: bytes, data_key: bytes,
            recipients: Mapping[str, bytes], attributes: tuple[str, ...] = (), capsule: bytes = b"") -> ItemAcl:  # fmt: skip
    """Version 1 of an item's ACL: the data key sealed to every recipient organisation,
    and its capsule (the data key KP-CPRE-encrypted under ``attributes``), if any."""
    item = item_id(owner.public, kind, label)
    readers = tuple(Reader(org, key, seal(key, data_key, sealed_key_context(item)))
                    for org, key in sorted(recipients.items()))  # fmt: skip
    return ItemAcl(item, kind, owner.public, organisation, label, 1, readers, int(time.time() * 1000),
                   attributes, capsule).signed(owner)  # fmt: skip


@dataclass(frozen=True)
class CapsuleKey:
    """What a capsule is made under: the owner organisation's public sharing key and the
    twin's access generation now (contracts/sharing.py)."""

    owner: kpcpre.PublicKey
    generation: int


def new_data_key(sharing: CapsuleKey | None, attributes: Sequence[str]) -> tuple[bytes, tuple[str, ...], bytes]:
    """A fresh data key, with the item's canonical attributes and its capsule for the owner
    organisation's sharing key, tagged with the generation (none without a key or attributes)."""
    if sharing is None or not attributes:
        return os.urandom(32), (), b""
    if any(a.startswith(GENERATION) for a in attributes):
        raise StoreError("an item's attributes may not name a generation: its capsule's key does", code="bad_attributes")
    secret, capsule = kpcpre.encrypt(sharing.owner, with_generation(attributes, sharing.generation))
    return secret, without_generation(capsule.attributes), capsule.to_bytes()


def capsule_generation(capsule: bytes) -> int | None:
    """The generation a capsule was made in (None: no capsule, or one without a generation)."""
    return generation_of(kpcpre.Ciphertext.from_bytes(capsule).attributes) if capsule else None


def as_reader(organisation: str, key: EncryptionKey) -> Unlock:
    """Unlock items as ``organisation``, a reader the ACL names, with its X25519 key."""

    async def unlock(acl: ItemAcl, commitment: bytes | None) -> bytes:
        return data_key(acl, organisation, key, commitment)

    return unlock


def data_key(acl: ItemAcl, organisation: str, key: EncryptionKey, commitment: bytes | None = None) -> bytes:
    """The item's data key (of the epoch with ``commitment``), unsealed with ``organisation``'s key."""
    reader = next((r for r in acl.epoch(commitment).readers if r.organisation == organisation), None)
    if reader is None:
        raise AccessDenied(f"the ACL of item {acl.item.hex()[:16]}… holds no key for organisation {organisation}")
    if reader.key != key.public:
        raise StoreError(f"the data key is sealed to another key of {organisation} than this home holds",
                         code="wrong_key")  # fmt: skip
    return unseal(key, reader.sealed_key, sealed_key_context(acl.item))


async def change_readers(client: StoreClient, owner: SigningKey, organisation: str, key: EncryptionKey, item: bytes,
                         add: Mapping[str, bytes], remove: Collection[str]) -> ItemAcl:  # fmt: skip
    """Publish the next version of ``item``'s ACL with the data key sealed to the ``add``
    organisations (name → X25519 key) and without the ``remove`` ones. A removed reader
    is refused by every store node from then on; what it fetched before, it keeps."""
    acl = await client.get_acl(item)
    if acl.owner != owner.public:
        raise StoreError(f"only the owner of item {item.hex()[:16]}… changes its readers", code="not_item_owner")
    if organisation in remove:
        raise StoreError(f"the owner's organisation {organisation} always reads its items", code="bad_request")
    unknown = sorted(set(remove) - {r.organisation for r in acl.readers})
    if unknown:
        raise StoreError(f"{', '.join(unknown)} cannot be removed: not a reader of item {item.hex()[:16]}…",
                         code="not_a_reader")  # fmt: skip
    secret = data_key(acl, organisation, key)
    readers = {r.organisation: r for r in acl.readers if r.organisation not in remove}
    for name, public in add.items():
        readers[name] = Reader(name, public, seal(public, secret, sealed_key_context(item)))
    changed = replace(acl, version=acl.version + 1, readers=tuple(readers[name] for name in sorted(readers)),
                      issued=int(time.time() * 1000), signature=b"").signed(owner)  # fmt: skip
    await client.put_acl(changed)
    return changed


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(last: bool) -> bytes:
    return CHUNK_AAD + (b"\x01" if last else b"\x00")


async def upload_document(client: StoreClient, source: Path | bytes, owner: SigningKey, organisation: str,
                          recipients: Mapping[str, bytes], progress: Progress | None = None, *,
                          attributes: Sequence[str] = (), sharing: CapsuleKey | None = None) -> StoredDocument:  # fmt: skip
    """Encrypt and store the file at ``source`` (or the bytes it is); readable by ``recipients`` (organisation →
    X25519 key) and, with ``attributes`` and the owner organisation's ``sharing`` key,
    by whom the owner grants access to them. Returns once the manifest and every chunk
    reached a write quorum."""
    secret, canonical, capsule = new_data_key(sharing, attributes)
    acl = new_acl(owner, organisation, "document", os.urandom(16), secret, recipients, canonical, capsule)
    await client.put_acl(acl)
    aead = AESGCM(secret)
    slots = asyncio.Semaphore(IN_FLIGHT)
    uploads: list[asyncio.Task[bytes]] = []
    size = 0

    async def upload(ciphertext: bytes, plain_size: int) -> bytes:
        try:
            written = await client.put_chunk(acl.item, ciphertext, acl)
            if progress is not None:
                progress(plain_size)
            return written.digest
        finally:
            slots.release()

    try:
        with io.BytesIO(source) if isinstance(source, bytes) else source.open("rb") as reader:
            block = reader.read(CHUNK_SIZE)
            index = 0
            while True:
                following = reader.read(CHUNK_SIZE) if len(block) == CHUNK_SIZE else b""
                last = not following
                ciphertext = aead.encrypt(_nonce(index), block, _aad(last))
                size += len(block)
                await slots.acquire()
                for task in uploads:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                uploads.append(asyncio.ensure_future(upload(ciphertext, len(block))))
                if last:
                    break
                block, index = following, index + 1
        hashes = await asyncio.gather(*uploads)
    except BaseException:
        for task in uploads:
            task.cancel()
        raise
    manifest = Manifest(size, CHUNK_SIZE, tuple(hashes), key_commitment(secret))
    written = await client.put_chunk(acl.item, manifest.encoded(), acl)
    return StoredDocument(acl.item, written.digest, size, len(hashes), tuple(r.organisation for r in acl.readers))


async def download_document(client: StoreClient, reference: str, expected: bytes, unlock: Unlock,
                            destination: Path, progress: Progress | None = None, *,
                            max_size: int | None = None) -> Manifest:  # fmt: skip
    """Fetch, verify and decrypt a document (of at most ``max_size`` bytes) into
    ``destination``; ``expected`` is the manifest hash the chain records. Nothing is left
    at ``destination`` on failure."""
    item, manifest_hash = parse_reference(reference)
    if manifest_hash != expected:
        raise StoreError("the document's reference names another manifest than the chain records",
                         code="hash_mismatch")  # fmt: skip
    manifest = decode_manifest(await client.get_chunk(item, manifest_hash))
    if max_size is not None and manifest.size > max_size:
        raise StoreError(f"the document is {manifest.size} bytes; at most {max_size} were expected", code="too_large")
    secret = await unlock(await client.get_acl(item), manifest.key_commitment)
    if key_commitment(secret) != manifest.key_commitment:
        raise DecryptionFailed()
    aead = AESGCM(secret)
    temporary = destination.with_name(f".{destination.name}.part")
    fetches: dict[int, asyncio.Task[bytes]] = {}
    last = len(manifest.chunks) - 1

    def fetch(index: int) -> None:
        if index <= last and index not in fetches:
            fetches[index] = asyncio.ensure_future(client.get_chunk(item, manifest.chunks[index]))

    try:
        with create_fresh(temporary) as sink:
            for index in range(IN_FLIGHT):
                fetch(index)
            written = 0
            for index in range(last + 1):
                ciphertext = await fetches.pop(index)
                fetch(index + IN_FLIGHT)
                try:
                    block = aead.decrypt(_nonce(index), ciphertext, _aad(index == last))
                except InvalidTag:
                    raise DecryptionFailed() from None
                sink.write(block)
                written += len(block)
                if progress is not None:
                    progress(len(block))
            if written != manifest.size:
                raise StoreError(f"the document decrypted to {written} bytes, the manifest says {manifest.size}",
                                 code="size_mismatch")  # fmt: skip
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, destination)
    except BaseException:
        for task in fetches.values():
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return manifest
