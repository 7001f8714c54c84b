"""``poa``: authority round-robin for one company's private chain (safe-UR-chain's
per-company chains).

The authorities are the genesis validators. At height h the leader of attempt a is the
(h + a)-th authority in key order; an attempt lasts ``timeout_propose_ms`` times (a + 1),
so a silent leader is skipped. The leader proposes a block, every authority that finds
it valid endorses it (signs what a commit certificate signs), at most once per height
and attempt, persisted before signing; a block with ``authority_signatures``
endorsements is committed by whoever holds them. Unlike ``bft`` this gives no finality
beyond that count: with a slow leader two attempts can both be certified, and the fork
choice (highest block, then lowest hash) settles it, as in Aura.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from twinledger.abc import BlockResult, NetworkedProducer
from twinledger.consensus import tendermint as tm
from twinledger.consensus.bft import EMPTY_BLOCK_INTERVAL
from twinledger.consensus.finality import highest_leaf, signers_of
from twinledger.consensus.messages import (
    ProposalMessage,
    QueuedConsensus,
    checked_proposal,
    parse_vote,
    proposal_body,
    proposal_message,
    vote_body,
)
from twinledger.core.encoding import decode, encode
from twinledger.core.types import Block, BlockHeader, CommitCertificate, VoteSignature, vote_message
from twinledger.crypto.keys import SigningKey, verify_signature
from twinledger.errors import DecodeError, InvalidBlock, InvalidProof, TwinledgerError
from twinledger.ledger.blocktree import BlockTree
from twinledger.ledger.genesis import Genesis

log = logging.getLogger("twinledger.poa")


@dataclass
class Height:
    """What an authority knows about the height being produced."""

    number: int
    started: float
    attempt: int = 0
    blocks: dict[bytes, Block] = field(default_factory=dict)
    results: dict[bytes, BlockResult] = field(default_factory=dict)
    endorsements: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    proposed: set[int] = field(default_factory=set)


class PoaConsensus(QueuedConsensus):
    name = "poa"

    def __init__(self, genesis: Genesis, key: SigningKey | None) -> None:
        super().__init__(genesis, key)
        self.required = genesis.authority_signatures
        self._known: Any = None


    def quorum(self) -> int:
        return self.required
    def leader(self, height: int, attempt: int) -> bytes:
        ordered = sorted(self._validators)
        return ordered[(height + attempt) % len(ordered)]

    def validate_certificate(self, header: BlockHeader, certificate: CommitCertificate) -> None:
        signers = signers_of(header, certificate, self._validators, round_=0)
        if len(signers) < self.required or header.proposer not in signers:
            raise InvalidBlock(f"block needs {self.required} authority signatures, its proposer's among them")

    def fork_choice(self, tree: BlockTree) -> bytes:
        return highest_leaf(tree)

    # -- messages ------------------------------------------------------------------------------
    def receive(self, message_type: str, body: dict[str, Any]) -> bool:
        if self._inbox is None:
            return False
        if message_type == "proposal":
            parsed = checked_proposal(body, self.chain_id, self.leader, self._known)
            if parsed is None:
                return False
            self._inbox.put_nowait(("proposal", parsed))
            return True
        if message_type == "vote":
            vote = parse_vote(body)
            if vote.kind != tm.VoteKind.PRECOMMIT or vote.round != 0 or vote.validator not in self._validators:
                raise DecodeError("a poa endorsement is a round-0 precommit by an authority")
            if not verify_signature(vote.validator, vote_message(self.chain_id, vote.height, 0, vote.block_hash), vote.signature):
                raise InvalidProof("endorsement signature does not verify")
            self._inbox.put_nowait(("vote", vote))
            return True
        return False

    # -- the loop ------------------------------------------------------------------------------
    async def run(self, producer: Any) -> None:
        host: NetworkedProducer = producer
        self._known = host.known_transaction
        self._inbox = asyncio.Queue()
        load, save = host.vote_guard()
        self._load, self._save = load, save
        while True:
            current = Height(host.head.height + 1, time.monotonic())
            await self._produce(host, current)

    async def _produce(self, host: NetworkedProducer, h: Height) -> None:
        """Work on height ``h`` until the head moves past it."""
        assert self._inbox is not None
        waiting = asyncio.ensure_future(asyncio.wait_for(host.wait_for_transactions(), EMPTY_BLOCK_INTERVAL))
        try:
            while host.head.height < h.number:
                self._advance_attempt(h)
                if self._my_turn(h) and waiting.done():  # transactions wait, or the empty-block interval passed
                    await self._propose(host, h)
                timeout = self._attempt_end(h) - time.monotonic()
                try:  # not wait_for: on 3.11 it can swallow a cancellation
                    async with asyncio.timeout(max(0.01, min(timeout, 0.2))):
                        kind, item = await self._inbox.get()
                except TimeoutError:
                    continue
                try:
                    await self._handle(host, h, kind, item)
                except TwinledgerError as exc:
                    log.warning("poa: %s", exc.message)
                except Exception as exc:  # noqa: BLE001 - the driver outlives any one bad message or block
                    log.error("poa: %s while handling a %s: %s (refused; consensus goes on)", type(exc).__name__,
                              kind, exc)  # fmt: skip
        finally:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await waiting

    def _my_turn(self, h: Height) -> bool:
        """This authority leads the current attempt and has not proposed in it yet."""
        return self.key is not None and self.leader(h.number, h.attempt) == self.key.public and h.attempt not in h.proposed

    def _attempt_end(self, h: Height) -> float:
        step = self.genesis.timeout_propose_ms / 1000
        return h.started + step * (h.attempt + 1) * (h.attempt + 2) / 2

    def _advance_attempt(self, h: Height) -> None:
        while time.monotonic() >= self._attempt_end(h):
            h.attempt += 1
        self.last_round = h.attempt

    async def _handle(self, host: NetworkedProducer, h: Height, kind: str, item: Any) -> None:
        if kind == "head":
            return
        if kind == "proposal":
            message: ProposalMessage = item
            p = message.proposal
            if p.height != h.number or p.round > h.attempt + 1:
                if p.height > h.number:
                    host.request_blocks(h.number)
                return
            if message.block.header.previous != host.head.hash:  # the proposer is on another branch
                host.request_blocks(h.number - 1)
                return
            if p.block_hash not in h.results:
                h.results[p.block_hash] = await host.execute_proposal(message.block)
                h.blocks[p.block_hash] = message.block
            await self._endorse(host, h, p.round, p.block_hash)
        elif kind == "vote":
            vote: tm.Vote = item
            if vote.height != h.number:
                if vote.height > h.number:
                    host.request_blocks(h.number)
                return
            h.endorsements.setdefault(vote.block_hash, {})[vote.validator] = vote.signature
        await self._commit_if_certified(host, h)

    async def _propose(self, host: NetworkedProducer, h: Height) -> None:
        assert self.key is not None and self._inbox is not None
        h.proposed.add(h.attempt)
        built = await host.build_block(self.key.public, allow_empty=True)
        assert built is not None
        block, result = built
        h.blocks[block.hash] = block
        h.results[block.hash] = result
        unsigned = tm.Proposal(h.number, h.attempt, block.hash, -1, self.key.public)
        proposal = tm.Proposal(h.number, h.attempt, block.hash, -1, self.key.public,
                               self.key.sign(proposal_message(self.chain_id, unsigned)))  # fmt: skip
        host.broadcast("proposal", proposal_body(proposal, block))
        await self._endorse(host, h, h.attempt, block.hash)
        await self._commit_if_certified(host, h)

    async def _endorse(self, host: NetworkedProducer, h: Height, attempt: int, block_hash: bytes) -> None:
        """Sign ``block_hash`` unless this authority already endorsed another block in this
        attempt of this height (persisted before signing)."""
        if self.key is None:
            return
        if not await host.durably(self._permit, h.number, attempt, block_hash):
            return
        signature = self.key.sign(vote_message(self.chain_id, h.number, 0, block_hash))
        h.endorsements.setdefault(block_hash, {})[self.key.public] = signature
        vote = tm.Vote(tm.VoteKind.PRECOMMIT, h.number, 0, block_hash, self.key.public, signature)
        host.broadcast("vote", vote_body(vote))

    def _permit(self, height: int, attempt: int, block_hash: bytes) -> bool:
        raw = self._load()
        record = decode(raw) if raw is not None else {"height": 0, "signed": []}
        signed = record["signed"] if record["height"] == height else []
        for signed_attempt, signed_hash in signed:
            if signed_attempt == attempt:
                return signed_hash == block_hash
        if record["height"] > height:
            return False
        self._save(encode({"height": height, "signed": [*signed, [attempt, block_hash]]}))
        return True

    async def _commit_if_certified(self, host: NetworkedProducer, h: Height) -> None:
        for block_hash, signatures in h.endorsements.items():
            block = h.blocks.get(block_hash)
            if len(signatures) < self.required or block is None or block.header.proposer not in signatures:
                continue
            votes = tuple(sorted((VoteSignature(v, s) for v, s in signatures.items()), key=lambda s: s.validator))
            certificate = CommitCertificate(self.chain_id, h.number, 0, block_hash, votes)
            if host.head.height == h.number - 1 and block.header.previous == host.head.hash:
                await host.commit_block(block, certificate, h.results[block_hash])
            return
