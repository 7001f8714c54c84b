"""Random schedules that drive the real ``bft.py`` driver, not only the pure machine.

Four validators, each the node's own parts: a ``BftConsensus`` over a ``LedgerService``
with its SQLite chain store and vote guard on disk, block sync and the frame handler of
``PeerNetwork``. They share one event loop and an in-process network that delays,
reorders, drops and duplicates frames and splits the validators in two for a while (a
partition that heals); de-duplication and relaying work as in ``PeerManager``. Honest
validators crash (their engine cancelled at whatever await it was in, their threads and
store closed) and restart from their files. A Byzantine validator runs the real driver
too, but what it sends goes through ``Equivocator``: its proposals are split (another
valid block to some peers), re-proposals claim a valid round, some blocks carry committed
transactions again or a time ten seconds ahead, and its votes are doubled with votes
for nil, the other block, random values, the next rounds, the next height and far rounds.
A client keeps submitting transactions to the honest validators.

After the faults stop, the honest validators must go on deciding; at the end they must
hold one chain, every transaction a validator accepted, no driver error in the log, and
evidence of the equivocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twinledger.consensus import bft
from twinledger.consensus import tendermint as tm
from twinledger.consensus.bft import BftConsensus
from twinledger.consensus.messages import (
    parse_signed_proposal,
    parse_vote,
    proposal_body,
    proposal_message,
    signed_vote_message,
    vote_body,
)
from twinledger.contracts import default_runtime
from twinledger.core.types import Block, Transaction, sign_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.errors import TwinledgerError
from twinledger.ledger.chain import Chain
from twinledger.ledger.genesis import Genesis, GenesisValidator
from twinledger.ledger.mempool import Mempool
from twinledger.ledger.store.sqlite import SqliteChainStore
from twinledger.net.peers import GOSSIP_TYPES
from twinledger.net.wire import encode_frame, parse_frame
from twinledger.node.ledger import LedgerService
from twinledger.node.roles import PeerNetwork

KEYS = sorted((SigningKey(bytes([40 + i]) * 32) for i in range(4)), key=lambda k: k.public)
CLIENT = SigningKey(bytes([99]) * 32)
GENESIS = Genesis("driver-sim", int(time.time() * 1000) - 60_000, "bft",
                  tuple(GenesisValidator(f"org{i}", k.public) for i, k in enumerate(KEYS)), 50, 1000,
                  timeout_propose_ms=400, timeout_vote_ms=150, timeout_delta_ms=100)  # fmt: skip
STATUS_INTERVAL = 0.5
"""Seconds between two status frames (a node's height), as PeerManager sends them."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    seed: int
    byzantine: bool = True
    partition: bool = True
    crashes: int = 2
    drop: float = 0.1
    duplicate: float = 0.05
    max_delay: float = 0.12
    faulty_for: float = 5.0
    """Seconds of faults; then the network is reliable and every validator is up."""
    heights_after: int = 4
    """Heights every honest validator must decide once the faults stopped."""
    deadline: float = 120.0


@dataclasses.dataclass
class Outcome:
    chains: dict[int, list[bytes]]
    """Each honest validator's canonical block hashes from height 1."""
    missing: dict[int, int]
    """Per honest validator, accepted transactions it does not hold."""
    heights_at_calm: dict[int, int]
    decided_after_calm: bool
    evidence: int
    accused: set[bytes]
    """Validators the honest validators hold evidence of equivocation against."""
    refused: list[tuple[int, str]]
    """Frames a validator's handler refused, with their sender."""
    equivocations: int
    accepted: int
    crashed: list[str]
    """Exceptions frame handling raised, and engines that ended."""
    errors: list[str] = dataclasses.field(default_factory=list)
    """Errors logged (a driver that caught an exception it did not expect)."""


class SimPeer:
    """``source`` as ``target``'s frame handler sees it: sending answers it. Every
    simulated validator is a member (membership checks are tested in test_byzantine)."""

    member = True

    def __init__(self, net: DriverNetwork, target: int, source: int) -> None:
        self.net, self.target, self.source = net, target, source

    @property
    def height(self) -> int:
        return self.net.reported_height(self.target, self.source)

    def send(self, message_type: str, body: dict[str, Any]) -> bool:
        self.net.send(self.target, self.source, encode_frame(message_type, body)[4:])
        return True


class SimPeerNetwork(PeerNetwork):
    """The node's frame handler and block sync, over the simulated network."""

    def __init__(self, net: DriverNetwork, index: int, ledger: LedgerService) -> None:
        super().__init__(None, ledger)  # type: ignore[arg-type] - the configuration is only read by start()
        self.net, self.index = net, index

    def peers(self) -> list[Any]:
        return [SimPeer(self.net, self.index, other) for other in self.net.linked(self.index)]

    def broadcast(self, message_type: str, body: dict[str, Any]) -> None:
        payload = encode_frame(message_type, body)[4:]
        self.net.nodes[self.index].seen.add(hashlib.sha256(payload).digest())
        self.net.flood(self.index, payload)


class SimValidator:
    def __init__(self, net: DriverNetwork, index: int, home: Path, byzantine: bool) -> None:
        self.net, self.index, self.home, self.byzantine = net, index, home, byzantine
        self.key = KEYS[index]
        self.ledger: LedgerService | None = None
        self.network: SimPeerNetwork | None = None
        self.engine: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.seen: set[bytes] = set()
        self.heights: dict[int, int] = {}
        """The height each peer last reported."""

    @property
    def up(self) -> bool:
        return self.ledger is not None

    def start(self) -> None:
        store = SqliteChainStore(self.home / "chain.db")
        consensus = BftConsensus(GENESIS, self.key)
        ledger = LedgerService(Chain(store, default_runtime(), consensus, GENESIS), Mempool(), self.home / "vote-guard")
        self.network = SimPeerNetwork(self.net, self.index, ledger)
        ledger.fetch_blocks = self.network.sync.request_blocks
        ledger.gossip = Equivocator(self.net, self).gossip if self.byzantine else self.network.broadcast
        self.ledger, self.seen = ledger, set()
        self.engine = asyncio.create_task(consensus.run(ledger))

    async def crash(self) -> None:
        """Stop at whatever await the engine was in; close what a dead process would lose."""
        assert self.ledger is not None and self.engine is not None
        if self.engine.done():
            self.net.crashed.append(f"validator {self.index}: its consensus engine ended")
        ledger, self.ledger = self.ledger, None
        for task in (self.engine, *self.tasks):
            task.cancel()
        await asyncio.gather(self.engine, *self.tasks, return_exceptions=True)
        self.tasks.clear()
        await asyncio.to_thread(ledger.close)
        ledger.chain_store.close()

    def spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        """What a peer manager's read loop would log as a traceback, the test counts."""
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.net.crashed.append(f"validator {self.index}: {type(exc).__name__}: {exc}")

    async def arrive(self, source: int, payload: bytes) -> None:
        """What ``PeerManager``'s read loop does with a frame: drop gossip seen before
        unparsed, hand the rest to the node's handler, relay what it says to relay."""
        if self.ledger is None or self.network is None:
            return
        digest = hashlib.sha256(payload).digest()
        if digest in self.seen:
            return
        frame = parse_frame(payload)
        if frame.type == "txs":
            self.seen.add(digest)
        if frame.type == "status":
            self.heights[source] = frame.body["height"]
        try:
            relay = await self.network._on_frame(SimPeer(self.net, self.index, source), frame)
        except TwinledgerError as exc:
            self.net.refused.append((source, f"validator {self.index} refused a {frame.type} from {source}: {exc.message}"))
            return
        if relay and frame.type in GOSSIP_TYPES:
            self.seen.add(digest)
            self.net.flood(self.index, payload, exclude=source)


class DriverNetwork:
    def __init__(self, schedule: Schedule, root: Path) -> None:
        self.schedule = schedule
        self.rng = random.Random(schedule.seed)
        byzantine = self.rng.randrange(4) if schedule.byzantine else None
        self.nodes = [SimValidator(self, i, root / f"v{i}", i == byzantine) for i in range(4)]
        for node in self.nodes:
            node.home.mkdir(parents=True)
        self.honest = [node.index for node in self.nodes if not node.byzantine]
        self.split: tuple[float, float, frozenset[int]] | None = None
        self.calm = False
        self.refused: list[tuple[int, str]] = []
        self.crashed: list[str] = []
        """Exceptions of frame handling and engines that ended: a node would log a traceback."""
        self.accepted: set[bytes] = set()
        self.equivocations = 0
        self.started = 0.0

    # -- the network -----------------------------------------------------------------------------
    def linked(self, index: int) -> list[int]:
        return [other for other in range(4) if other != index and self.nodes[other].up and self._connected(index, other)]

    def _connected(self, a: int, b: int) -> bool:
        if self.split is None or self.calm:
            return True
        start, end, side = self.split
        now = time.monotonic() - self.started
        return not start <= now < end or (a in side) == (b in side)

    def reported_height(self, target: int, source: int) -> int:
        return self.nodes[target].heights.get(source, 0)

    def flood(self, source: int, payload: bytes, exclude: int | None = None) -> None:
        for target in range(4):
            if target not in (source, exclude):
                self.send(source, target, payload)

    def send(self, source: int, target: int, payload: bytes) -> None:
        if not self._connected(source, target):
            return
        s = self.schedule
        copies = 1
        if not self.calm:
            copies = 0 if self.rng.random() < s.drop else (2 if self.rng.random() < s.duplicate else 1)
        for _ in range(copies):
            delay = self.rng.uniform(0, s.max_delay if not self.calm else s.max_delay / 4)
            asyncio.get_running_loop().call_later(delay, self._deliver, source, target, payload)

    def _deliver(self, source: int, target: int, payload: bytes) -> None:
        node = self.nodes[target]
        if node.up and self._connected(source, target):
            node.spawn(node.arrive(source, payload))

    # -- the run ---------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        s = self.schedule
        self.started = time.monotonic()
        if s.partition:
            start = self.rng.uniform(0.5, s.faulty_for / 2)
            self.split = (start, start + self.rng.uniform(1.0, s.faulty_for / 2),
                          frozenset(self.rng.sample(range(4), 2)))  # fmt: skip
        for node in self.nodes:
            node.start()
        background = [asyncio.create_task(self._status()), asyncio.create_task(self._client())]
        try:
            await self._faults()
            self.calm = True
            for node in self.nodes:
                if not node.up:
                    node.start()
            at_calm = {i: self.nodes[i].ledger.head.height for i in self.honest}  # type: ignore[union-attr]
            target = max(at_calm.values()) + s.heights_after
            decided = await self._until(lambda: all(self.nodes[i].ledger.head.height >= target for i in self.honest),  # type: ignore[union-attr]
                                        s.deadline)  # fmt: skip
            background[1].cancel()
            await asyncio.gather(background[1], return_exceptions=True)
            await self._until(lambda: not self._missing_anywhere(), s.deadline)
            return self._outcome(at_calm, decided)
        finally:
            for task in background:
                task.cancel()
            for node in self.nodes:
                if node.up:
                    await node.crash()

    async def _faults(self) -> None:
        """Crash and restart honest validators at random moments of the faulty period."""
        s = self.schedule
        events: list[tuple[float, int, bool]] = []
        for _ in range(s.crashes):
            victim = self.rng.choice(self.honest)
            at = self.rng.uniform(0.3, s.faulty_for * 0.7)
            events += [(at, victim, False), (at + self.rng.uniform(0.2, 1.5), victim, True)]
        for at, victim, restart in sorted(events):
            await asyncio.sleep(max(0.0, at - (time.monotonic() - self.started)))
            node = self.nodes[victim]
            if restart and not node.up:
                node.start()
            elif not restart and node.up:
                await node.crash()
        await asyncio.sleep(max(0.0, s.faulty_for - (time.monotonic() - self.started)))

    async def _until(self, condition: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            for node in self.nodes:
                if node.ledger is not None:
                    payload = encode_frame("status", {"height": node.ledger.head.height})[4:]
                    for target in self.linked(node.index):
                        self.send(node.index, target, payload)

    async def _client(self) -> None:
        """Transactions to random honest validators that are up; what one accepts must
        end up committed on every honest validator."""
        nonce = 0
        while True:
            await asyncio.sleep(self.rng.uniform(0.02, 0.15))
            up = [i for i in self.honest if self.nodes[i].up]
            if not up:
                continue
            node = self.nodes[self.rng.choice(up)]
            txs = [record(nonce + n) for n in range(self.rng.randint(1, 4))]
            nonce += len(txs)
            ledger = node.ledger
            assert ledger is not None
            with contextlib.suppress(RuntimeError):  # the validator crashed meanwhile (its threads are shut down)
                results = await ledger.submit([tx.encoded for tx in txs])
                self.accepted.update(r.tx_hash for r in results if r.tx_hash is not None and r.error is None)

    def _missing_anywhere(self) -> bool:
        return any(self._missing(i) for i in self.honest)

    def _missing(self, index: int) -> int:
        ledger = self.nodes[index].ledger
        assert ledger is not None
        return sum(1 for tx_hash in self.accepted if ledger.chain_store.transaction(tx_hash) is None)

    def _outcome(self, at_calm: dict[int, int], decided: bool) -> Outcome:
        self.crashed += [f"validator {node.index}: its consensus engine ended" for node in self.nodes
                         if node.engine is not None and node.engine.done()]  # fmt: skip
        chains: dict[int, list[bytes]] = {}
        evidence = 0
        accused: set[bytes] = set()
        for i in self.honest:
            ledger = self.nodes[i].ledger
            assert ledger is not None
            headers = [ledger.chain_store.header_by_height(h) for h in range(1, ledger.head.height + 1)]
            chains[i] = [h.hash for h in headers if h is not None]
            for entry in ledger.evidence():
                evidence += 1
                accused.add(bytes.fromhex(entry["first"]["validator"]))
        return Outcome(chains, {i: self._missing(i) for i in self.honest}, at_calm, decided, evidence, accused,
                       list(self.refused), self.equivocations, len(self.accepted), list(self.crashed))  # fmt: skip


class Equivocator:
    """What a Byzantine validator sends instead of what its driver asks it to."""

    def __init__(self, net: DriverNetwork, node: SimValidator) -> None:
        self.net, self.node, self.rng = net, node, net.rng
        self.key = node.key
        self.shown: set[tuple[int, bytes]] = set()
        """(height, block hash) of every block it proposed, its driver's or another."""
        self.split: dict[tuple[int, int], dict[int, bytes]] = {}
        """Per (height, round) it split, which block each peer was shown: it votes for that
        block to that peer, so a split can win a quorum with the peers it fooled."""

    def gossip(self, message_type: str, body: dict[str, Any]) -> None:
        if message_type == "proposal":
            self.node.spawn(self._propose(body))
        elif message_type == "vote":
            self._vote(body)
        else:
            self._send_all(message_type, body)

    def _send_all(self, message_type: str, body: dict[str, Any], to: list[int] | None = None) -> None:
        payload = encode_frame(message_type, body)[4:]
        for target in to if to is not None else range(4):
            if target != self.node.index:
                self.net.send(self.node.index, target, payload)

    def _sign_proposal(self, height: int, round_: int, block: Block, valid_round: int) -> dict[str, Any]:
        unsigned = tm.Proposal(height, round_, block.hash, valid_round, self.key.public)
        signed = dataclasses.replace(unsigned, signature=self.key.sign(proposal_message(GENESIS.chain_id, unsigned)))
        return proposal_body(signed, block)

    def _sign_vote(self, kind: tm.VoteKind, height: int, round_: int, value: bytes) -> dict[str, Any]:
        signature = self.key.sign(signed_vote_message(GENESIS.chain_id, kind, height, round_, value))
        return vote_body(tm.Vote(kind, height, round_, value, self.key.public, signature))

    async def _propose(self, body: dict[str, Any]) -> None:
        ledger = self.node.ledger
        assert ledger is not None
        p = parse_signed_proposal(body)
        seen = [b for b in ledger.consensus._blocks.values() if b.height == p.height and b.hash != p.block_hash]  # type: ignore[attr-defined]
        trick = self.rng.choice(("split", "reproposal", "replayed", "ahead", "honest"))
        self.shown.add((p.height, p.block_hash))
        if trick == "reproposal" and seen and p.round > 0:  # a block seen this height, under a valid round it claims
            block = self.rng.choice(seen)
            self.shown.add((p.height, block.hash))
            self._send_all("proposal", self._sign_proposal(p.height, p.round, block, self.rng.randrange(p.round)))
            return
        if trick in ("split", "replayed", "ahead"):
            own = ledger.consensus._blocks.get(p.block_hash)  # type: ignore[attr-defined]
            if own is not None:
                other = await self._other_block(ledger, own, trick)
                self.shown.add((p.height, other.hash))
                peers = [i for i in range(4) if i != self.node.index]
                self.rng.shuffle(peers)
                cut = self.rng.randint(1, 2)
                self._send_all("proposal", body, to=peers[:cut])
                self._send_all("proposal", self._sign_proposal(p.height, p.round, other, -1), to=peers[cut:])
                self.split[(p.height, p.round)] = {**dict.fromkeys(peers[:cut], p.block_hash),
                                                   **dict.fromkeys(peers[cut:], other.hash)}  # fmt: skip
                self.net.equivocations += 1
                return
        self._send_all("proposal", body)

    async def _other_block(self, ledger: LedgerService, block: Block, trick: str) -> Block:
        """Another block for the same height: fewer transactions (valid), committed ones
        again (invalid), or a time ten seconds ahead (valid, not timely)."""
        txs = list(block.transactions)
        timestamp = block.header.timestamp + 1
        if trick == "split":
            txs = txs[: len(txs) // 2]
        elif trick == "replayed":
            committed = await ledger.read(_committed_transactions, ledger, block.height)
            txs = committed or txs
        else:
            timestamp += 10_000
        other, _ = await ledger.in_ledger(ledger.chain.build_block, txs, self.key.public, timestamp)
        return other

    def _vote(self, body: dict[str, Any]) -> None:
        """Each peer gets a vote of its own: the driver's, or one for another block of the
        height (the other half of a split proposal, say), nil or a random value; and now
        and then a vote for a later round, the next height or a round far ahead."""
        vote = parse_vote(body)
        blocks = [h for (height, h) in self.shown if height == vote.height]
        shown = self.split.get((vote.height, vote.round), {})
        for target in range(4):
            if target == self.node.index:
                continue
            value = self.rng.choice([vote.block_hash, vote.block_hash, *blocks, *blocks, tm.NIL, os.urandom(32)])
            if target in shown and self.rng.random() < 0.8:
                value = shown[target]
            if value == vote.block_hash:
                self._send_all("vote", body, to=[target])
            else:
                self._send_all("vote", self._sign_vote(vote.kind, vote.height, vote.round, value), to=[target])
                self.net.equivocations += 1
        extra = self.rng.choice(("next-round", "next-height", "far", "none"))
        if extra == "next-round":
            self._send_all("vote", self._sign_vote(vote.kind, vote.height, vote.round + self.rng.randint(1, 3), tm.NIL))
        elif extra == "next-height":
            self._send_all("vote", self._sign_vote(vote.kind, vote.height + 1, 0, os.urandom(32)))
        elif extra == "far":
            self._send_all("vote", self._sign_vote(vote.kind, vote.height, vote.round + tm.MAX_ROUND_LEAD + 5, tm.NIL))


def _committed_transactions(ledger: LedgerService, height: int) -> list[Transaction]:
    """A few transactions committed below ``height`` (a store read)."""
    for below in range(height - 1, 0, -1):
        block = ledger.chain_store.block_by_hash(ledger.chain_store.header_by_height(below).hash)  # type: ignore[union-attr]
        if block is not None and block.transactions:
            return [tx for tx in block.transactions if isinstance(tx, Transaction)][:3]
    return []


def record(nonce: int) -> Transaction:
    return sign_transaction(CLIENT, chain_id=GENESIS.chain_id, nonce=nonce, contract="records", method="put",
                            args={"payload": os.urandom(16)}, timestamp=int(time.time() * 1000))  # fmt: skip


def run_schedule(schedule: Schedule, root: Path) -> Outcome:
    """One schedule, with the driver's intervals scaled to the simulated network."""
    saved = bft.EMPTY_BLOCK_INTERVAL, bft.REGOSSIP_INTERVAL
    bft.EMPTY_BLOCK_INTERVAL, bft.REGOSSIP_INTERVAL = 0.3, 0.3
    errors: list[str] = []
    handler = _Collect(errors)
    logger = logging.getLogger("twinledger")
    logger.addHandler(handler)
    try:
        outcome = asyncio.run(DriverNetwork(schedule, root).run())
    finally:
        bft.EMPTY_BLOCK_INTERVAL, bft.REGOSSIP_INTERVAL = saved
        logger.removeHandler(handler)
    outcome.errors = errors
    return outcome


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())
