"""One suite, run against both chain stores (SQLite and a real PostgreSQL server)."""

from __future__ import annotations

import dataclasses

import pytest
from ledger_helpers import GENESIS, new_chain, produce, record

from twinledger.abc import BlockResult, ChainStore
from twinledger.core.types import Block, CommitCertificate, Transaction
from twinledger.ledger.store import open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/chain.db"
    return request.getfixturevalue("postgres_database")()


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def test_blocks_by_height_hash_and_transactions(store: ChainStore):
    chain = new_chain(store)
    txs = [record() for _ in range(5)]
    block, cert = produce(chain, txs)
    assert store.head() == block.header
    assert store.header_by_height(1) == block.header
    assert store.header_by_height(0) == GENESIS.header()
    assert store.block_by_hash(block.hash) == block
    assert store.certificate(block.hash) == cert
    found = store.transaction(txs[3].hash)
    assert found is not None and found.transaction == txs[3]
    assert (found.height, found.index, found.block_hash, found.receipt.status) == (1, 3, block.hash, "ok")
    assert store.transaction(b"\x00" * 32) is None
    assert store.header_by_height(2) is None


def test_state_history(store: ChainStore):
    chain = new_chain(store)
    produce(chain, [record(nonce=1)])
    produce(chain, [record(nonce=5)])
    key = f"nonce/{record(nonce=0).sender.hex()}"
    assert store.state_get(key) == 5
    assert store.state_get(key, 1) == 1
    assert store.state_get(key, 0) is None
    assert store.state_writes(2)[key] == 5


def test_pending_is_durable_and_cleared_by_commit(store: ChainStore, store_url):
    txs = [record() for _ in range(3)]
    store.add_pending(txs)
    store.add_pending(txs[:1])  # idempotent
    reopened = open_store(store_url)
    try:
        assert [t.hash for t in reopened.pending()] == [t.hash for t in txs]
        chain = new_chain(reopened)
        produce(chain, txs[:2])
        assert [t.hash for t in reopened.pending()] == [txs[2].hash]
    finally:
        reopened.close()


def test_stripped_storage_keeps_proofs(store: ChainStore):
    chain = new_chain(store, keep=lambda tx: False)
    txs = [record() for _ in range(3)]
    block, _ = produce(chain, txs)
    stored = store.block_by_hash(block.hash)
    assert stored is not None and all(tx.stripped for tx in stored.transactions)
    assert [tx.hash for tx in stored.transactions] == [tx.hash for tx in txs]
    from twinledger.core.proof import verify_proof

    verified = verify_proof(chain.proof(txs[1].hash))
    assert verified.tx_hash == txs[1].hash


def test_rewind_and_side_blocks(store: ChainStore):
    chain = new_chain(store)
    produce(chain, [record()])
    block2, _ = produce(chain, [record()])
    store.rewind(1)
    assert store.head().height == 1
    assert store.transaction(block2.transactions[0].hash) is None
    assert store.block_by_hash(block2.hash) == block2  # kept as a side block
    assert {h.height for h, canonical in store.headers() if not canonical} == {2}


def test_meta(store: ChainStore):
    assert store.meta("x") is None
    store.set_meta("x", b"1")
    store.set_meta("x", b"2")
    assert store.meta("x") == b"2"


def test_meta_items_by_prefix(store: ChainStore):
    for key in ("evidence/b", "evidence/a", "evidencex", "consensus/vote-guard", "evidence/é"):
        store.set_meta(key, key.encode())
    assert store.meta_items("evidence/") == [(k, k.encode()) for k in ("evidence/a", "evidence/b", "evidence/é")]
    assert store.meta_items("nothing/") == []


def test_full_transactions_survive_roundtrip(store: ChainStore):
    chain = new_chain(store)
    tx = record(payload=b"\x00\xff" * 100)
    produce(chain, [tx])
    found = store.transaction(tx.hash)
    assert isinstance(found.transaction, Transaction) and found.transaction.args == tx.args


def test_state_items_by_prefix_as_of_any_height(store: ChainStore):
    chain = new_chain(store)
    first, second = record(), record()
    produce(chain, [first, second])
    produce(chain, [record()])
    at_one = store.state_items("records/", 1)
    assert [key for key, _ in at_one] == sorted(f"records/{tx.hash.hex()}" for tx in (first, second))
    assert len(store.state_items("records/")) == 3
    assert all(key.startswith("nonce/") for key, _ in store.state_items("nonce/"))
    head = store.head()
    assert head is not None
    deleted = f"records/{first.hash.hex()}"
    header = dataclasses.replace(head, height=head.height + 1, previous=head.hash)
    certificate = CommitCertificate(head.chain_id, header.height, 0, header.hash, ())
    store.commit_block(Block(header, ()), certificate, BlockResult({deleted: None}, (), bytes(32), {deleted: None}), ())
    assert deleted not in dict(store.state_items("records/"))
    assert deleted in dict(store.state_items("records/", head.height))
    assert store.state_items("records/x") == []


def test_postgresql_commits_are_synchronous_whatever_the_database_says(postgres_database):
    """Durability depended on the server's synchronous_commit: a database set to 'off'
    acknowledged blocks a crash could lose."""
    import psycopg

    url = postgres_database()
    with psycopg.connect(url, autocommit=True) as admin:
        name = admin.execute("SELECT current_database()").fetchone()[0]
        admin.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
    store = open_store(url)
    try:
        assert store._one("SHOW synchronous_commit")[0] == "on"
    finally:
        store.close()
