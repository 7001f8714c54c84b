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


def test_messages_for_the_next_height_wait_one_per_slot():
    """A validator could park 10,000 messages for the next height, replayed in bulk."""
    bft, _ = _driver()
    bft.state = None

    async def park() -> None:
        bft._host = type("Host", (), {"request_blocks": lambda self, height: None})()  # type: ignore[assignment]
        for _ in range(500):
            await bft._handle("vote", signed_vote(BYZANTINE, tm.VoteKind.PRECOMMIT, 6, 0, os.urandom(32)))

    asyncio.run(park())
    assert len(bft._future) == 1


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
