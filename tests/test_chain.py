from __future__ import annotations

import dataclasses
import os

import pytest
from ledger_helpers import GENESIS, USER, VALIDATOR, new_chain, produce, record

from twinledger.core.types import (
    MAX_BLOCK_TX_BYTES,
    MAX_TX_BYTES,
    PREFERRED_BLOCK_TX_BYTES,
    Block,
    CommitCertificate,
    Receipt,
    VoteSignature,
    encode_receipt,
)
from twinledger.crypto.keys import SigningKey
from twinledger.errors import InvalidBlock, InvalidTransaction, MempoolFull
from twinledger.ledger import chain as chain_module
from twinledger.ledger.blocktree import BlockTree
from twinledger.ledger.chain import return_abandoned
from twinledger.ledger.mempool import Mempool
from twinledger.ledger.store.sqlite import SqliteChainStore
from twinledger.ledger.verify import verify_chain


@pytest.fixture
def stores(tmp_path):
    made = []

    def make(name: str = "a") -> SqliteChainStore:
        made.append(SqliteChainStore(tmp_path / f"{name}.db"))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_replay_on_a_fresh_node_reaches_the_same_state(stores):
    producer = new_chain(stores("producer"))
    blocks = [produce(producer, [record() for _ in range(4)]) for _ in range(3)]
    follower = new_chain(stores("follower"), key=None)
    for block, cert in blocks:
        assert follower.apply_block(block, cert).status == "head"
    assert follower.head == producer.head
    assert follower.apply_block(*blocks[-1]).status == "known"


def test_replayed_nonce_in_a_block_fails_its_receipt(stores):
    chain = new_chain(stores())
    produce(chain, [record(nonce=3)])
    block, _ = produce(chain, [record(nonce=3), record(nonce=4)])
    receipts = [chain.store.transaction(tx.hash).receipt for tx in block.transactions]
    assert [(r.status, r.error) for r in receipts] == [("failed", "nonce_replayed"), ("ok", "")]


def test_invalid_blocks_are_refused(stores):
    producer = new_chain(stores("producer"))
    block, cert = produce(producer, [record()])
    follower = new_chain(stores("follower"), key=None)

    wrong_state = dataclasses.replace(block.header, state_root=bytes(32))
    forged = Block(wrong_state, block.transactions)
    with pytest.raises(InvalidBlock, match="state root"):
        follower.apply_block(forged, producer.consensus.certify(forged))

    with pytest.raises(InvalidBlock):
        follower.apply_block(block, dataclasses.replace(cert, signatures=()))
    mallory = SigningKey.generate()
    fake = CommitCertificate(cert.chain_id, cert.height, 0, cert.block_hash,
                             (VoteSignature(VALIDATOR.public, mallory.sign(cert.vote_message)),))  # fmt: skip
    with pytest.raises(InvalidBlock):
        follower.apply_block(block, fake)

    other_tx = Block(block.header, (record(),))
    with pytest.raises(InvalidBlock, match="transaction root"):
        follower.apply_block(other_tx, cert)
    assert follower.head.height == 0
    assert follower.apply_block(block, cert).status == "head"


def test_orphans_wait_for_their_parent(stores):
    producer = new_chain(stores("producer"))
    b1, b2, b3 = (produce(producer, [record()]) for _ in range(3))
    follower = new_chain(stores("follower"), key=None)
    assert follower.apply_block(*b3).status == "orphan"
    assert follower.apply_block(*b2).status == "orphan"
    assert follower.tree.orphan_count() == 2 and follower.head.height == 0
    follower.apply_block(*b1)
    assert follower.head == b3[0].header
    assert follower.tree.orphan_count() == 0


def test_fork_choice_reorganises_to_the_longer_branch(stores):
    a = new_chain(stores("a"))
    common = produce(a, [record(nonce=1)])
    branch_b = new_chain(stores("b"))
    branch_b.apply_block(*common)
    a1 = produce(a, [record(nonce=2)])
    b1 = produce(branch_b, [record(nonce=3)], timestamp=a1[0].header.timestamp + 5)
    b2 = produce(branch_b, [record(nonce=4)])
    first = a.apply_block(*b1)
    assert first.status in ("side", "head")
    outcome = a.apply_block(*b2)
    assert outcome.head == b2[0].header and a.head == branch_b.head
    outcomes = (first, outcome)  # b1 may win on its hash alone already
    assert [b.hash for o in outcomes for b in o.adopted] == [b1[0].hash, b2[0].hash]
    assert {b.hash for o in outcomes for b in o.abandoned} == {a1[0].hash}  # each says so, until returned
    assert a.store.transaction(a1[0].transactions[0].hash) is None
    assert a.store.transaction(b2[0].transactions[0].hash) is not None
    assert a.state().get(f"nonce/{USER.public.hex()}") == 4
    report = verify_chain(a.store, GENESIS, a.consensus, a.app)
    assert report.ok, report.problems


def test_a_reorganisation_returns_abandoned_transactions_to_the_mempool_and_the_journal(stores):
    """What an abandoned block held and the new branch did not is pending again, and
    journaled, so a restart (which reads the journal) offers it again; a transaction the
    new branch holds, or made invalid, is not."""
    a, branch_b = new_chain(stores("a")), new_chain(stores("b"))
    other, third = SigningKey(bytes([11]) * 32), SigningKey(bytes([13]) * 32)
    common = produce(a, [record(nonce=1)])
    branch_b.apply_block(*common)
    kept, spent, shared = record(nonce=1, key=third), record(nonce=2), record(nonce=1, key=other)
    a1 = produce(a, [kept, spent, shared])
    b1 = produce(branch_b, [record(nonce=3), shared], timestamp=a1[0].header.timestamp + 5)
    b2 = produce(branch_b, [record(nonce=4)])
    mempool = Mempool(100)
    abandoned, returned = [], []
    for block in (b1, b2):  # as the ledger does: what an import abandoned is returned at once
        outcome = a.apply_block(*block)
        abandoned += outcome.abandoned
        returned += return_abandoned(a, outcome, mempool) if outcome.abandoned else []
    assert a.head == branch_b.head and [b.hash for b in abandoned] == [a1[0].hash]
    assert returned == [kept], "USER's nonce 2 is spent on the new branch; the shared one is committed there"
    assert [tx.hash for tx in mempool.select(10)] == [kept.hash]
    assert [tx.hash for tx in a.store.pending()] == [kept.hash], "journaled: a restart offers it again"
    produce(a, mempool.select(10))
    assert a.store.transaction(kept.hash) is not None and a.store.pending() == []


def test_block_tree_forks_and_leaves():
    root = GENESIS.header()
    tree = BlockTree(root)

    def child(parent, salt):
        return dataclasses.replace(root, height=parent.height + 1, previous=parent.hash, tx_root=bytes([salt]) * 32)

    h1 = child(root, 1)
    h2a, h2b = child(h1, 2), child(h1, 3)
    h3 = child(h2b, 4)
    assert tree.add(h3) == [] and tree.orphan_count() == 1
    assert tree.add(h1) == [h1]
    assert tree.add(h2a) == [h2a]
    assert tree.add(h2b) == [h2b, h3]
    assert {h.hash for h in tree.leaves()} == {h2a.hash, h3.hash}
    assert tree.common_ancestor(h2a.hash, h3.hash) == h1
    assert [h.height for h in tree.path_from_root(h3.hash)] == [0, 1, 2, 3]


def test_mempool_orders_nonces_and_bounds():
    pool = Mempool(max_txs=3, sender_share=1)
    t5, t4, t9 = record(nonce=5), record(nonce=4), record(nonce=9)
    for tx in (t5, t4, t9):
        assert pool.check(tx)
        pool.add(tx)
    assert pool.check(t5) is False  # an exact duplicate is idempotent
    with pytest.raises(InvalidTransaction) as info:
        pool.check(record(nonce=5))
    assert info.value.code == "nonce_pending"
    with pytest.raises(MempoolFull):
        pool.check(record(nonce=10))
    assert [t.nonce for t in pool.select(10)] == [4, 5, 9]
    assert [t.nonce for t in pool.select(1)] == [4]  # 5 arrived first and needs 4 before it: 4 fits
    assert [t.nonce for t in pool.select(2)] == [4, 5]
    pool.remove([t4.hash, t5.hash])
    assert len(pool) == 1 and pool.pending_nonce(USER.public) == 9


def test_mempool_never_selects_past_a_journaling_transaction():
    pool = Mempool()
    other = SigningKey(bytes([3]) * 32)
    low, high = record(nonce=20), record(nonce=21)
    theirs = record(nonce=0, key=other)
    pool.add(low, durable=False)
    pool.add(high)
    pool.add(theirs)
    assert pool.select(10) == [theirs]  # 21 must not overtake 20, which is not yet durable
    pool.mark_durable([low.hash])
    assert pool.select(10) == [low, high, theirs]


def test_verify_chain_finds_tampering(stores):
    store = stores()
    chain = new_chain(store)
    produce(chain, [record() for _ in range(3)])
    produce(chain, [record() for _ in range(3)])
    assert verify_chain(store, GENESIS, chain.consensus, chain.app).ok
    conn = store._conn()
    row = conn.execute("SELECT block_hash, idx, tx FROM block_txs ORDER BY rowid DESC LIMIT 1").fetchone()
    tampered = bytearray(row[2])
    tampered[-5] ^= 1
    conn.execute("UPDATE block_txs SET tx = ? WHERE block_hash = ? AND idx = ?", (bytes(tampered), row[0], row[1]))
    report = verify_chain(store, GENESIS, chain.consensus, chain.app)
    assert not report.ok and report.problems[0][0] == 2


def test_verify_chain_finds_tampered_state(stores):
    store = stores()
    chain = new_chain(store)
    produce(chain, [record()])
    store._conn().execute("UPDATE state SET value = ? WHERE height = 1 AND key LIKE 'nonce/%'", (b"\x05",))
    report = verify_chain(store, GENESIS, chain.consensus, chain.app)
    assert not report.ok and "state" in report.problems[0][1]


def test_verify_chain_finds_tampered_receipt(stores):
    store = stores()
    chain = new_chain(store)
    tx = record()
    produce(chain, [tx])
    assert verify_chain(store, GENESIS, chain.consensus, chain.app).ok
    forged = Receipt(tx.hash, "failed", "contract_error")
    store._conn().execute("UPDATE tx_index SET receipt = ? WHERE tx_hash = ?", (encode_receipt(forged), tx.hash))
    report = verify_chain(store, GENESIS, chain.consensus, chain.app)
    assert not report.ok and "receipts" in report.problems[0][1]


def test_a_block_that_carries_a_committed_transaction_again_is_invalid(tmp_path):
    """A Byzantine proposer re-included a committed transaction: every honest validator
    voted for it (it only failed with nonce_replayed), then every commit broke the store's
    index and the consensus task died on all of them at once."""
    from ledger_helpers import VALIDATOR, new_chain, produce, record

    from twinledger.errors import InvalidBlock
    from twinledger.ledger.store.sqlite import SqliteChainStore

    store = SqliteChainStore(tmp_path / "a.db")
    chain = new_chain(store)
    tx = record(nonce=0)
    first, first_cert = produce(chain, [tx])
    block, _ = chain.build_block([tx], VALIDATOR.public, chain.head.timestamp + 1000)
    with pytest.raises(InvalidBlock, match="committed before"):
        chain.execute_proposal(block)
    syncing = new_chain(SqliteChainStore(tmp_path / "b.db"))
    syncing.apply_block(first, first_cert)
    with pytest.raises(InvalidBlock, match="committed before"):
        syncing.apply_block(block, chain.consensus.certify(block))
    assert syncing.head.hash == first.hash


def test_a_block_from_the_future_is_invalid(tmp_path):
    """A block at 2**64 - 1 ms was accepted, after which no block could ever be built."""
    import time

    from ledger_helpers import VALIDATOR, new_chain, record

    from twinledger.errors import InvalidBlock
    from twinledger.ledger.store.sqlite import SqliteChainStore
    from twinledger.ledger.validation import MAX_BLOCK_AHEAD_MS

    chain = new_chain(SqliteChainStore(tmp_path / "c.db"))
    now = int(time.time() * 1000)
    for moment in (2**64 - 1, now + MAX_BLOCK_AHEAD_MS + 60_000):
        block, _ = chain.build_block([record()], VALIDATOR.public, moment)
        with pytest.raises(InvalidBlock, match="past this validator's clock"):
            chain.execute_proposal(block, now_ms=now)
    timely, _ = chain.build_block([record()], VALIDATOR.public, now + MAX_BLOCK_AHEAD_MS // 2)
    chain.execute_proposal(timely, now_ms=now)


def _large(count: int, per_sender: int = 10) -> list:
    """``count`` admissible transactions of nearly the largest size, ``per_sender`` per sender."""
    keys = [SigningKey(bytes([100 + i % 150, i // 150]) * 16) for i in range(count // per_sender + 1)]
    return [record(nonce=i % per_sender, key=keys[i // per_sender], payload=os.urandom(MAX_TX_BYTES - 400))
            for i in range(count)]  # fmt: skip


def test_a_block_is_bounded_in_bytes_and_a_builder_fills_it_to_its_preferred_size(tmp_path):
    """Blocks were bounded by count only: a valid block of 1,100 near-maximal transactions
    outgrew every frame, its proposal was never sent and re-gossip raised for good."""
    chain = new_chain(SqliteChainStore(tmp_path / "a.db"))
    txs = _large(MAX_BLOCK_TX_BYTES // MAX_TX_BYTES + 8)
    assert sum(len(tx.encoded) for tx in txs) > MAX_BLOCK_TX_BYTES and len(txs) <= GENESIS.max_block_txs
    block, _ = chain.build_block(txs, VALIDATOR.public, chain.head.timestamp + 1000)
    with pytest.raises(InvalidBlock, match="exceed"):
        chain.execute_proposal(block)
    pool = Mempool()
    for tx in txs[:200]:
        pool.add(tx)
    chosen = pool.select(GENESIS.max_block_txs)
    size = sum(len(tx.encoded) for tx in chosen)
    assert PREFERRED_BLOCK_TX_BYTES - MAX_TX_BYTES < size <= PREFERRED_BLOCK_TX_BYTES


def test_the_mempool_is_bounded_in_bytes_and_no_sender_holds_more_than_its_share():
    """No byte limit and no per-sender cap: one member's key could fill a node's memory."""
    pool = Mempool(max_txs=100, max_bytes=20 * MAX_TX_BYTES)
    flooder, other = SigningKey(bytes([60]) * 32), SigningKey(bytes([61]) * 32)
    for nonce in range(10):
        pool.add(record(nonce=nonce, key=flooder))
    with pytest.raises(MempoolFull, match="share"):
        pool.check(record(nonce=10, key=flooder))
    assert pool.check(record(nonce=0, key=other))
    with pytest.raises(MempoolFull, match="bytes"):
        for tx in _large(40, per_sender=1):
            pool.check(tx)
            pool.add(tx)
    assert pool.max_bytes - MAX_TX_BYTES < pool.bytes <= pool.max_bytes
    pool.remove([tx.hash for tx in pool.select(100, 10**9)])
    assert pool.bytes == 0 and len(pool) == 0


def test_a_block_sync_answer_fits_a_frame_whatever_the_blocks_weigh(tmp_path):
    from types import SimpleNamespace

    from twinledger.node.sync import SYNC_BATCH, BlockSync

    store = SqliteChainStore(tmp_path / "a.db")
    chain = new_chain(store)
    txs = _large(9 * 64)
    for start in range(0, len(txs), 64):
        produce(chain, txs[start : start + 64])
    answer = BlockSync(SimpleNamespace(chain_store=store), list).raw_blocks(1)  # type: ignore[arg-type]
    size = sum(len(b["header"]) + len(b["certificate"]) + sum(map(len, b["transactions"])) for b in answer)
    assert 0 < len(answer) < min(9, SYNC_BATCH) and size <= MAX_BLOCK_TX_BYTES


def test_an_orphan_with_a_forged_body_is_refused_and_the_real_branch_is_adopted(stores):
    """An orphan was stored on its certificate alone: a real certified header with other
    transactions took the real block's place in the store, and the branch never came in."""
    a, b, follower = new_chain(stores("a")), new_chain(stores("b")), new_chain(stores("f"), key=None)
    a1 = produce(a, [record()])
    b1, b2, b3 = (produce(b, [record()]) for _ in range(3))
    follower.apply_block(*a1)
    with pytest.raises(InvalidBlock, match="transaction root"):
        follower.apply_block(Block(b2[0].header, (record(),)), b2[1])
    for block in (b1, b2, b3):
        follower.apply_block(*block)
    assert follower.head == b3[0].header


def test_a_node_killed_in_the_middle_of_a_reorganisation_finishes_it_at_restart(stores, monkeypatch):
    """Killed after the rewind, before the new branch was applied: the head stayed at the
    common ancestor, block sync found every later block 'known', and the node was stuck."""

    a, b = new_chain(stores("a")), new_chain(stores("b"))
    store = stores("f")
    follower = new_chain(store, key=None)
    left_behind = record(nonce=0, key=SigningKey(bytes([70]) * 32))  # valid on the new branch too
    for block in [produce(a, [tx]) for tx in (record(), left_behind, record())]:
        follower.apply_block(*block)
    branch = [produce(b, [record()]) for _ in range(4)]
    for block in (branch[0], branch[1], branch[3]):  # shorter than the head's, and an orphan
        follower.apply_block(*block)
    assert follower.head == a.head

    class Killed(BaseException):
        pass

    def killed(name):
        if name == "reorganisation.rewound":
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(chain_module, "kill_point", killed)
        with pytest.raises(Killed):
            follower.apply_block(*branch[2])  # joins the orphan, longer: rewound to genesis, then killed
    assert store.head().height == 0
    restarted = new_chain(stores("f"), key=None)  # the same database, opened again
    assert restarted.head == b.head
    assert all(restarted.apply_block(*block).status == "known" for block in branch)
    assert left_behind.hash in {tx.hash for tx in store.pending()}, "journaled again: a restart offers it"


def test_one_senders_run_that_does_not_fit_leaves_room_for_the_others():
    """A sender that sent its highest nonce first, then 69 of about 60 kB, made the first
    batch larger than a block; selection stopped there, and every block was empty."""
    pool = Mempool()
    alice, bob = SigningKey(bytes([71]) * 32), SigningKey(bytes([72]) * 32)
    for nonce in [70, *range(1, 70)]:
        pool.add(record(nonce=nonce, key=alice, payload=os.urandom(60_000)))
    for nonce in range(1, 50):
        pool.add(record(nonce=nonce, key=bob))
    chosen = pool.select(1000)
    mine = [t.nonce for t in chosen if t.sender == alice.public]
    assert mine == list(range(1, len(mine) + 1)) and len(mine) > 0, "a prefix of her run, in nonce order"
    assert sum(t.sender == bob.public for t in chosen) == 49
    assert sum(len(t.encoded) for t in chosen) <= PREFERRED_BLOCK_TX_BYTES


def test_a_reorganisation_killed_part_way_journals_the_whole_branch_it_left(stores, monkeypatch):

    a, b = new_chain(stores("a")), new_chain(stores("b"))
    store = stores("f")
    follower = new_chain(store, key=None)
    lost = record(nonce=0, key=SigningKey(bytes([73]) * 32))
    for block in [produce(a, [tx]) for tx in (record(), lost, record())]:
        follower.apply_block(*block)
    branch = [produce(b, [record()]) for _ in range(4)]
    for block in (branch[0], branch[1], branch[3]):
        follower.apply_block(*block)

    class Killed(BaseException):
        pass

    applied = []

    def killed_after_two(name):
        if name == "reorganisation.part-way":
            applied.append(name)
            if len(applied) == 2:
                raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(chain_module, "kill_point", killed_after_two)
        with pytest.raises(Killed):
            follower.apply_block(*branch[2])
    assert store.head().height == 2, "two blocks of the new branch applied, then killed"
    restarted = new_chain(stores("f"), key=None)
    assert restarted.head == b.head
    assert lost.hash in {tx.hash for tx in store.pending()}, "the old branch's transaction at height 2"


def test_a_node_killed_after_a_reorganisation_before_it_journaled_the_branch_it_left(stores):
    """Killed once the new branch was applied, before what the old one held was pending
    again (a kill point the random kills rarely hit): at restart the head was the fork
    choice's, nothing looked unfinished, and the transaction was lost."""
    a, b = new_chain(stores("a")), new_chain(stores("b"))
    store = stores("f")
    follower = new_chain(store, key=None)
    lost = record(nonce=0, key=SigningKey(bytes([74]) * 32))
    for block in [produce(a, [tx]) for tx in (record(), lost)]:
        follower.apply_block(*block)
    outcomes = [follower.apply_block(*block) for block in [produce(b, [record()]) for _ in range(3)]]
    assert any(outcome.abandoned for outcome in outcomes) and follower.head == b.head  # the ledger would journal next
    assert lost.hash not in {tx.hash for tx in store.pending()}
    restarted = new_chain(stores("f"), key=None)
    assert restarted.head == b.head
    assert lost.hash in {tx.hash for tx in store.pending()}, "journaled at restart"
    new_chain(stores("f"), key=None)
    assert sum(tx.hash == lost.hash for tx in store.pending()) == 1


def _certified_bad_branch(chain, length):
    """Blocks on ``chain``'s head that a faulty authority certified: the first one's state
    root is not what its execution gives, so none of them executes."""
    good, _ = chain.build_block([], VALIDATOR.public, chain.head.timestamp + 1000)
    blocks = [Block(dataclasses.replace(good.header, state_root=bytes(32)), ())]
    while len(blocks) < length:
        parent = blocks[-1].header
        blocks.append(Block(dataclasses.replace(parent, height=parent.height + 1, previous=parent.hash,
                                                timestamp=parent.timestamp + 1), ()))  # fmt: skip
    return [(block, chain.consensus.certify(block)) for block in blocks]


def test_a_certified_branch_that_does_not_execute_strands_no_one(stores, monkeypatch):
    """Found by review: while the highest leaf was a block that does not execute, every
    block that extended the head rewound the chain to the fork point and raised; a node
    killed on that way restarted at the fork point, its committed transactions gone. A
    branch is now tried out on the ancestor's state before anything is rewound."""
    a, b, store = new_chain(stores("a")), new_chain(stores("b")), stores("f")
    follower = new_chain(store, key=None)
    mine = SigningKey(bytes([75]) * 32)
    acknowledged = [record(nonce=n, key=mine) for n in range(3)]
    blocks = [produce(a, [tx]) for tx in acknowledged]
    for block in blocks:
        follower.apply_block(*block)
    b.apply_block(*blocks[0])
    bad = _certified_bad_branch(b, 3)  # heights 2 to 4: higher than the head at 3
    assert [follower.apply_block(*block).status for block in reversed(bad)] == ["orphan", "orphan", "invalid"]
    old_head = follower.head
    assert old_head == a.head
    on_bad = _certified_bad_branch(b, 4)[-1]
    with pytest.raises(InvalidBlock, match="builds on"):
        follower.apply_block(*on_bad)

    reached = []
    with monkeypatch.context() as patch:
        patch.setattr(chain_module, "kill_point", reached.append)
        new_chain(stores("f"), key=None)  # its tree holds the bad branch again: it is tried out, not applied
    assert "reorganisation.rewound" not in reached, "a branch is tried out before anything is rewound"
    restarted = new_chain(stores("f"), key=None)
    assert restarted.head == old_head
    assert all(store.transaction(tx.hash) is not None for tx in acknowledged)
    rewinds = []
    monkeypatch.setattr(chain_module.Chain, "_rewind", lambda self, ancestor: rewinds.append(ancestor))
    for tx in [record(nonce=n, key=mine) for n in range(3, 6)]:
        assert restarted.apply_block(*produce(a, [tx])).status == "head"
    assert not rewinds, "a bad branch found out costs nothing more"


def test_a_reorganisation_on_a_full_mempool_still_returns_what_it_left(stores):
    """Found by review: the abandoned transactions met the mempool's bounds, were dropped
    and never journaled. They were admitted once; the bounds are for new ones."""
    a, b, store = new_chain(stores("a")), new_chain(stores("b")), stores("f")
    follower = new_chain(store, key=None)
    pool = Mempool(max_txs=20)
    for n in range(20):
        pool.add(record(nonce=n, key=SigningKey(bytes([76]) * 32)))
    sender = SigningKey(bytes([77]) * 32)
    left = [record(nonce=n, key=sender) for n in range(12)]
    for block in (produce(a, left[:6]), produce(a, left[6:])):
        follower.apply_block(*block)
    outcomes = [follower.apply_block(*produce(b, [record()])) for _ in range(3)]
    returned = return_abandoned(follower, next(o for o in outcomes if o.abandoned), pool)
    assert {tx.hash for tx in returned} == {tx.hash for tx in left}
    assert {tx.hash for tx in left} <= {tx.hash for tx in store.pending()}


def test_a_reorganisation_broken_by_a_storage_error_is_finished_and_loses_nothing(stores, monkeypatch):
    """Found by review: a disk error part-way left the mark; the import that finished the
    switch saw no old branch, and a later reorganisation cleared the mark unread."""
    import sqlite3

    from twinledger.ledger.chain import Chain

    a, b, store = new_chain(stores("a")), new_chain(stores("b")), stores("f")
    follower = new_chain(store, key=None)
    sender = SigningKey(bytes([78]) * 32)
    left = [record(nonce=n, key=sender) for n in range(2)]
    for tx in left:
        follower.apply_block(*produce(a, [tx]))
    branch = [produce(b, [record()]) for _ in range(4)]
    follower.apply_block(*branch[0])
    original, calls = Chain._commit, []

    def disk_full_once(self, block, certificate, result):
        calls.append(block)
        if len(calls) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, block, certificate, result)

    rest = branch[1:]
    with monkeypatch.context() as patch:
        patch.setattr(Chain, "_commit", disk_full_once)
        with pytest.raises(sqlite3.OperationalError):
            while rest:  # the import that switches fails at the second block of the branch
                calls.clear()
                follower.apply_block(*rest.pop(0))
    pool, adopted = Mempool(), set()
    for block in rest:
        outcome = follower.apply_block(*block)
        adopted |= {block.hash for block in outcome.adopted}
        if outcome.abandoned:
            return_abandoned(follower, outcome, pool)
    assert follower.head == b.head
    assert adopted == {block.hash for block, _ in branch}, "the blocks committed before the error are reported too"
    assert {tx.hash for tx in left} <= {tx.hash for tx in store.pending()} & set(pool._txs)


def test_an_orphan_is_validated_in_full_once_its_parent_arrives(stores):
    """Found by review: an orphan was only checked against its transaction root; once its
    parent came, it was executed without the block checks — a wrong height, a time that
    does not advance and a forged transaction signature were committed."""
    a = new_chain(stores("a"))
    b1, b2 = produce(a, [record()]), produce(a, [])
    forged = dataclasses.replace(record(nonce=500), signature=bytes(64))
    built, _ = a.build_block([forged], VALIDATOR.public, a.head.timestamp + 1)
    header = dataclasses.replace(built.header, height=1000, timestamp=a.head.timestamp)
    result = a.app.execute_block(a.state(), header, built.transactions, a.head.state_root)
    orphan = Block(dataclasses.replace(header, state_root=result.state_root), built.transactions)
    follower = new_chain(stores("f"), key=None)
    follower.apply_block(*b1)
    assert follower.apply_block(orphan, a.consensus.certify(orphan)).status == "orphan"
    assert follower.apply_block(*b2).status == "head"
    assert follower.head == b2[0].header and follower.store.transaction(forged.hash) is None
    assert orphan.hash in follower.invalid


def test_blocks_of_a_chain_that_can_fork_keep_their_payloads(stores):
    """Found by review: a node that stripped what it does not keep could not execute its
    old branch again, found its valid blocks invalid, and lost what they held. Only
    engines whose blocks are final strip."""
    from twinledger.consensus.bft import BftConsensus
    from twinledger.consensus.poa import PoaConsensus
    from twinledger.consensus.solo import SoloConsensus
    from twinledger.contracts import default_runtime
    from twinledger.ledger.chain import Chain

    class Forkable(SoloConsensus):
        final = False

    assert not PoaConsensus.final and BftConsensus.final
    a = new_chain(stores("a"))
    follower = Chain(stores("f"), default_runtime(), Forkable(VALIDATOR.public), GENESIS, keep=lambda tx: False)
    block, certificate = produce(a, [record()])
    follower.apply_block(block, certificate)
    assert not any(tx.stripped for tx in follower.store.block_by_hash(block.hash).transactions)


def test_unauthenticated_blocks_do_not_grow_what_the_chain_remembers(stores):
    a, follower = new_chain(stores("a")), new_chain(stores("f"), key=None)
    follower.apply_block(*produce(a, [record()]))
    bad = _certified_bad_branch(a, 1)[0]
    with pytest.raises(InvalidBlock):
        follower.apply_block(*bad)
    remembered = set(follower.invalid)
    assert bad[0].hash in remembered
    for _ in range(50):
        child = Block(dataclasses.replace(bad[0].header, height=3, previous=bad[0].hash, tx_root=os.urandom(32)), ())
        with pytest.raises(InvalidBlock):
            follower.apply_block(child, CommitCertificate("test-chain", 3, 0, child.hash, ()))
    assert follower.invalid == remembered


def test_a_decided_block_whose_parent_was_overtaken_by_sync_goes_to_fork_choice(stores):
    """Found in the poa fork test: an authority decided its block while block sync applied
    a sibling at the same height; the commit found the head moved, raised, and block
    production stopped for good. An engine without finality forks: fork choice places the
    decided block like any other certified one."""
    import asyncio

    from twinledger.consensus.solo import SoloConsensus
    from twinledger.contracts import default_runtime
    from twinledger.ledger.chain import Chain
    from twinledger.node.ledger import LedgerService

    class Forkable(SoloConsensus):
        final = False

    def race(final: bool) -> Chain:
        engine = SoloConsensus if final else Forkable
        mine = Chain(stores(f"mine-{final}"), default_runtime(), engine(VALIDATOR.public, VALIDATOR), GENESIS)
        theirs = Chain(stores(f"theirs-{final}"), default_runtime(), engine(VALIDATOR.public, VALIDATOR), GENESIS)
        decided, result = mine.build_block([record()], VALIDATOR.public, mine.head.timestamp + 1000)
        synced = produce(theirs, [record()], timestamp=mine.head.timestamp + 2000)
        service = LedgerService(mine, Mempool())

        async def both() -> None:
            await service.apply_synced(*synced)  # sync first, while the engine still holds its block
            await service.commit_block(decided, mine.consensus.certify(decided), result)

        try:
            asyncio.run(both())
        finally:
            service.close()
        winner = min((decided, synced[0]), key=lambda b: b.hash)  # same height: the lowest hash
        assert mine.head == winner.header
        assert {decided.hash, synced[0].hash} <= set(mine.tree.headers), "both kept: fork choice can move again"
        return mine

    race(final=False)
    with pytest.raises(InvalidBlock, match="no longer extends the head"):  # final blocks: two at a height is a fault
        race(final=True)
