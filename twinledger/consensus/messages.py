"""Consensus messages on the wire: what proposals, votes and endorsements sign, how they
are encoded in gossip frames, and how a received one is checked before it is queued."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twinledger.abc import Consensus
from twinledger.consensus import tendermint as tm
from twinledger.core.hashing import hash_obj
from twinledger.core.types import (
    AnyTransaction,
    Block,
    Transaction,
    decode_header,
    decode_transaction,
    encode_header,
    vote_message,
)
from twinledger.crypto.keys import SigningKey, verify_signature
from twinledger.errors import DecodeError, InvalidProof
from twinledger.ledger.genesis import Genesis

PROPOSAL_TAG = "twinledger/proposal/v1"
PREVOTE_TAG = "twinledger/prevote/v1"
def proposal_message(chain_id: str, p: tm.Proposal) -> bytes:
    return hash_obj(PROPOSAL_TAG, {"chain_id": chain_id, "height": p.height, "round": p.round,
                                   "block_hash": p.block_hash, "valid_round": p.valid_round})  # fmt: skip


def signed_vote_message(chain_id: str, kind: tm.VoteKind, height: int, round_: int, block_hash: bytes) -> bytes:
    """Precommits sign exactly what a commit certificate's signatures sign."""
    if kind == tm.VoteKind.PRECOMMIT:
        return vote_message(chain_id, height, round_, block_hash)
    return hash_obj(PREVOTE_TAG, {"chain_id": chain_id, "height": height, "round": round_, "block_hash": block_hash})


def vote_body(vote: tm.Vote) -> dict[str, Any]:
    return {"kind": int(vote.kind), "height": vote.height, "round": vote.round, "block_hash": vote.block_hash,
            "validator": vote.validator, "signature": vote.signature}  # fmt: skip


VOTE_FIELDS = frozenset({"kind", "height", "round", "block_hash", "validator", "signature"})
PROPOSAL_FIELDS = frozenset({"height", "round", "block_hash", "valid_round", "proposer", "signature", "header",
                             "transactions"})  # fmt: skip
"""Exactly these: a field more would make the same message a new frame to gossip (its
digest differs), and one peer could have it relayed without end."""


def parse_vote(body: dict[str, Any]) -> tm.Vote:
    if set(body) != VOTE_FIELDS:
        raise DecodeError("malformed vote: unexpected or missing fields")
    try:
        vote = tm.Vote(tm.VoteKind(body["kind"]), body["height"], body["round"], body["block_hash"],
                       body["validator"], body["signature"])  # fmt: skip
    except (KeyError, ValueError, TypeError) as exc:
        raise DecodeError("malformed vote") from exc
    _check_shapes(vote.height, vote.round, vote.block_hash, vote.validator, vote.signature, nil_ok=True)
    return vote


def _check_shapes(height: Any, round_: Any, block_hash: Any, key: Any, signature: Any, nil_ok: bool) -> None:
    ints = all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in (height, round_))
    if not ints or not isinstance(block_hash, bytes) or len(block_hash) not in ((0, 32) if nil_ok else (32,)):
        raise DecodeError("malformed consensus message")
    if not isinstance(key, bytes) or len(key) != 32 or not isinstance(signature, bytes) or len(signature) != 64:
        raise DecodeError("malformed consensus message")


@dataclass(frozen=True)
class ProposalMessage:
    proposal: tm.Proposal
    block: Block
    received_ms: int | None = None
    """When it arrived by this validator's clock; None for its own proposal."""


def parse_signed_proposal(body: dict[str, Any]) -> tm.Proposal:
    """The signed part of a proposal, without its block (cheap: checked first)."""
    if set(body) != PROPOSAL_FIELDS:
        raise DecodeError("malformed proposal: unexpected or missing fields")
    try:
        p = tm.Proposal(body["height"], body["round"], body["block_hash"], body["valid_round"], body["proposer"],
                        body["signature"])  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise DecodeError("malformed proposal") from exc
    _check_shapes(p.height, p.round, p.block_hash, p.proposer, p.signature, nil_ok=False)
    if not isinstance(p.valid_round, int) or isinstance(p.valid_round, bool) or not -1 <= p.valid_round < p.round:
        raise DecodeError("proposal: valid_round must be -1 or an earlier round")
    return p


def parse_proposed_block(body: dict[str, Any], p: tm.Proposal,
                         known: Callable[[bytes], Transaction | None] | None = None) -> ProposalMessage:  # fmt: skip
    """The block of proposal ``p``; ``known`` returns an already decoded transaction for its bytes."""
    try:
        header = decode_header(body["header"])
        raw_txs = body["transactions"]
        if not isinstance(raw_txs, list):
            raise DecodeError("proposal: transactions must be a list")
        if header.hash != p.block_hash or header.height != p.height:
            raise DecodeError("proposal: the block is not the one proposed")
        txs = tuple(_transaction(raw, known) for raw in raw_txs)
    except (KeyError, TypeError) as exc:
        raise DecodeError("malformed proposal") from exc
    return ProposalMessage(p, Block(header, txs))


def _transaction(raw: Any, known: Callable[[bytes], Transaction | None] | None) -> AnyTransaction:
    if known is not None and isinstance(raw, bytes):
        tx = known(raw)
        if tx is not None:
            return tx
    return decode_transaction(raw)


def proposal_body(p: tm.Proposal, block: Block) -> dict[str, Any]:
    return {"height": p.height, "round": p.round, "block_hash": p.block_hash, "valid_round": p.valid_round,
            "proposer": p.proposer, "signature": p.signature, "header": encode_header(block.header),
            "transactions": [tx.encoded for tx in block.transactions]}  # fmt: skip


def checked_proposal(body: dict[str, Any], chain_id: str, expected_proposer: Callable[[int, int], bytes],
                     known: Callable[[bytes], Transaction | None] | None,
                     reach: Callable[[int, int], bool] = lambda height, round_: True) -> ProposalMessage | None:  # fmt: skip
    """A parsed proposal from the proposer of its (height, round) with a valid signature;
    None if someone else sent it or ``reach`` says its (height, round) is of no use now.
    The signature is checked before the block is decoded. Raises DecodeError or
    InvalidProof for a bad one."""
    p = parse_signed_proposal(body)
    if p.proposer != expected_proposer(p.height, p.round) or not reach(p.height, p.round):
        return None
    if not verify_signature(p.proposer, proposal_message(chain_id, p), p.signature):
        raise InvalidProof("proposal signature does not verify")
    return parse_proposed_block(body, p, known)


class QueuedConsensus(Consensus):
    """An engine whose driver takes checked network messages and sync news from a queue;
    ``key`` is kept only if it belongs to one of the genesis validators."""

    _inbox: asyncio.Queue[tuple[str, Any]] | None = None

    def __init__(self, genesis: Genesis, key: SigningKey | None) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self._validators = genesis.validator_keys
        self.key = key if key is not None and key.public in self._validators else None
        self.last_round = 0

    def validators(self) -> tuple[bytes, ...]:
        return self._validators

    def head_advanced(self, height: int) -> None:
        """Block sync committed blocks up to ``height``: leave the height being worked on."""
        if self._inbox is not None:
            self._inbox.put_nowait(("head", height))
