"""The off-chain store's parts on their own: sealing, ACLs, chunk files, placement, and
the document format against a tampering uploader or store."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest

from twinledger.core.encoding import encode, to_obj
from twinledger.crypto.keys import EncryptionKey, SigningKey
from twinledger.crypto.seal import seal, unseal
from twinledger.errors import DecryptionFailed
from twinledger.store.client import WriteResult
from twinledger.store.disk import ChunkStore, CorruptChunk
from twinledger.store.documents import as_reader, download_document, new_acl, upload_document
from twinledger.store.items import (
    CHUNK_SIZE,
    AccessDenied,
    ItemAcl,
    Manifest,
    StoreError,
    chunk_hash,
    decode_acl,
    decode_manifest,
)
from twinledger.store.placement import StoreNode, rank

OWNER = SigningKey.generate()
ORGS = {name: EncryptionKey.generate() for name in ("owner", "maintainer", "auditor")}


def test_sealed_data_keys_open_only_with_the_right_key_and_context():
    sealed = seal(ORGS["owner"].public, b"k" * 32, b"context")
    assert unseal(ORGS["owner"], sealed, b"context") == b"k" * 32
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    for key, blob, context in ((ORGS["auditor"], sealed, b"context"), (ORGS["owner"], sealed, b"other"),
                               (ORGS["owner"], flipped, b"context"), (ORGS["owner"], sealed[:-1], b"context"),
                               (ORGS["owner"], sealed[:20], b"context")):  # fmt: skip
        with pytest.raises(DecryptionFailed) as failure:
            unseal(key, blob, context)
        assert failure.value.message == "cannot decrypt: wrong key or damaged data"


def _acl() -> ItemAcl:
    return new_acl(OWNER, "owner", "document", b"label", b"d" * 32, {n: k.public for n, k in ORGS.items()})


def test_an_acl_verifies_only_as_its_owner_signed_it():
    acl = _acl()
    assert decode_acl(acl.encoded()) == acl and acl.allows("auditor") and not acl.allows("outsider")
    # Each tampering changes one field of the same signed ACL (a fresh ACL could be issued a
    # millisecond later, and "issued + 1" would then be no change at all).
    tampered = [replace(acl, version=2), replace(acl, owner_organisation="auditor"),
                replace(acl, readers=acl.readers[:1]), replace(acl, issued=acl.issued + 1)]  # fmt: skip
    for bad in tampered:
        with pytest.raises(StoreError) as failure:
            decode_acl(bad.encoded())
        assert failure.value.code == "bad_signature"
    intruder = SigningKey.generate()
    squatted = replace(acl, owner=intruder.public, signature=b"")
    with pytest.raises(StoreError, match="not derived from its owner"):
        decode_acl(replace(squatted, signature=intruder.sign(squatted.signing_bytes())).encoded())
    for raw in (b"\x01\x02", encode({**to_obj(acl), "extra": 1}), b"\x00" * 70_000):
        with pytest.raises(StoreError) as failure:
            decode_acl(raw)
        assert failure.value.code == "bad_acl"


def test_chunk_files_are_checked_quarantined_and_indexed_per_item(tmp_path):
    disk = ChunkStore(tmp_path / "store")
    item, data = os.urandom(32), os.urandom(5000)
    digest = disk.put_chunk(item, data)
    assert digest == chunk_hash(data) and disk.read_chunk(digest) == data
    assert disk.holds([(item, digest), (os.urandom(32), digest), (item, os.urandom(32))]) == [True, False, False]
    path = tmp_path / "store" / "chunks" / digest.hex()[:2] / digest.hex()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert disk.audit() == (1, [(digest, item)])
    assert not path.exists() and (tmp_path / "store" / "corrupt" / digest.hex()).exists()
    assert disk.read_chunk(digest) is None
    disk.put_chunk(item, data)
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptChunk):
        disk.read_chunk(digest)

    acl = _acl()
    assert disk.put_acl(acl) and not disk.put_acl(acl)
    newer = replace(acl, version=3, signature=b"").signed(OWNER)
    assert disk.put_acl(newer) and not disk.put_acl(acl) and disk.acl(acl.item) == newer
    disk.close()
    reopened = ChunkStore(tmp_path / "store")
    assert reopened.acl(acl.item) == newer and reopened.acl_versions() == {acl.item: 3}
    reopened.close()


def test_rendezvous_placement_moves_only_what_a_new_node_takes():
    nodes = [StoreNode(f"org{i}", "node-1", os.urandom(32), f"127.0.0.1:{i}") for i in range(4)]
    newcomer = StoreNode("org4", "node-1", os.urandom(32), "127.0.0.1:4")
    moved = 0
    for _ in range(2000):
        key = os.urandom(32)
        before = rank(key, nodes)[:3]
        assert before == rank(key, list(reversed(nodes)))[:3]
        after = rank(key, [*nodes, newcomer])[:3]
        if newcomer in after:
            moved += 1
            assert set(after) - {newcomer} < set(before)
        else:
            assert after == before
    assert 0.5 < moved / 2000 < 0.7  # 3 of 5 places: 60 % of the keys gain the newcomer as a replica


class MemoryStore:
    """The store client's four calls over dictionaries, to play a tampering store."""

    def __init__(self) -> None:
        self.chunks: dict[bytes, bytes] = {}
        self.acls: dict[bytes, ItemAcl] = {}

    async def put_acl(self, acl: ItemAcl) -> WriteResult:
        self.acls[acl.item] = acl
        return WriteResult(acl.item, ("memory",))

    async def put_chunk(self, item: bytes, data: bytes, acl: ItemAcl) -> WriteResult:
        self.chunks[chunk_hash(data)] = data
        return WriteResult(chunk_hash(data), ("memory",))

    async def get_chunk(self, item: bytes, digest: bytes) -> bytes:
        return self.chunks[digest]

    async def get_acl(self, item: bytes) -> ItemAcl:
        return self.acls[item]


def _upload(store: MemoryStore, path: Path, readers: tuple[str, ...] = ("owner", "maintainer")):
    recipients = {name: ORGS[name].public for name in readers}
    return asyncio.run(upload_document(store, path, OWNER, "owner", recipients))  # type: ignore[arg-type]


def _download(store: MemoryStore, reference: str, expected: bytes, org: str, destination: Path,
              key: EncryptionKey | None = None) -> Manifest:  # fmt: skip
    return asyncio.run(download_document(store, reference, expected, as_reader(org, key or ORGS[org]), destination))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 17])
def test_documents_of_any_size_round_trip(tmp_path, size):
    store = MemoryStore()
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(size))
    stored = _upload(store, source)
    assert stored.size == size and stored.chunks == max(1, -(-size // CHUNK_SIZE))
    manifest = _download(store, stored.reference, stored.manifest, "maintainer", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes() and manifest.size == size


def test_a_tampering_uploader_or_store_is_caught_and_nothing_is_written(tmp_path):
    store = MemoryStore()
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(3 * CHUNK_SIZE))
    stored = _upload(store, source)
    out = tmp_path / "out.bin"
    manifest = decode_manifest(store.chunks[stored.manifest])

    def register(fake: Manifest) -> tuple[str, bytes]:
        raw = fake.encoded()
        store.chunks[chunk_hash(raw)] = raw
        return f"store:{stored.item.hex()}/{chunk_hash(raw).hex()}", chunk_hash(raw)

    failures = []
    cases = [
        (stored.reference, os.urandom(32), "owner", None),  # the chain records another manifest
        (*register(replace(manifest, chunks=(manifest.chunks[1], manifest.chunks[0], manifest.chunks[2]))), "owner",
         None),  # chunks reordered
        (*register(replace(manifest, chunks=manifest.chunks[:2], size=2 * CHUNK_SIZE)), "owner", None),  # truncated
        (*register(replace(manifest, key_commitment=os.urandom(32))), "owner", None),  # another data key
        (stored.reference, stored.manifest, "auditor", None),  # not a reader
        (stored.reference, stored.manifest, "maintainer", ORGS["auditor"]),  # a key the data key is not sealed to
    ]  # fmt: skip
    for reference, expected, org, key in cases:
        with pytest.raises((StoreError, DecryptionFailed, AccessDenied)) as failure:
            _download(store, reference, expected, org, out, key)
        failures.append(failure.value.code)
        assert not out.exists() and not (tmp_path / ".out.bin.part").exists()
    assert failures == ["hash_mismatch", "decryption_failed", "decryption_failed", "decryption_failed",
                        "access_denied", "wrong_key"]  # fmt: skip

    ciphertext = store.chunks[manifest.chunks[1]]
    store.chunks[manifest.chunks[1]] = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])  # a store that lies
    with pytest.raises(DecryptionFailed):
        _download(store, stored.reference, stored.manifest, "owner", out)
    assert not out.exists()
