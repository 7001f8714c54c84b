"""One Byzantine validator against the consensus machine and its driver: floods of
validly signed votes, equivocation repeated, proposals far ahead or badly signed. Each
test failed before the bound it checks was built (issue 19)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from twinledger.consensus import tendermint as tm
from twinledger.consensus.bft import BftConsensus
from twinledger.consensus.messages import proposal_message, signed_vote_message, vote_body
from twinledger.crypto.keys import SigningKey
from twinledger.errors import InvalidProof
from twinledger.ledger.genesis import Genesis, GenesisValidator

KEYS = sorted((SigningKey(bytes([i + 1]) * 32) for i in range(4)), key=lambda k: k.public)
VALIDATORS = tuple(k.public for k in KEYS)
BYZANTINE = KEYS[3]
GENESIS = Genesis("c", 1_700_000_000_000, "bft", tuple(GenesisValidator(f"org{i}", k.public) for i, k in enumerate(KEYS)),
                  100, 1000)  # fmt: skip


def signed_vote(key: SigningKey, kind: tm.VoteKind, height: int, round_: int, block_hash: bytes) -> tm.Vote:
    signature = key.sign(signed_vote_message("c", kind, height, round_, block_hash))
    return tm.Vote(kind, height, round_, block_hash, key.public, signature)


def test_a_vote_flood_is_bounded_and_the_honest_step_stays_cheap():
    """2,000 precommits for distinct rounds used to stay in the log: the next honest step
    cost 145 s. Votes past the round lead are dropped, and evidence is reported once."""
    state, _ = tm.start_height(VALIDATORS, VALIDATORS[0], 1)
    for round_ in range(2000):
        state, _ = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PRECOMMIT, 1, round_, os.urandom(32), BYZANTINE.public)))
    assert len(state.votes) == tm.MAX_ROUND_LEAD + 1
    evidence = []
    for _ in range(50):  # the same slot, equivocated again and again
        state, effects = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PRECOMMIT, 1, 0, os.urandom(32), BYZANTINE.public)))
        evidence += [e for e in effects if isinstance(e, tm.Equivocation)]
    assert len(evidence) == 1
    started = time.perf_counter()
    for key in VALIDATORS[:3]:  # the honest three still decide
        state, effects = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PRECOMMIT, 1, 0, b"v" * 32, key)))
    assert any(isinstance(e, tm.FetchBlock) for e in effects)
    assert time.perf_counter() - started < 0.5


def test_f_plus_one_votes_within_the_lead_still_move_a_lagging_validator_on():
    """The bound must not cost liveness: honest validators a few rounds ahead still pull
    a lagging one to their round (L55)."""
    state, _ = tm.start_height(VALIDATORS, VALIDATORS[0], 1)
    for key in VALIDATORS[1:3]:
        state, _ = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PREVOTE, 1, tm.MAX_ROUND_LEAD, tm.NIL, key)))
    assert state.round == tm.MAX_ROUND_LEAD


def _driver() -> tuple[BftConsensus, asyncio.Queue]:
    bft = BftConsensus(GENESIS, KEYS[0])
    bft.height = 5
    bft._inbox = asyncio.Queue()
    return bft, bft._inbox


def test_the_driver_neither_queues_nor_relays_votes_out_of_reach_or_past_two_per_slot():
    bft, inbox = _driver()
    far = signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, 5, tm.MAX_ROUND_LEAD + 1, tm.NIL)
    two_ahead = signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, 7, 0, tm.NIL)
    assert not bft.receive("vote", vote_body(far)) and not bft.receive("vote", vote_body(two_ahead))
    relayed = [bft.receive("vote", vote_body(signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, 5, 1, os.urandom(32))))
               for _ in range(20)]  # fmt: skip
    assert relayed == [True, True] + [False] * 18, "the first two are the evidence; the rest add nothing"
    assert inbox.qsize() == 2
    forged = vote_body(signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, 5, 2, tm.NIL))
    forged["signature"] = bytes(64)
    with pytest.raises(InvalidProof):
        bft.receive("vote", forged)


def test_messages_for_the_next_height_are_bounded_per_slot():
    """A validator could park 10,000 messages for the next height, replayed in bulk."""
    bft, inbox = _driver()
    bft.state = None
    taken = [bft.receive("vote", vote_body(signed_vote(BYZANTINE, tm.VoteKind.PRECOMMIT, 6, 0, os.urandom(32))))
             for _ in range(500)]  # fmt: skip
    assert sum(taken) == 2

    async def park() -> None:
        bft._host = type("Host", (), {"request_blocks": lambda self, height: None})()  # type: ignore[assignment]
        while not inbox.empty():
            await bft._handle(*inbox.get_nowait())

    asyncio.run(park())
    assert len(bft._future) == 2


def test_a_proposal_signature_is_checked_before_its_block_is_decoded():
    bft, inbox = _driver()
    proposer = next(k for k in KEYS if k.public == tm.proposer(VALIDATORS, 5, 0))
    proposal = tm.Proposal(5, 0, b"b" * 32, -1, proposer.public)
    body = {"height": 5, "round": 0, "block_hash": b"b" * 32, "valid_round": -1, "proposer": proposer.public,
            "signature": bytes(64), "header": b"\xff" * 1000, "transactions": ["not a transaction"] * 1000}  # fmt: skip
    with pytest.raises(InvalidProof):
        bft.receive("proposal", body)
    impostor = {**body, "proposer": BYZANTINE.public if proposer is not BYZANTINE else KEYS[0].public}
    assert not bft.receive("proposal", impostor)
    far = {**body, "round": tm.MAX_ROUND_LEAD + 4, "signature": proposer.sign(proposal_message("c", proposal))}
    far["proposer"] = tm.proposer(VALIDATORS, 5, tm.MAX_ROUND_LEAD + 4)
    assert not bft.receive("proposal", far)
    assert inbox.empty()


def _peer_manager():
    from twinledger.crypto.certs import NodeIdentity
    from twinledger.net.peers import PeerManager

    me = NodeIdentity("org0", "node-0", KEYS[0].public, bytes(32))
    return PeerManager(me=me, chain_id="c", genesis_hash=bytes(32), listen_host="127.0.0.1", listen_port=7000,
                       advertise=None, seeds=["seed.example:7000"], target_peers=8, server_ssl=None, client_ssl=None,
                       ca_cert=None, org_cert_der=b"", handler=None, height=lambda: 0)  # type: ignore[arg-type]


def _member(index: int):
    from twinledger.crypto.certs import NodeIdentity
    from twinledger.net.peers import Peer

    return Peer(NodeIdentity("org3", f"node-{index}", bytes([index]) * 32, bytes(32)), f"10.0.0.{index}:7000", False,
                None)  # type: ignore[arg-type]  # fmt: skip


def test_a_member_cannot_grow_the_address_book_or_the_frames_it_sends():
    """Any member could send 1,000 addresses per ``peers`` frame, kept for good and passed
    on, until every ``peers`` message outgrew the frame limit and the peer task died."""
    from twinledger.net import peers
    from twinledger.net.wire import encode_frame

    book = _peer_manager()
    rogue = _member(9)
    for frame in range(200):
        book._learn(rogue, [f"h{frame}-{i}.example:{1 + i}" for i in range(1000)])
    assert len(book.known) <= peers.MAX_LEARNED_PER_PEER + 1
    for index in range(100):  # many identities of one member
        book._learn(_member(index), [f"m{index}-{i}.example:7000" for i in range(peers.MAX_LEARNED_PER_PEER)])
    assert sum(map(len, book.learned.values())) <= peers.MAX_LEARNED
    assert book.shared() == sorted({"seed.example:7000", book.address}), "only checked addresses are passed on"
    book.verified.update(f"v{i}.example:7000" for i in range(5000))
    assert len(encode_frame("peers", {"addresses": book.shared()})) < 64 * 1024
    book._learn(rogue, ["no-port", "h:0", "h:99999", "bad host!:80", 7, "x" * 400 + ":1", "[::1]:7000", "ok.example:1"])
    assert book.learned[rogue.key] == {"[::1]:7000", "ok.example:1"}
    with pytest.raises(Exception, match="must be a list"):
        book._learn(rogue, "everything")


def test_a_key_the_head_does_not_know_is_synced_from_but_told_nothing():
    """Review: a node its organisation removed mints a certificate for a fresh key and
    claims a greater height; while this node cannot tell (the key may have joined since),
    it may send blocks but gets no gossip and no blocks; once this node is as far, it goes."""
    from twinledger.errors import TwinledgerError
    from twinledger.net.wire import encode_frame

    book = _peer_manager()
    book.height = lambda: 10
    standings = {bytes([1]) * 32: "member", bytes([2]) * 32: "unknown", bytes([3]) * 32: "refused"}
    book.standing = lambda identity: standings[identity.signing_key]
    member, stranger, removed = _member(1), _member(2), _member(3)
    assert book.check_member(member.identity, 0) is True
    assert book.check_member(stranger.identity, 11) is False, "ahead of this node: perhaps new"
    for identity, height in ((stranger.identity, 10), (removed.identity, 10**9)):
        with pytest.raises(TwinledgerError, match="is not a member node"):
            book.check_member(identity, height)
    member.member, stranger.member = True, False
    book.peers = {member.key: member, stranger.key: stranger}
    book.broadcast("txs", {"txs": [b"tx"]})
    assert member.queue.qsize() == 1 and stranger.queue.qsize() == 0
    assert encode_frame("txs", {"txs": [b"tx"]}) == member.queue.get_nowait()


def test_a_bloated_address_book_neither_breaks_nor_half_registers_a_handshake(tmp_path):
    """With thousands of addresses known, the handshake's ``peers`` frame outgrew the frame
    limit after the peer was registered: the connection died, the peer stayed registered,
    and the node never dialled it again. Two real peer managers over mutual TLS."""
    from types import SimpleNamespace

    from network_helpers import make_network

    from twinledger.config import load_config
    from twinledger.contracts import default_runtime
    from twinledger.ledger.genesis import Genesis
    from twinledger.ledger.verify import MemoryState
    from twinledger.node.roles import PeerNetwork

    net = make_network(tmp_path / "net", orgs=["manufacturer", "owner"])
    configs = [load_config(home) for home in net.homes]
    genesis = Genesis.read(configs[0].genesis_path)
    state = MemoryState()
    state.values.update(default_runtime().genesis_result(genesis).writes)  # both nodes are members there
    ledger = SimpleNamespace(chain_id=genesis.chain_id, genesis=genesis, head=SimpleNamespace(height=0),
                             head_state=lambda: state, after_block=[])  # fmt: skip

    async def scenario() -> None:
        a, b = (PeerNetwork(config, ledger) for config in configs)  # type: ignore[arg-type]
        await a.start()
        assert a.manager is not None
        a.manager.target_peers = 0  # a only answers (it would dial made-up names)
        a.manager.verified.update(f"{i:06d}.{'n' * 280}.example:7000" for i in range(240_000))  # > one frame
        await b.start()
        assert b.manager is not None
        b.manager.target_peers = 1  # a is enough (a's made-up names are not worth a DNS lookup)
        try:
            async with asyncio.timeout(30):
                while not (a.peers() and b.peers()):
                    await asyncio.sleep(0.05)
            assert a.peers()[0].writer.is_closing() is False
        finally:
            await b.stop()
        async with asyncio.timeout(30):
            while a.peers():  # b is gone: a forgets it, and would dial it again
                await asyncio.sleep(0.05)
        await a.stop()

    asyncio.run(scenario())


def test_an_untimely_proposal_gets_a_nil_prevote_unless_a_polka_vouches_for_it():
    """The proposer set the block time alone (anything after its parent's): it decided
    when grants and tokens expire. Now a new proposal must arrive close to its block time."""
    from twinledger.consensus.bft import MESSAGE_DELAY_MS, PRECISION_MS, timely

    now = 1_700_000_000_000
    assert timely(now, now, 0) and timely(now, now - PRECISION_MS, 0) and timely(now, now + MESSAGE_DELAY_MS, 0)
    assert not timely(now + PRECISION_MS + 1, now, 0), "from the future"
    assert not timely(now - MESSAGE_DELAY_MS - PRECISION_MS - 1, now, 0), "from the past"
    assert timely(now - MESSAGE_DELAY_MS - PRECISION_MS - 1, now, 5), "the delay grows with the round"
    assert timely(now, now, 2**62) and not timely(now + 10**9, now, 2**62)

    me = VALIDATORS[0]
    height = next(h for h in range(1, 20) if tm.proposer(VALIDATORS, h, 0) != me and tm.proposer(VALIDATORS, h, 1) != me)
    proposal = tm.Proposal(height, 0, b"v" * 32, -1, tm.proposer(VALIDATORS, height, 0))
    for on_time, prevote in ((True, b"v" * 32), (False, tm.NIL)):
        state, _ = tm.start_height(VALIDATORS, me, height)
        _, effects = tm.step(state, tm.ProposalReceived(proposal, True, on_time))
        assert tm.CastVote(tm.VoteKind.PREVOTE, height, 0, prevote) in effects
    # Round 1 re-proposes the value 2f+1 prevoted in round 0: no timeliness asked (L28).
    state, _ = tm.start_height(VALIDATORS, me, height)
    for key in VALIDATORS[1:]:
        state, _ = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PREVOTE, height, 0, b"v" * 32, key)))
        state, _ = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PRECOMMIT, height, 0, tm.NIL, key)))
    state, _ = tm.step(state, tm.TimeoutFired(tm.Step.PRECOMMIT, height, 0))
    assert state.round == 1
    again = tm.Proposal(height, 1, b"v" * 32, 0, tm.proposer(VALIDATORS, height, 1))
    _, effects = tm.step(state, tm.ProposalReceived(again, True, timely=False))
    assert tm.CastVote(tm.VoteKind.PREVOTE, height, 1, b"v" * 32) in effects


def test_the_driver_judges_a_stale_proposal_untimely_and_its_own_timely():
    from twinledger.consensus.messages import ProposalMessage
    from twinledger.core.types import Block, BlockHeader

    class Host:
        async def execute_proposal(self, block: Block) -> object:
            return object()

    bft, _ = _driver()
    bft._host = Host()  # type: ignore[assignment]
    now = int(time.time() * 1000)
    proposal = tm.Proposal(5, 0, b"b" * 32, -1, VALIDATORS[1])
    for block_time, received, expected in ((now - 60_000, now, False), (now, now, True), (now - 60_000, None, True)):
        header = BlockHeader("c", 5, block_time, bytes(32), bytes(32), 0, bytes(32), bytes(32), VALIDATORS[1])
        judged = asyncio.run(bft._judge(ProposalMessage(proposal, Block(header, ()), received)))
        assert (judged.block_valid, judged.timely) == (True, expected)


def test_a_restarted_validator_waits_for_the_polka_before_its_prevote_timeout():
    """Restarted after prevoting, a validator armed its prevote timeout at once; it fired
    before regossip brought the prevotes back, and it precommitted nil."""
    from twinledger.consensus.signer import VoteGuard, resume_height

    storage: dict[str, bytes] = {}
    guard = VoteGuard(lambda: storage.get("g"), lambda raw: storage.__setitem__("g", raw))
    me, height, value = VALIDATORS[0], 3, b"v" * 32
    proposal = tm.Proposal(height, 0, value, -1, tm.proposer(VALIDATORS, height, 0))
    state, _ = tm.start_height(VALIDATORS, me, height)
    state, effects = tm.step(state, tm.ProposalReceived(proposal, True))
    assert guard.permit(state, tm.VoteKind.PREVOTE, 0, value)  # signed, then the process died

    state, effects = resume_height(VALIDATORS, me, height, VoteGuard(lambda: storage.get("g"), lambda raw: None))
    assert tm.CastVote(tm.VoteKind.PREVOTE, height, 0, value) in effects
    assert not any(isinstance(e, tm.ScheduleTimeout) and e.step == tm.Step.PREVOTE for e in effects)
    state, _ = tm.step(state, tm.ProposalReceived(proposal, True))  # regossip brings all back
    for key in VALIDATORS[1:3]:
        state, effects = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PREVOTE, height, 0, value, key)))
    state, effects = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PREVOTE, height, 0, value, me)))
    assert tm.CastVote(tm.VoteKind.PRECOMMIT, height, 0, value) in effects


def test_a_proposer_that_lost_its_valid_block_proposes_a_new_one_as_new():
    """After a restart the valid value's block is gone: the proposer built a new block and
    sent it under the old valid round, a proposal no correct validator could act on."""
    from twinledger.consensus.signer import VoteGuard
    from twinledger.core.types import Block, BlockHeader

    sent: list[dict] = []

    class Host:
        async def build_block(self, proposer: bytes, allow_empty: bool) -> tuple[Block, object]:
            header = BlockHeader("c", 5, int(time.time() * 1000), bytes(32), bytes(32), 0, bytes(32), bytes(32), proposer)
            return Block(header, ()), object()

        async def durably(self, fn, *args):
            return fn(*args)

        def broadcast(self, message_type: str, body: dict) -> None:
            sent.append(body)

    bft, _ = _driver()
    bft._host = Host()  # type: ignore[assignment]
    bft._guard = VoteGuard(lambda: None, lambda raw: None)
    bft.state = tm.State(VALIDATORS, KEYS[0].public, 5, round=2, valid_value=b"lost" + bytes(28), valid_round=1)
    asyncio.run(bft._propose(tm.BuildProposal(5, 2, b"lost" + bytes(28), 1)))
    assert sent[0]["valid_round"] == -1 and sent[0]["block_hash"] != b"lost" + bytes(28)


def test_a_validator_shown_one_value_locks_on_the_other_value_that_had_its_polka():
    """Only the first of an equivocating proposer's two proposals was recorded: shown A
    first, a validator could never lock on B, though 2f+1 prevoted B."""
    me, height = VALIDATORS[0], 4
    rogue = tm.proposer(VALIDATORS, height, 0)
    a, b = tm.Proposal(height, 0, b"a" * 32, -1, rogue), tm.Proposal(height, 0, b"b" * 32, -1, rogue)
    state, _ = tm.start_height(VALIDATORS, me, height)
    state, effects = tm.step(state, tm.ProposalReceived(a, True))
    assert tm.CastVote(tm.VoteKind.PREVOTE, height, 0, b"a" * 32) in effects
    for key in (k for k in VALIDATORS if k != me):
        state, _ = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PREVOTE, height, 0, b"b" * 32, key)))
    state, effects = tm.step(state, tm.ProposalReceived(b, True))
    assert tm.CastVote(tm.VoteKind.PRECOMMIT, height, 0, b"b" * 32) in effects
    assert (state.locked_value, state.locked_round) == (b"b" * 32, 0)
    third = tm.Proposal(height, 0, b"c" * 32, -1, rogue)
    assert tm.step(state, tm.ProposalReceived(third, True))[0].proposals == state.proposals, "two at most"


def test_the_driver_takes_two_proposals_per_round_at_most():
    from twinledger.core.types import BlockHeader, encode_header

    bft, inbox = _driver()
    rogue = next(k for k in KEYS if k.public == tm.proposer(VALIDATORS, 5, 0))
    accepted = []
    for n in range(5):
        header = BlockHeader("c", 5, n + 1, bytes(32), bytes(32), 0, bytes(32), bytes(32), rogue.public)
        p = tm.Proposal(5, 0, header.hash, -1, rogue.public)
        body = {"height": 5, "round": 0, "block_hash": header.hash, "valid_round": -1, "proposer": rogue.public,
                "signature": rogue.sign(proposal_message("c", p)), "header": encode_header(header), "transactions": []}
        accepted.append(bft.receive("proposal", body))
    assert accepted == [True, True, False, False, False] and inbox.qsize() == 2


def test_the_vote_guard_lives_beside_the_key_and_outlives_a_wiped_chain_store(tmp_path):
    """The guard lived in the chain database: wiping it to sync again erased what the key
    had signed, and the validator could sign a conflicting vote."""
    from ledger_helpers import new_chain

    from twinledger.consensus.signer import VoteGuard
    from twinledger.ledger.mempool import Mempool
    from twinledger.ledger.store.sqlite import SqliteChainStore
    from twinledger.node.ledger import VOTE_GUARD, LedgerService

    guard_path = tmp_path / "keys" / "vote-guard"
    state = tm.State(VALIDATORS, VALIDATORS[0], 7)
    old_store = SqliteChainStore(tmp_path / "old.db")
    first = LedgerService(new_chain(old_store), Mempool(), guard_path)
    try:
        guard = VoteGuard(*first.vote_guard())
        assert guard.permit(state, tm.VoteKind.PREVOTE, 0, b"v" * 32)
    finally:
        first.close()
    assert old_store.meta(VOTE_GUARD) is not None, "copied to the store, for a binary from before"
    assert guard_path.exists() and guard_path.stat().st_mode & 0o777 == 0o600
    wiped = LedgerService(new_chain(SqliteChainStore(tmp_path / "new.db")), Mempool(), guard_path)
    try:
        assert not VoteGuard(*wiped.vote_guard()).permit(state, tm.VoteKind.PREVOTE, 0, b"w" * 32)
    finally:
        wiped.close()


def test_a_node_from_before_takes_its_guard_from_the_chain_store(tmp_path):
    from ledger_helpers import new_chain

    from twinledger.consensus.signer import VoteGuard
    from twinledger.ledger.mempool import Mempool
    from twinledger.ledger.store.sqlite import SqliteChainStore
    from twinledger.node.ledger import VOTE_GUARD, LedgerService

    state = tm.State(VALIDATORS, VALIDATORS[0], 7)
    store = SqliteChainStore(tmp_path / "chain.db")
    VoteGuard(lambda: None, lambda raw: store.set_meta(VOTE_GUARD, raw)).permit(state, tm.VoteKind.PREVOTE, 0, b"v" * 32)
    service = LedgerService(new_chain(store), Mempool(), tmp_path / "keys" / "vote-guard")
    try:
        assert not VoteGuard(*service.vote_guard()).permit(state, tm.VoteKind.PREVOTE, 0, b"w" * 32)
    finally:
        service.close()


def test_an_equivocators_vote_for_a_proposed_value_counts_and_the_proof_of_lock_is_resent():
    """Only an equivocator's first vote in a slot counted, and a node resent only its own
    votes: a validator that saw the equivocator's other vote first could never see the
    polka another validator locked on, and the consortium stalled (found by the
    simulator's new Byzantine behaviours)."""
    me, height, value = VALIDATORS[0], 6, b"x" * 32
    state, _ = tm.start_height(VALIDATORS, me, height)
    state, _ = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PREVOTE, height, 0, b"y" * 32, BYZANTINE.public)))
    state, _ = tm.step(state, tm.ProposalReceived(tm.Proposal(height, 0, value, -1, tm.proposer(VALIDATORS, height, 0)), True))
    for key in (VALIDATORS[1], VALIDATORS[2], BYZANTINE.public):
        state, effects = tm.step(state, tm.VoteReceived(tm.Vote(tm.VoteKind.PREVOTE, height, 0, value, key)))
    assert (state.valid_value, state.valid_round) == (value, 0), "the equivocator's second vote made the polka"
    junk = tm.Vote(tm.VoteKind.PREVOTE, height, 0, b"z" * 32, BYZANTINE.public)
    assert tm.step(state, tm.VoteReceived(junk))[0].votes == state.votes, "a vote for nothing proposed is not kept"

    bft, _ = _driver()
    bft.height = height
    sent: list[dict] = []
    bft._host = type("Host", (), {"broadcast": lambda self, kind, body: sent.append(body)})()  # type: ignore[assignment]
    bft.state = state
    bft._resend()
    assert {(b["validator"], b["round"]) for b in sent} == {(k, 0) for k in (VALIDATORS[1], VALIDATORS[2], BYZANTINE.public)}
    bft._proposed.add((height, value))
    bft._slots[(height, BYZANTINE.public, int(tm.VoteKind.PREVOTE), 0)] = {b"a" * 32, b"b" * 32}
    assert bft.receive("vote", vote_body(signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, height, 0, value)))
    assert not bft.receive("vote", vote_body(signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, height, 0, b"w" * 32)))


def test_a_vote_dropped_out_of_reach_is_read_again_when_resent():
    """Every vote frame was remembered as seen before the node looked at it: one dropped
    because it was out of reach was never read again, though its sender resent it."""
    from twinledger.net.wire import encode_frame

    book = _peer_manager()
    answers = iter([False, True, True])
    handled: list[str] = []

    async def handler(peer, frame) -> bool:
        handled.append(frame.type)
        return next(answers)

    book.handler = handler
    frame = encode_frame("vote", vote_body(signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, 5, 0, tm.NIL)))

    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(frame * 3)
        reader.feed_eof()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await book._read_loop(_member(9), reader)

    import contextlib

    asyncio.run(read())
    assert handled == ["vote", "vote"], "read again after the drop; then, taken, dropped unparsed as seen"


def test_a_restarted_validator_keeps_its_proof_of_lock():
    """The guard kept the lock and the valid value but not the prevotes that made them: a
    validator restarted after a polka that rested on an equivocator's vote could prove it
    to no one, and the correct validators waited on each other for good (the simulator
    found it once its faulty validators grew more tricks)."""
    from twinledger.consensus.signer import VoteGuard, resume_height

    storage: dict[str, bytes] = {}
    me, height, value = VALIDATORS[0], 8, b"p" * 32
    state, _ = tm.start_height(VALIDATORS, me, height)
    state, _ = tm.step(state, tm.ProposalReceived(tm.Proposal(height, 0, value, -1, tm.proposer(VALIDATORS, height, 0)), True))
    polka = [signed_vote(k, tm.VoteKind.PREVOTE, height, 0, value) for k in KEYS[1:]]
    for vote in polka:
        state, _ = tm.step(state, tm.VoteReceived(vote))
    assert (state.locked_value, state.valid_value) == (value, value)
    guard = VoteGuard(lambda: storage.get("g"), lambda raw: storage.__setitem__("g", raw))
    assert guard.permit(state, tm.VoteKind.PRECOMMIT, 0, value)

    restarted, _ = resume_height(VALIDATORS, me, height, VoteGuard(lambda: storage.get("g"), lambda raw: None))
    assert set(restarted.votes) >= set(polka), "the signed prevotes of the proof came back"
    assert (restarted.locked_value, restarted.locked_round, restarted.valid_round) == (value, 0, 0)


def test_messages_for_the_next_height_keep_an_equivocators_vote_for_a_proposed_value():
    """Parked for the next height, only a slot's first vote was kept, and the rest were
    remembered as seen: a validator one height behind lost the vote another's polka rested on."""
    from twinledger.core.types import BlockHeader, encode_header

    bft, inbox = _driver()
    proposer = next(k for k in KEYS if k.public == tm.proposer(VALIDATORS, 6, 0))
    header = BlockHeader("c", 6, 1, bytes(32), bytes(32), 0, bytes(32), bytes(32), proposer.public)
    p = tm.Proposal(6, 0, header.hash, -1, proposer.public)
    body = {"height": 6, "round": 0, "block_hash": header.hash, "valid_round": -1, "proposer": proposer.public,
            "signature": proposer.sign(proposal_message("c", p)), "header": encode_header(header), "transactions": []}
    assert bft.receive("proposal", body)
    assert not bft.receive("proposal", body), "the same proposal again is not taken again"
    taken = [bft.receive("vote", vote_body(signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, 6, 0, value)))
             for value in (b"z" * 32, b"y" * 32, b"q" * 32, header.hash)]  # fmt: skip
    assert taken == [True, True, False, True], "past a full slot, a vote for a proposed value is still taken"

    async def park() -> None:
        bft._host = type("Host", (), {"request_blocks": lambda self, height: None})()  # type: ignore[assignment]
        while not inbox.empty():
            await bft._handle(*inbox.get_nowait())

    asyncio.run(park())
    parked = [item.block_hash for kind, item in bft._future.values() if kind == "vote"]
    assert header.hash in parked and len(parked) == 3


def test_a_vote_or_proposal_with_a_field_more_is_refused():
    """Extra fields made the same signed vote a new frame each time: any peer could have an
    honest vote relayed without end, and fill a proposer's slot with copies of one value."""
    from twinledger.consensus.messages import parse_signed_proposal, parse_vote
    from twinledger.errors import DecodeError

    body = vote_body(signed_vote(BYZANTINE, tm.VoteKind.PREVOTE, 5, 0, tm.NIL))
    with pytest.raises(DecodeError, match="fields"):
        parse_vote({**body, "junk": 1})
    with pytest.raises(DecodeError, match="fields"):
        parse_signed_proposal({"height": 5, "round": 0, "block_hash": bytes(32), "valid_round": -1,
                               "proposer": bytes(32), "signature": bytes(64), "header": b"", "transactions": [],
                               "junk": 1})  # fmt: skip
    bft, inbox = _driver()
    assert bft.receive("vote", body) and not bft.receive("vote", body) and inbox.qsize() == 1
