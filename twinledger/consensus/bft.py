"""``bft``: Tendermint among the consortium's validators (consensus.md).

The algorithm is the pure machine in ``tendermint.py``; this module drives it: it signs
and checks proposals and votes, persists the vote guard before anything is signed, runs
the timers, executes proposed blocks through the node, commits decided blocks with their
certificates (the 2f+1 precommit signatures), and asks for block sync when it holds a
quorum of precommits for a block it never received.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from twinledger.abc import BlockResult, NetworkedProducer
from twinledger.consensus import tendermint as tm
from twinledger.consensus.finality import highest_leaf, signers_of
from twinledger.consensus.messages import (
    ProposalMessage,
    QueuedConsensus,
    checked_proposal,
    parse_vote,
    proposal_body,
    proposal_message,
    signed_vote_message,
    vote_body,
)
from twinledger.consensus.signer import VoteGuard, resume_height
from twinledger.core.killpoints import kill_point
from twinledger.core.types import (
    Block,
    BlockHeader,
    CommitCertificate,
    VoteSignature,
)
from twinledger.crypto.keys import SigningKey, verify_signature
from twinledger.errors import InvalidBlock, InvalidProof, TwinledgerError
from twinledger.ledger.blocktree import BlockTree
from twinledger.ledger.genesis import Genesis

log = logging.getLogger("twinledger.bft")

EMPTY_BLOCK_INTERVAL = 5.0
"""Seconds a validator waits for transactions before it proposes an empty block."""
REGOSSIP_INTERVAL = 1.0
PRECISION_MS = 500
"""How far apart two correct validators' clocks may be (NTP keeps them far closer)."""
MESSAGE_DELAY_MS = 3000
"""How long a proposal may take to reach every validator in round 0; 10 % more each round,
so a slow network still decides, later (CometBFT's adaptive synchrony parameters)."""
MESSAGES_PER_SLOT = 2
"""Proposals taken from a round's proposer, and votes from one validator for one (kind,
round): the second, different one is the evidence of equivocation (and a proposal others
may have locked on); further ones add nothing and are neither queued nor relayed."""


class BftConsensus(QueuedConsensus):
    name = "bft"
    final = True

    def __init__(self, genesis: Genesis, key: SigningKey | None) -> None:
        super().__init__(genesis, key)
        self.me = self.key.public if self.key is not None else None
        self.votes_needed = 2 * len(self._validators) // 3 + 1
        self.state: tm.State | None = None
        self.height = 0
        self._host: NetworkedProducer | None = None
        self._guard: VoteGuard | None = None
        self._blocks: dict[bytes, Block] = {}
        self._results: dict[bytes, BlockResult] = {}
        self._future: dict[tuple[Any, ...], tuple[str, Any]] = {}
        """Messages for the next height, as ``receive`` took them."""
        self._slots: dict[tuple[int, bytes, int, int], set[bytes]] = {}
        """Values taken per (height, validator or proposer, kind (0: proposal), round), for
        this height and the next: a value again (another signature, say) is not taken."""
        self._proposed: set[tuple[int, bytes]] = set()
        """(height, block hash) proposed: a vote for one is taken past a full slot."""
        self._own: list[tuple[str, dict[str, Any]]] = []
        self._starter: asyncio.Task[None] | None = None
        self._last_commit = 0.0

    # -- Consensus -----------------------------------------------------------------------------
    def quorum(self) -> int:
        return self.votes_needed

    def validate_certificate(self, header: BlockHeader, certificate: CommitCertificate) -> None:
        signers = signers_of(header, certificate, self._validators)
        if len(signers) < self.votes_needed:
            raise InvalidBlock(f"commit certificate has {len(signers)} of the {self.votes_needed} precommits it needs")

    def fork_choice(self, tree: BlockTree) -> bytes:
        """Certified blocks are final, so there is one branch unless more than f validators
        are faulty; then the highest, lowest-hash leaf (and the evidence shows who)."""
        return highest_leaf(tree)

    # -- messages from the network (event loop) ---------------------------------------------------
    def receive(self, message_type: str, body: dict[str, Any]) -> bool:
        """Check a proposal or vote and queue it; True if it is valid and worth relaying."""
        if self._inbox is None:
            return False
        if message_type == "vote":
            vote = parse_vote(body)
            if vote.validator not in self._validators or not self._in_reach(vote.height, vote.round):
                return False
            taken = self._slots.setdefault((vote.height, vote.validator, int(vote.kind), vote.round), set())
            proposed = (vote.height, vote.block_hash) in self._proposed
            if vote.block_hash in taken or (len(taken) >= MESSAGES_PER_SLOT and not proposed):
                return False
            message = signed_vote_message(self.chain_id, vote.kind, vote.height, vote.round, vote.block_hash)
            if not verify_signature(vote.validator, message, vote.signature):
                raise InvalidProof("vote signature does not verify")
            taken.add(vote.block_hash)
            self._inbox.put_nowait(("vote", vote))
            return True
        if message_type == "proposal":
            known = self._host.known_transaction if self._host is not None else None
            arrived = int(time.time() * 1000)
            parsed = checked_proposal(body, self.chain_id, lambda h, r: tm.proposer(self._validators, h, r), known,
                                      reach=self._proposal_in_reach)  # fmt: skip
            if parsed is None:
                return False
            p = parsed.proposal
            taken = self._slots.setdefault((p.height, p.proposer, 0, p.round), set())
            if p.block_hash in taken:
                return False  # the same proposal again (another signature of it, say)
            taken.add(p.block_hash)
            self._proposed.add((p.height, p.block_hash))
            self._inbox.put_nowait(("proposal", dataclasses.replace(parsed, received_ms=arrived)))
            return True
        return False

    def _proposal_in_reach(self, height: int, round_: int) -> bool:
        """In reach, and not past the proposals a round's proposer may make (checked
        before the signature and the block cost anything)."""
        taken = self._slots.get((height, tm.proposer(self._validators, height, round_), 0, round_), set())
        return self._in_reach(height, round_) and len(taken) < MESSAGES_PER_SLOT

    def _in_reach(self, height: int, round_: int) -> bool:
        """This height or the next, and no more than MAX_ROUND_LEAD rounds ahead: anything
        further is dropped unrelayed (block sync brings later heights; regossip resends)."""
        if height == self.height:
            return round_ <= self.last_round + tm.MAX_ROUND_LEAD
        return height == self.height + 1 and round_ <= tm.MAX_ROUND_LEAD

    # -- the driver --------------------------------------------------------------------------------
    async def run(self, producer: Any) -> None:
        host: NetworkedProducer = producer
        self._host = host
        self._inbox = asyncio.Queue()
        load, save = host.vote_guard()
        self._guard = VoteGuard(load, save) if self.me is not None else None
        self._enter(host.head.height + 1, wait=False)
        regossip = asyncio.create_task(self._regossip())
        try:
            while True:
                kind, item = await self._inbox.get()
                try:
                    await self._handle(kind, item)
                except TwinledgerError as exc:
                    log.warning("consensus: %s", exc.message)
                except Exception as exc:  # noqa: BLE001 - the driver outlives any one bad message or block
                    log.error("consensus: %s while handling a %s: %s (refused; consensus goes on)",
                              type(exc).__name__, kind, exc)  # fmt: skip
        finally:
            regossip.cancel()
            if self._starter is not None:
                self._starter.cancel()

    def _enter(self, height: int, wait: bool = True) -> None:
        """Begin ``height``: once the block interval has passed and there is something to
        propose (or an empty-block interval went by, or a peer already started it)."""
        self.height = height
        self.state = None
        self.last_round = 0
        self._blocks.clear()
        self._results.clear()
        self._own.clear()
        self._slots = {slot: values for slot, values in self._slots.items() if slot[0] >= height}
        self._proposed = {entry for entry in self._proposed if entry[0] >= height}
        if self._starter is not None:
            self._starter.cancel()
        self._starter = asyncio.ensure_future(self._start_when_ready(height, wait))

    async def _start_when_ready(self, height: int, wait: bool) -> None:
        assert self._host is not None and self._inbox is not None
        if wait:
            delay = self._last_commit + self.genesis.block_interval_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            with contextlib.suppress(TimeoutError):  # then propose an empty block
                await asyncio.wait_for(self._host.wait_for_transactions(), EMPTY_BLOCK_INTERVAL)
        self._inbox.put_nowait(("start", height))

    async def _handle(self, kind: str, item: Any) -> None:
        if kind == "head":
            if item >= self.height:
                self._enter(item + 1, wait=False)
            return
        if kind == "start":
            if item == self.height and self.state is None:
                await self._start()
            return
        height = item.proposal.height if kind == "proposal" else item.height
        if height < self.height:
            return
        if height > self.height or self.state is None:
            if height <= self.height + 1:
                self._future.setdefault(self._future_key(kind, item), (kind, item))  # further: block sync
            if height > self.height:
                assert self._host is not None
                self._host.request_blocks(self.height)
            elif self.state is None:
                await self._start()  # a peer has started this height: join at once
            return
        await self._step(self._event(kind, item))

    async def _start(self) -> None:
        assert self._host is not None
        if self._starter is not None:
            self._starter.cancel()
            self._starter = None
        self.state, effects = resume_height(self._validators, self.me, self.height, self._guard)
        await self._apply(effects)
        pending, self._future = self._future, {}
        for key, (kind, item) in pending.items():
            height = item.proposal.height if kind == "proposal" else item.height
            if height == self.height and self.state is not None:
                await self._step(self._event(kind, item))
            elif height > self.height:
                self._future[key] = (kind, item)

    @staticmethod
    def _future_key(kind: str, item: Any) -> tuple[Any, ...]:
        """Each message that ``receive`` took for the next height, once: it bounds them per
        slot and round, so what waits is bounded too."""
        if kind == "proposal":
            return ("proposal", item.proposal.height, item.proposal.round, item.proposal.block_hash)
        return ("vote", item.height, item.validator, int(item.kind), item.round, item.block_hash)

    @staticmethod
    def _event(kind: str, item: Any) -> tm.Event | ProposalMessage:
        """A vote becomes an event here; a proposal is judged (executed) in ``_step``."""
        return tm.VoteReceived(item) if kind == "vote" else item

    async def _step(self, event: tm.Event | ProposalMessage) -> None:
        if isinstance(event, ProposalMessage):
            event = await self._judge(event)
        assert self.state is not None
        self.state, effects = tm.step(self.state, event)
        self.last_round = self.state.round
        await self._apply(effects)

    async def _judge(self, message: ProposalMessage) -> tm.ProposalReceived:
        """valid(v): execute the proposed block on the head (once per block); and whether
        the proposal is timely."""
        assert self._host is not None
        p = message.proposal
        block_hash = p.block_hash
        on_time = message.received_ms is None or timely(message.block.header.timestamp, message.received_ms, p.round)
        if not on_time and p.valid_round == -1:
            log.warning("proposal for height %d round %d is untimely: block time %d, arrived at %d (prevoting nil)",
                        p.height, p.round, message.block.header.timestamp, message.received_ms)  # fmt: skip
        if block_hash not in self._results:
            try:
                self._results[block_hash] = await self._host.execute_proposal(message.block)
                self._blocks[block_hash] = message.block
            except TwinledgerError as exc:
                log.warning("proposal for height %d is invalid: %s", p.height, exc.message)
                return tm.ProposalReceived(p, False, on_time)
            except Exception as exc:  # noqa: BLE001 - a block that breaks execution is invalid, not fatal
                log.error("proposal for height %d is invalid: executing it raised %s: %s", p.height,
                          type(exc).__name__, exc)  # fmt: skip
                return tm.ProposalReceived(p, False, on_time)
        return tm.ProposalReceived(p, True, on_time)

    async def _apply(self, effects: list[tm.Effect]) -> None:
        assert self._host is not None and self._inbox is not None
        for effect in effects:
            if self.state is None or getattr(effect, "height", self.height) != self.height:
                return  # decided meanwhile; the rest belongs to a finished height
            if isinstance(effect, tm.BuildProposal):
                await self._propose(effect)
            elif isinstance(effect, tm.CastVote):
                await self._vote(effect)
            elif isinstance(effect, tm.ScheduleTimeout):
                self._schedule(effect)
            elif isinstance(effect, tm.Decide):
                await self._decide(effect)
            elif isinstance(effect, tm.FetchBlock):
                self._host.request_blocks(effect.height)
            elif isinstance(effect, tm.Equivocation):
                log.warning("equivocation by validator %s at height %d", effect.first.validator.hex()[:16], effect.first.height)
                await self._host.record_evidence("vote", vote_body(effect.first), vote_body(effect.second))

    async def _propose(self, effect: tm.BuildProposal) -> None:
        assert self._host is not None and self.key is not None and self._guard is not None and self.state is not None
        valid_round = effect.valid_round
        if effect.block_hash is not None and effect.block_hash in self._blocks:
            block = self._blocks[effect.block_hash]
        else:  # a new block is a new proposal, even if a restart lost the valid value's block
            valid_round = -1
            built = await self._host.build_block(self.key.public, allow_empty=True)
            assert built is not None
            block, result = built
            self._blocks[block.hash] = block
            self._results[block.hash] = result
        unsigned = tm.Proposal(effect.height, effect.round, block.hash, valid_round, self.key.public)
        if not await self._host.durably(self._guard.permit, self.state, 0, effect.round, block.hash):
            return
        kill_point("vote.guarded")
        signature = self.key.sign(proposal_message(self.chain_id, unsigned))
        proposal = tm.Proposal(unsigned.height, unsigned.round, unsigned.block_hash, unsigned.valid_round,
                               unsigned.proposer, signature)  # fmt: skip
        body = proposal_body(proposal, block)
        self._proposed.add((effect.height, block.hash))
        self._own.append(("proposal", body))
        self._host.broadcast("proposal", body)
        self._inbox_put("proposal", ProposalMessage(proposal, block))

    async def _vote(self, effect: tm.CastVote) -> None:
        assert self._host is not None and self.key is not None and self._guard is not None and self.state is not None
        if not await self._host.durably(self._guard.permit, self.state, int(effect.kind), effect.round, effect.block_hash):
            return
        kill_point("vote.guarded")
        message = signed_vote_message(self.chain_id, effect.kind, effect.height, effect.round, effect.block_hash)
        vote = tm.Vote(effect.kind, effect.height, effect.round, effect.block_hash, self.key.public, self.key.sign(message))
        body = vote_body(vote)
        self._own.append(("vote", body))
        self._host.broadcast("vote", body)
        self._inbox_put("vote", vote)

    def _inbox_put(self, kind: str, item: Any) -> None:
        assert self._inbox is not None
        self._inbox.put_nowait((kind, item))

    def _schedule(self, effect: tm.ScheduleTimeout) -> None:
        g = self.genesis
        base = g.timeout_propose_ms if effect.step == tm.Step.PROPOSE else g.timeout_vote_ms
        seconds = (base + effect.round * g.timeout_delta_ms) / 1000
        event = tm.TimeoutFired(effect.step, effect.height, effect.round)
        asyncio.get_running_loop().call_later(seconds, self._inbox_put, "timeout", event)

    async def _decide(self, effect: tm.Decide) -> None:
        assert self._host is not None
        block = self._blocks.get(effect.block_hash)
        result = self._results.get(effect.block_hash)
        if block is None or result is None:
            self._host.request_blocks(effect.height)
            return
        signatures = tuple(sorted((VoteSignature(v.validator, v.signature) for v in effect.precommits),
                                  key=lambda s: s.validator))  # fmt: skip
        certificate = CommitCertificate(self.chain_id, effect.height, effect.round, effect.block_hash, signatures)
        await self._host.commit_block(block, certificate, result)
        self._last_commit = time.monotonic()
        self._enter(effect.height + 1)

    async def _regossip(self) -> None:
        """Send this height's own proposal and votes again, and every vote of the height it
        holds: one send is not enough for liveness (a peer may have been reconnecting, a
        relay lost), and a vote one correct validator has, an equivocator's or one its
        proof of lock rests on, must reach every correct validator, or they may wait on
        each other for good (the gossip property Tendermint's liveness rests on). Peers
        drop what they already took unparsed, by its digest."""
        while True:
            await asyncio.sleep(REGOSSIP_INTERVAL)
            self._resend()

    def _resend(self) -> None:
        assert self._host is not None
        for message_type, body in list(self._own):
            self._host.broadcast(message_type, body)
        if self.state is not None:
            for vote in self.state.votes:
                if vote.validator != self.me:
                    self._host.broadcast("vote", vote_body(vote))


def timely(block_time_ms: int, received_ms: int, round_: int) -> bool:
    """Proposer-based timestamps (CometBFT 1.0): a new proposal counts only if it arrived
    no earlier than PRECISION before its block time and no later than the message delay
    after it, so the chain's time stays within a few seconds of correct validators' clocks
    whoever proposes."""
    delay = MESSAGE_DELAY_MS * 1.1 ** min(round_, 100)
    return block_time_ms - PRECISION_MS <= received_ms <= block_time_ms + delay + PRECISION_MS
