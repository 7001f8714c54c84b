"""The off-chain store on real node processes: a four-organisation consortium whose
nodes are all store nodes (r = 3, write quorum 2). Documents go through the CLI; the
adversarial cases speak the store protocol directly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from network_helpers import Network, wait_for
from store_helpers import AUDITOR, MAINTAINER, MANUFACTURER, OWNER, cli, home, ok, store_consortium, with_client

from twinledger.config import load_config
from twinledger.crypto.keys import SigningKey
from twinledger.store.client import StoreClient
from twinledger.store.documents import data_key, new_acl, parse_reference
from twinledger.store.items import StoreError, chunk_hash, decode_manifest
from twinledger.store.placement import rank
from twinledger.store.protocol import Connection

PLANT = Path(__file__).parent.parent / "examples" / "bottling-plant.aml"




@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> Iterator[Network]:
    yield from store_consortium(tmp_path_factory.mktemp("store") / "net")


@pytest.fixture(scope="module")
def twin(consortium: Network) -> str:
    created = ok("twin", "create", "--home", str(consortium.homes[OWNER]), "--aml", str(PLANT),
                 "--role", "maintainer=maintainer", "--role", "auditor=auditor")  # fmt: skip
    return str(created["id"])



def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def document(network: Network, twin: str, document_id: str) -> dict[str, Any]:
    view = httpx.get(f"{network.url(OWNER)}/v1/twins/{twin}", headers=network.headers(OWNER), timeout=10).json()
    return next(d for d in view["documents"] if d["id"] == document_id)



def chunk_files(network: Network, i: int) -> set[str]:
    return {p.name for p in (network.homes[i] / "data" / "store" / "chunks").glob("*/*")}


def all_chunks(network: Network, twin: str, document_id: str) -> tuple[bytes, list[bytes]]:
    """(item, every chunk hash including the manifest's) of a stored document."""
    version = document(network, twin, document_id)["versions"][-1]
    item, manifest_hash = parse_reference(version["reference"])

    async def work(client: StoreClient) -> list[bytes]:
        return [manifest_hash, *decode_manifest(await client.get_chunk(item, manifest_hash)).chunks]

    return item, with_client(network, OWNER, work)


def test_a_document_is_encrypted_stored_registered_and_read_back_only_by_its_readers(consortium, twin, tmp_path):
    source = random_file(tmp_path / "manual.bin", 3 * (1 << 20) + 12345)
    added = ok("twin", "doc", "add", twin, str(source), "--home", home(consortium, OWNER), "--reader", "maintainer",
               "--title", "Operating manual")  # fmt: skip
    assert added["readers"] == ["maintainer", "owner"] and added["size"] == source.stat().st_size
    registered = document(consortium, twin, added["document"])
    assert registered["versions"][0]["hash"] == added["document"] and registered["title"] == "Operating manual"

    fetched = ok("twin", "doc", "get", twin, added["document"][:12], "-o", str(tmp_path / "copy.bin"),
                 "--home", home(consortium, MAINTAINER))  # fmt: skip
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes() and fetched["version"] == 1

    for outsider in (AUDITOR, MANUFACTURER):
        refused = cli("twin", "doc", "get", twin, added["document"], "-o", str(tmp_path / "nope.bin"),
                      "--home", home(consortium, outsider))  # fmt: skip
        assert refused.returncode == 1 and "is not a reader" in refused.stderr
        assert refused.stderr.count("\n") == 1 and not (tmp_path / "nope.bin").exists()

    item, chunks = all_chunks(consortium, twin, added["document"])
    assert len(chunks) == 1 + 4  # manifest and four 1 MiB chunks
    sample = source.read_bytes()[5000:5064]
    for i in range(4):  # every chunk sits on its r = 3 rendezvous replicas, and no node holds plaintext
        files = chunk_files(consortium, i)
        for path in (consortium.homes[i] / "data" / "store" / "chunks").glob("*/*"):
            assert sample not in path.read_bytes()
        nodes = with_client(consortium, OWNER, _nodes)
        for digest in chunks:
            expected = consortium.homes[i].name in [n.organisation for n in rank(digest, nodes)[:3]]
            assert (digest.hex() in files) == expected


async def _nodes(client: StoreClient) -> tuple:
    return client.nodes


def test_writes_and_reads_go_on_without_a_store_node_and_repair_catches_it_up(consortium, twin, tmp_path):
    first = ok("twin", "doc", "add", twin, str(random_file(tmp_path / "a.bin", 2 << 20)),
               "--home", home(consortium, OWNER))  # fmt: skip
    consortium.kill(MAINTAINER)
    try:
        source = random_file(tmp_path / "b.bin", 5 * (1 << 20))
        second = ok("twin", "doc", "add", twin, str(source), "--home", home(consortium, OWNER))
        for added, name in ((first, "a.bin"), (second, "b.bin")):
            ok("twin", "doc", "get", twin, added["document"], "-o", str(tmp_path / f"out-{name}"),
               "--home", home(consortium, AUDITOR))  # fmt: skip
            assert (tmp_path / f"out-{name}").read_bytes() == (tmp_path / name).read_bytes()
    finally:
        consortium.start(MAINTAINER)
    _, chunks = all_chunks(consortium, twin, second["document"])
    nodes = with_client(consortium, OWNER, _nodes)
    owed = {d.hex() for d in chunks if "maintainer" in [n.organisation for n in rank(d, nodes)[:3]]}
    assert owed and not owed & chunk_files(consortium, MAINTAINER)  # it missed the writes

    pushed = sum(ok("store", "repair", "--home", home(consortium, i))["chunks_pushed"] for i in (0, 1, 3))
    assert pushed >= len(owed)
    assert owed <= chunk_files(consortium, MAINTAINER)
    again = ok("store", "repair", "--home", home(consortium, OWNER))
    assert again["chunks_pushed"] == 0 and again["unreachable"] == []
    ok("twin", "doc", "get", twin, second["document"], "-o", str(tmp_path / "again.bin"),
       "--home", home(consortium, MAINTAINER))  # fmt: skip
    assert (tmp_path / "again.bin").read_bytes() == source.read_bytes()


def test_accepted_chunks_survive_kill_9(consortium, twin, tmp_path):
    added = ok("twin", "doc", "add", twin, str(random_file(tmp_path / "c.bin", 3 << 20)),
               "--home", home(consortium, OWNER))  # fmt: skip
    before = ok("store", "status", "--home", home(consortium, AUDITOR))
    consortium.kill(AUDITOR)
    consortium.start(AUDITOR)
    after = ok("store", "status", "--home", home(consortium, AUDITOR))
    assert (after["items"], after["chunks"], after["bytes"]) == (before["items"], before["chunks"], before["bytes"])
    audit = ok("store", "audit", "--home", home(consortium, AUDITOR))
    assert audit["checked"] == before["chunks"] and audit["corrupt"] == []
    ok("twin", "doc", "get", twin, added["document"], "-o", str(tmp_path / "c-out.bin"),
       "--home", home(consortium, AUDITOR))  # fmt: skip
    assert (tmp_path / "c-out.bin").read_bytes() == (tmp_path / "c.bin").read_bytes()


def _corrupt_one(network: Network, i: int, wanted: set[str]) -> Path:
    path = next(p for p in sorted((network.homes[i] / "data" / "store" / "chunks").glob("*/*")) if p.name in wanted)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return path


def test_a_corrupt_chunk_is_detected_on_read_and_by_audit_and_repaired(consortium, twin, tmp_path):
    added = ok("twin", "doc", "add", twin, str(random_file(tmp_path / "d.bin", 4 << 20)),
               "--home", home(consortium, OWNER))  # fmt: skip
    item, chunks = all_chunks(consortium, twin, added["document"])

    def two_held() -> set[str] | None:  # a write is acknowledged at its quorum; third copies follow in the background
        held = {d.hex() for d in chunks} & chunk_files(consortium, AUDITOR)
        return held if len(held) >= 2 else None

    held = wait_for(two_held, "two chunks of the document on the auditor's store node", 60)
    damaged = _corrupt_one(consortium, AUDITOR, held)
    digest = bytes.fromhex(damaged.name)
    auditor_node = [n for n in with_client(consortium, OWNER, _nodes) if n.organisation == "auditor"]

    async def read_from_the_auditor_node(client: StoreClient) -> bytes:
        only = StoreClient(auditor_node, client.tls, client.replication)
        async with only:
            return await only.get_chunk(item, digest)

    assert chunk_hash(with_client(consortium, OWNER, read_from_the_auditor_node)) == digest
    assert chunk_hash(damaged.read_bytes()) == digest, "the node repaired its copy from a replica"
    assert (consortium.homes[AUDITOR] / "data" / "store" / "corrupt" / damaged.name).exists()

    second = _corrupt_one(consortium, AUDITOR, held - {damaged.name})
    audit = ok("store", "audit", "--home", home(consortium, AUDITOR))
    assert audit["corrupt"] == [second.name] and audit["repaired"] == 1 and audit["unrepaired"] == []
    assert chunk_hash(second.read_bytes()) == bytes.fromhex(second.name)
    clean = cli("store", "audit", "--home", home(consortium, AUDITOR))
    assert clean.returncode == 0 and "0 damaged or missing" in clean.stdout


def test_only_the_owner_changes_an_acl_and_a_newer_acl_takes_effect(consortium, twin, tmp_path):
    source = random_file(tmp_path / "e.bin", 100_000)
    added = ok("twin", "doc", "add", twin, str(source), "--home", home(consortium, OWNER), "--reader", "maintainer")
    item, _ = all_chunks(consortium, twin, added["document"])
    owner_config = load_config(consortium.homes[OWNER])
    owner_key = owner_config.signing_key("operator")
    members = httpx.get(f"{consortium.url(OWNER)}/v1/members", headers=consortium.headers(OWNER), timeout=10).json()
    auditor_key = bytes.fromhex(next(o for o in members["organisations"] if o["name"] == "auditor")["encryption_key"])

    async def change(client: StoreClient) -> list[str]:
        current = await client.get_acl(item)
        secret = data_key(current, "owner", owner_config.encryption_key())
        wider = new_acl(owner_key, "owner", "document", current.label, secret,
                        {r.organisation: r.key for r in current.readers} | {"auditor": auditor_key})  # fmt: skip
        errors = []
        intruder = SigningKey.generate()
        forged = replace(replace(wider, version=7), signature=intruder.sign(replace(wider, version=7).signing_bytes()))
        squatter = replace(wider, owner=intruder.public, version=8, signature=b"")
        for bad in (forged, replace(squatter, signature=intruder.sign(squatter.signing_bytes()))):
            try:
                await client.put_acl(bad)
            except StoreError as exc:
                errors.append(exc.code)
        await client.put_acl(replace(wider, version=2).signed(owner_key))
        await client.put_acl(current)  # an old version replayed changes nothing
        assert (await client.get_acl(item)).version == 2
        return errors

    assert with_client(consortium, OWNER, change) == ["bad_signature", "bad_acl"]
    ok("twin", "doc", "get", twin, added["document"], "-o", str(tmp_path / "e-out.bin"),
       "--home", home(consortium, AUDITOR))  # fmt: skip
    assert (tmp_path / "e-out.bin").read_bytes() == source.read_bytes()


def test_store_requests_are_checked(consortium, twin, tmp_path):
    added = ok("twin", "doc", "add", twin, str(random_file(tmp_path / "f.bin", 1000)), "--home", home(consortium, OWNER))
    item, chunks = all_chunks(consortium, twin, added["document"])

    def outside(replicas_exclude: bytes, nodes: tuple) -> bytes:
        """Random bytes whose hash's three replicas exclude the node with this key."""
        while True:
            data = os.urandom(64)
            if replicas_exclude not in [n.signing_key for n in rank(chunk_hash(data), nodes)[:3]]:
                return data

    async def probe(client: StoreClient) -> list[str]:
        node = client.replicas(chunks[0])[0]
        me = next(n for n in client.nodes if n.organisation == "maintainer")
        connection: Connection = await client.connection(node)
        answers = []
        for op, body in (("format_disk", {}), ("put", {"item": b"short", "data": b"x"}),
                         ("put", {"item": os.urandom(32), "data": b"x"}), ("get", {"item": item}),
                         ("have", {"chunks": [[item, chunks[0]], [item, os.urandom(32)]]}),
                         ("fetch", {"item": item, "hash": chunk_hash(outside(me.signing_key, client.nodes))}),
                         ("put", {"item": item, "data": outside(node.signing_key, client.nodes)}),
                         ("have", {"chunks": "everything"})):  # fmt: skip
            try:
                answer = await connection.request(op, body, 10)
                answers.append(f"ok: {answer.get('have')}")
            except StoreError as exc:
                answers.append(f"{exc.code}: {exc.message}")
        return answers

    answers = with_client(consortium, MAINTAINER, probe)
    assert answers[0].startswith("bad_request: unknown store operation 'format_disk'")
    assert answers[1].startswith("bad_request: 'item' must be a byte string of 32 bytes")
    assert answers[2].startswith("not_found: item")
    assert answers[3].startswith("bad_request: 'hash'")
    assert answers[4] == "ok: [True, False]"  # the maintainer's node is a store node: it may ask
    assert answers[5].startswith("access_denied: maintainer/node-1 is no replica of chunk")
    assert answers[6].startswith("access_denied: organisation maintainer may not write item")
    assert answers[7].startswith("bad_request: 'chunks' must be a list")
