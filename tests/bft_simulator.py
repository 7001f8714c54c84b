"""A deterministic network simulator for the real Tendermint machine and vote guard.

Virtual time, one seeded random generator: messages are delayed, reordered, dropped and
duplicated; the correct validators may be split in two for a while (a partition that
heals); correct validators crash and restart from their persisted vote record; faulty
validators equivocate (different proposals to different peers, votes for everything they
see, nil votes, votes for the next rounds, floods of votes for far rounds) and re-propose
values they saw with a valid round they claim. Lagging validators catch up from commits
their peers send on request, the way block sync does in a real node.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from twinledger.consensus import tendermint as tm
from twinledger.consensus.signer import VoteGuard, resume_height

TIMEOUT = {tm.Step.PROPOSE: 30.0, tm.Step.PREVOTE: 10.0, tm.Step.PRECOMMIT: 10.0}
TIMEOUT_DELTA = 5.0
REGOSSIP = 25.0


@dataclass(frozen=True)
class Commit:
    height: int
    block_hash: bytes
    precommits: tuple[tm.Vote, ...]


@dataclass(frozen=True)
class SyncRequest:
    height: int
    sender: int


@dataclass(frozen=True)
class Tick:
    pass


@dataclass
class SimNode:
    index: int
    key: bytes
    faulty: bool
    storage: dict[str, bytes] = field(default_factory=dict)
    state: tm.State | None = None
    guard: VoteGuard | None = None
    decisions: dict[int, bytes] = field(default_factory=dict)
    certificates: dict[int, Commit] = field(default_factory=dict)
    future: dict[int, list[Any]] = field(default_factory=dict)
    evidence: list[tm.Equivocation] = field(default_factory=list)
    seen_votes: list[tm.Vote] = field(default_factory=list)
    split_rounds: set[tuple[int, int]] = field(default_factory=set)
    split_sent: list[tuple[int, Any]] = field(default_factory=list)
    """A faulty validator's split proposals, (target, proposal): it re-sends them too."""
    up: bool = True

    @property
    def height(self) -> int:
        return max(self.decisions, default=0) + 1


def block_hash(height: int, round_: int, proposer: int, variant: int = 0) -> bytes:
    return hashlib.sha256(f"block/{height}/{round_}/{proposer}/{variant}".encode()).digest()


class Simulation:
    def __init__(self, seed: int, n: int = 4, faulty: tuple[int, ...] = (), drop: float = 0.15,
                 duplicate: float = 0.1, max_delay: float = 12.0, crashes: int = 2,
                 gst: float = 400.0, invalid_rate: float = 0.2, partition: bool = False,
                 tricks: bool = True) -> None:  # fmt: skip
        self.rng = random.Random(seed)
        self.n = n
        self.keys = tuple(sorted(bytes([i + 1]) * 32 for i in range(n)))
        self.nodes = [SimNode(i, self.keys[i], i in faulty) for i in range(n)]
        self.drop, self.duplicate, self.max_delay = drop, duplicate, max_delay
        self.gst = gst
        self.invalid: set[bytes] = set()
        self.proposed: set[bytes] = set()
        self.split_targets: dict[bytes, list[int]] = {}
        """Which correct validators a faulty proposer showed each of its values to."""
        self.invalid_rate = invalid_rate
        self.tricks = tricks
        """Faulty validators also re-propose values with a claimed valid round and send nil,
        next-round and far-round votes (else they only split proposals and vote for all)."""
        self.seen_values: dict[int, list[tuple[int, bytes]]] = {}
        """Per height, the (round, value) of every proposal a faulty validator saw."""
        self.split: tuple[float, float, frozenset[int]] | None = None
        """A partition: from, until, and the correct validators on one side."""
        if partition:
            correct = [i for i in range(n) if i not in faulty]
            side = frozenset(self.rng.sample(correct, self.rng.randint(1, len(correct) - 1)))
            start = self.rng.uniform(0, gst * 0.5)
            self.split = (start, start + self.rng.uniform(50, gst * 0.5), side)
        self.queue: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        self.now = 0.0
        for node in self.nodes:
            self._boot(node)
            self._push(self.rng.uniform(0, REGOSSIP), node.index, Tick())
        for _ in range(crashes):
            victim = self.rng.choice([node for node in self.nodes if not node.faulty])
            at = self.rng.uniform(0, gst * 0.8)
            self._push(at, victim.index, "crash")
            self._push(at + self.rng.uniform(5, gst * 0.2), victim.index, "restart")

    # -- plumbing ---------------------------------------------------------------------------
    def _push(self, at: float, target: int, message: Any) -> None:
        heapq.heappush(self.queue, (at, next(self.seq), target, message))

    def send(self, target: int, message: Any, source: int | None = None) -> None:
        if self.split is not None and source is not None and self.split[0] <= self.now < self.split[1]:
            side = self.split[2]
            if (source in side) != (target in side) and not self.nodes[source].faulty and not self.nodes[target].faulty:
                return  # across the partition
        before_gst = self.now < self.gst
        if before_gst and self.rng.random() < self.drop:
            return
        delay = self.rng.uniform(0, self.max_delay if before_gst else self.max_delay / 4)
        self._push(self.now + delay, target, message)
        if before_gst and self.rng.random() < self.duplicate:
            self._push(self.now + self.rng.uniform(0, self.max_delay), target, message)

    def broadcast(self, message: Any, source: int | None = None) -> None:
        for node in self.nodes:
            self.send(node.index, message, source)

    def _boot(self, node: SimNode) -> None:
        node.up = True
        if node.faulty:
            node.state = tm.State(self.keys, node.key, node.height)
            return
        node.guard = VoteGuard(lambda: node.storage.get("signer"), lambda raw: node.storage.__setitem__("signer", raw))
        node.state, effects = resume_height(self.keys, node.key, node.height, node.guard)
        self._effects(node, effects)
        self.broadcast(SyncRequest(node.height, node.index))

    # -- the run ------------------------------------------------------------------------------
    def run(self, heights: int, max_time: float = 20_000.0) -> Simulation:
        """Until every correct validator decided ``heights`` heights, or time runs out."""
        while self.queue and self.now < max_time:
            if all(len(node.decisions) >= heights for node in self.correct()):
                break
            self.now, _, target, message = heapq.heappop(self.queue)
            self._deliver(self.nodes[target], message)
        return self

    def correct(self) -> list[SimNode]:
        return [node for node in self.nodes if not node.faulty]

    def _deliver(self, node: SimNode, message: Any) -> None:
        if message == "crash":
            node.up, node.state, node.guard, node.future = False, None, None, {}
            return
        if message == "restart":
            self._boot(node)
            return
        if isinstance(message, Tick):
            if node.up:
                self._regossip(node)
            self._push(self.now + REGOSSIP, node.index, Tick())
            return
        if not node.up or node.state is None:
            return
        if isinstance(message, SyncRequest):
            if message.height in node.certificates:
                self.send(message.sender, node.certificates[message.height])
            return
        if node.faulty:
            self._byzantine(node, message)
            return
        height = getattr(message, "height", node.state.height)
        if height > node.state.height:
            node.future.setdefault(height, []).append(message)
            if isinstance(message, Commit) or len(node.future) > 1:
                self.broadcast(SyncRequest(node.state.height, node.index))
            return
        if height < node.state.height:
            return
        self._feed(node, message)

    def _feed(self, node: SimNode, message: Any) -> None:
        assert node.state is not None
        if isinstance(message, Commit):
            if self._certificate_ok(message, node.state.height):
                self._decide(node, message.block_hash, message)
            return
        if isinstance(message, tm.Proposal):
            event: tm.Event = tm.ProposalReceived(message, message.block_hash not in self.invalid)
        elif isinstance(message, tm.Vote):
            node.seen_votes.append(message)
            event = tm.VoteReceived(message)
        else:
            event = message
        node.state, effects = tm.step(node.state, event)
        self._effects(node, effects)

    def _certificate_ok(self, commit: Commit, height: int) -> bool:
        signers = {v.validator for v in commit.precommits
                   if v.kind == tm.VoteKind.PRECOMMIT and v.height == height and v.block_hash == commit.block_hash
                   and v.validator in self.keys}  # fmt: skip
        rounds = {v.round for v in commit.precommits}
        return commit.height == height and len(rounds) == 1 and len(signers) >= 2 * self.n // 3 + 1

    def _effects(self, node: SimNode, effects: list[tm.Effect]) -> None:
        for effect in effects:
            if node.state is None or not node.up:
                return
            assert node.guard is not None
            if getattr(effect, "height", node.state.height) != node.state.height:
                continue  # an effect of a height this validator has since decided
            if isinstance(effect, tm.BuildProposal):
                value = effect.block_hash or block_hash(effect.height, effect.round, node.index)
                if node.guard.permit(node.state, 0, effect.round, value):
                    self.proposed.add(value)
                    self._send_own(node, tm.Proposal(effect.height, effect.round, value, effect.valid_round, node.key))
            elif isinstance(effect, tm.CastVote):
                if node.guard.permit(node.state, effect.kind, effect.round, effect.block_hash):
                    self._send_own(node, tm.Vote(effect.kind, effect.height, effect.round, effect.block_hash, node.key))
            elif isinstance(effect, tm.ScheduleTimeout):
                duration = TIMEOUT[effect.step] + effect.round * TIMEOUT_DELTA
                self._push(self.now + duration, node.index, tm.TimeoutFired(effect.step, effect.height, effect.round))
            elif isinstance(effect, tm.Decide):
                self._decide(node, effect.block_hash, Commit(effect.height, effect.block_hash, effect.precommits))
            elif isinstance(effect, tm.FetchBlock):
                self.broadcast(SyncRequest(effect.height, node.index))
            elif isinstance(effect, tm.Equivocation):
                node.evidence.append(effect)

    def _send_own(self, node: SimNode, message: Any) -> None:
        """To the peers over the network; to itself without loss, next in its queue."""
        for peer in self.nodes:
            if peer is not node:
                self.send(peer.index, message, node.index)
        self._push(self.now, node.index, message)

    def _decide(self, node: SimNode, value: bytes, commit: Commit) -> None:
        assert node.state is not None
        height = node.state.height
        node.decisions[height] = value
        node.certificates[height] = commit
        self.broadcast(commit)
        node.state, effects = resume_height(self.keys, node.key, height + 1, node.guard)
        self._effects(node, effects)
        for message in node.future.pop(height + 1, []):
            if node.state is not None and node.state.height == height + 1:
                self._feed(node, message)

    def _regossip(self, node: SimNode) -> None:
        """What the driver re-sends: this height's own proposal, and every vote of the
        height it holds, its own and those it relayed (the gossip property: a vote one
        correct validator received, a faulty one's included, reaches every correct one;
        one send is not enough before the network stabilises)."""
        state = node.state
        assert state is not None
        if node.faulty:
            for target, proposal in node.split_sent:
                if proposal.height == state.height:
                    self.send(target, proposal, node.index)
            return
        own = [p for p in state.proposals if p.proposer == node.key]
        for message in (*own, *state.votes):
            self.broadcast(message, node.index)
        if node.future:
            self.broadcast(SyncRequest(state.height, node.index))

    # -- faulty behaviour -----------------------------------------------------------------------
    def _byzantine(self, node: SimNode, message: Any) -> None:
        """Equivocate: split proposals between the correct validators and vote for every
        value seen, in both kinds."""
        assert node.state is not None
        if isinstance(message, Commit) and message.height >= node.state.height and self._certificate_ok(message, message.height):
            node.decisions[message.height] = message.block_hash
            node.state = tm.State(self.keys, node.key, message.height + 1)
            return
        if isinstance(message, tm.TimeoutFired):
            return
        if isinstance(message, tm.Proposal) and message.height == node.state.height:
            self.seen_values.setdefault(message.height, []).append((message.round, message.block_hash))
            targets = self.split_targets.get(message.block_hash, range(self.n))
            for kind in (tm.VoteKind.PREVOTE, tm.VoteKind.PRECOMMIT):
                for target in targets:
                    self.send(target, tm.Vote(kind, message.height, message.round, message.block_hash, node.key))
            if self.tricks:
                self._noise(node, message)
        height = node.state.height
        for round_ in range(0, 6):
            if tm.proposer(self.keys, height, round_) != node.key or (height, round_) in node.split_rounds:
                continue
            node.split_rounds.add((height, round_))
            earlier = [(r, v) for r, v in self.seen_values.get(height, []) if r < round_]
            if self.tricks and earlier and self.rng.random() < 0.5:  # re-propose a value seen, claiming a polka for it
                valid_round, value = self.rng.choice(earlier)
                valid_round = self.rng.randint(valid_round, round_ - 1)
                for target in self.correct():
                    self.send(target.index, tm.Proposal(height, round_, value, valid_round, node.key))
                continue
            correct = self.correct()
            for i, target in enumerate(correct):
                variant = i % 2
                value = block_hash(height, round_, node.index, variant)
                if self.rng.random() < self.invalid_rate:
                    self.invalid.add(value)
                self.proposed.add(value)
                self.split_targets.setdefault(value, []).append(target.index)
                proposal = tm.Proposal(height, round_, value, -1, node.key)
                node.split_sent.append((target.index, proposal))
                self.send(target.index, proposal)
                self._byzantine(node, proposal)


    def _noise(self, node: SimNode, proposal: tm.Proposal) -> None:
        """Nil votes in the proposal's round, votes for the next rounds, and a few votes for
        far rounds (which correct validators must drop), to random correct validators."""
        for target in self.correct():
            if self.rng.random() < 0.3:
                kind = self.rng.choice((tm.VoteKind.PREVOTE, tm.VoteKind.PRECOMMIT))
                self.send(target.index, tm.Vote(kind, proposal.height, proposal.round, tm.NIL, node.key))
            if self.rng.random() < 0.3:
                ahead = proposal.round + self.rng.randint(1, 2)
                self.send(target.index, tm.Vote(tm.VoteKind.PREVOTE, proposal.height, ahead, proposal.block_hash, node.key))
            for _ in range(3):
                far = proposal.round + self.rng.randint(tm.MAX_ROUND_LEAD + 1, 10_000)
                self.send(target.index, tm.Vote(tm.VoteKind.PRECOMMIT, proposal.height, far, proposal.block_hash, node.key))


def agreement_violations(sim: Simulation) -> list[int]:
    heights = {h for node in sim.correct() for h in node.decisions}
    return [h for h in sorted(heights) if len({node.decisions[h] for node in sim.correct() if h in node.decisions}) > 1]


def conflicting_votes(sim: Simulation) -> list[tuple[tm.Vote, tm.Vote]]:
    """Pairs of different votes by one validator for one (height, round, kind), from
    everything the correct validators received (their logs and the commits they hold)."""
    first: dict[tuple[bytes, int, int, int], tm.Vote] = {}
    pairs = []
    for node in sim.correct():
        votes = [*node.seen_votes, *(v for c in node.certificates.values() for v in c.precommits)]
        for vote in votes:
            key = (vote.validator, vote.height, vote.round, int(vote.kind))
            if key in first and first[key].block_hash != vote.block_hash:
                pairs.append((first[key], vote))
            first.setdefault(key, vote)
    return pairs
