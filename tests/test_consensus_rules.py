"""Commit certificates of bft and poa: what makes a block final, and forged ones refused;
the vote guard survives a restart of the store."""

from __future__ import annotations

import dataclasses

import pytest

from twinledger.consensus.bft import BftConsensus
from twinledger.consensus.messages import ProposalMessage
from twinledger.consensus.poa import PoaConsensus
from twinledger.consensus.signer import VoteGuard, resume_height
from twinledger.consensus.tendermint import CastVote, Proposal, State, VoteKind
from twinledger.core.types import Block, BlockHeader, CommitCertificate, VoteSignature, vote_message
from twinledger.crypto.keys import SigningKey
from twinledger.errors import InvalidBlock
from twinledger.ledger.genesis import Genesis, GenesisValidator
from twinledger.ledger.store.sqlite import SqliteChainStore

KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]


def genesis(consensus: str, authority_signatures: int = 1) -> Genesis:
    return Genesis("c", 1_700_000_000_000, consensus, tuple(GenesisValidator(f"org{i}", k.public) for i, k in enumerate(KEYS)),
                   100, 1000, authority_signatures=authority_signatures)  # fmt: skip


def header(proposer: bytes = KEYS[0].public) -> BlockHeader:
    return BlockHeader("c", 5, 1_700_000_001_000, bytes(32), bytes(32), 0, bytes(32), bytes(32), proposer)


def certificate(h: BlockHeader, signers: list[SigningKey], round_: int = 0, tamper: bool = False) -> CommitCertificate:
    message = vote_message(h.chain_id, h.height, round_, h.hash)
    signatures = [VoteSignature(k.public, k.sign(message)) for k in signers]
    if tamper:
        signatures[0] = VoteSignature(signatures[0].validator, bytes(64))
    return CommitCertificate(h.chain_id, h.height, round_, h.hash, tuple(signatures))


def test_bft_needs_more_than_two_thirds():
    bft = BftConsensus(genesis("bft"), None)
    h = header()
    bft.validate_certificate(h, certificate(h, KEYS[:3], round_=2))
    with pytest.raises(InvalidBlock, match="2 of the 3"):
        bft.validate_certificate(h, certificate(h, KEYS[:2]))
    with pytest.raises(InvalidBlock, match="does not verify"):
        bft.validate_certificate(h, certificate(h, KEYS[:3], tamper=True))
    with pytest.raises(InvalidBlock, match="non-validator"):
        bft.validate_certificate(h, certificate(h, [*KEYS[:2], SigningKey.generate()]))
    with pytest.raises(InvalidBlock, match="twice"):
        bft.validate_certificate(h, certificate(h, [KEYS[0], KEYS[1], KEYS[1]]))
    other = dataclasses.replace(h, height=6)
    with pytest.raises(InvalidBlock, match="another block"):
        bft.validate_certificate(other, certificate(h, KEYS[:3]))
    with pytest.raises(InvalidBlock, match="non-validator"):
        rogue = header(SigningKey.generate().public)
        bft.validate_certificate(rogue, certificate(rogue, KEYS[:3]))


def test_poa_needs_the_configured_authority_signatures_including_the_proposer():
    poa = PoaConsensus(genesis("poa", authority_signatures=2), None)
    h = header(KEYS[0].public)
    poa.validate_certificate(h, certificate(h, KEYS[:2]))
    with pytest.raises(InvalidBlock, match="2 authority signatures"):
        poa.validate_certificate(h, certificate(h, KEYS[:1]))
    with pytest.raises(InvalidBlock, match="proposer"):
        poa.validate_certificate(h, certificate(h, KEYS[1:3]))
    with pytest.raises(InvalidBlock, match="does not verify"):
        poa.validate_certificate(h, certificate(h, KEYS[:2], tamper=True))
    assert {poa.leader(5, a) for a in range(4)} == {k.public for k in KEYS}


def test_vote_guard_refuses_conflicts_after_a_restart(tmp_path):
    path = tmp_path / "chain.db"
    validators = tuple(k.public for k in KEYS)
    store = SqliteChainStore(path)
    guard = VoteGuard(lambda: store.meta("guard"), lambda raw: store.set_meta("guard", raw))
    state = dataclasses.replace(State(validators, KEYS[0].public, 7), round=2, locked_value=b"v" * 32, locked_round=2)
    assert guard.permit(state, VoteKind.PREVOTE, 2, b"v" * 32)
    assert guard.permit(state, VoteKind.PRECOMMIT, 2, b"v" * 32)
    store.close()

    store = SqliteChainStore(path)  # the process restarted
    guard = VoteGuard(lambda: store.meta("guard"), lambda raw: store.set_meta("guard", raw))
    assert not guard.permit(state, VoteKind.PRECOMMIT, 2, b"w" * 32), "a conflicting precommit"
    assert not guard.permit(state, VoteKind.PREVOTE, 1, b"w" * 32), "a vote in an older round"
    assert guard.permit(state, VoteKind.PRECOMMIT, 2, b"v" * 32), "the same vote again is harmless"
    resumed, effects = resume_height(validators, KEYS[0].public, 7, guard)
    assert (resumed.round, resumed.locked_round, resumed.locked_value) == (2, 2, b"v" * 32)
    assert CastVote(VoteKind.PRECOMMIT, 7, 2, b"v" * 32) in effects
    store.set_meta("guard", b"\xff garbage")
    with pytest.raises(Exception, match="unreadable"):
        VoteGuard(lambda: store.meta("guard"), lambda raw: None)
    store.close()


def test_a_proposal_whose_execution_breaks_is_refused_and_the_driver_goes_on():
    """The driver caught named errors only: a block that made execution raise anything else
    ended the consensus task of every honest node at once."""
    import asyncio

    class BrokenHost:
        async def execute_proposal(self, block: object) -> None:
            raise KeyError("a malformed block")

    bft = BftConsensus(genesis("bft"), None)
    bft._host = BrokenHost()  # type: ignore[assignment]
    block = Block(dataclasses.replace(header(), height=1), ())
    message = ProposalMessage(Proposal(1, 0, block.hash, -1, KEYS[0].public), block)
    received = asyncio.run(bft._judge(message))
    assert received.block_valid is False
