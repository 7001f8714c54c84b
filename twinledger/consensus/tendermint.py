"""Tendermint (Buchman, Kwon, Milosevic 2018, Algorithm 1) as a pure state machine.

``step(state, event) -> (state, effects)`` is the whole algorithm for one height: it
reads no clock, signs nothing, touches no disk. The driver (``consensus/bft.py``) turns
effects into signed messages, timers and commits, and the simulator in the tests runs
the same function under adversarial schedules. Values are block hashes; whether a block
is valid is decided by the driver before it hands the proposal in.

Line numbers (L22, L28, …) refer to Algorithm 1; docs/consensus.md explains the rules.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

NIL = b""
"""The block hash of a nil vote."""
MAX_ROUND_LEAD = 8
"""Proposals and votes more than this many rounds ahead of a validator's round are
dropped; their senders send them again (regossip) once it is closer. One Byzantine
validator's votes for unbounded rounds otherwise cost memory and time on every step
(CometBFT likewise bounds the rounds a peer may open ahead)."""


class Step(IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class VoteKind(IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


# -- messages (signatures are checked by the driver before they get here) ---------------------


@dataclass(frozen=True)
class Proposal:
    height: int
    round: int
    block_hash: bytes
    valid_round: int
    proposer: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class Vote:
    kind: VoteKind
    height: int
    round: int
    block_hash: bytes
    validator: bytes
    signature: bytes = b""


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposalReceived:
    proposal: Proposal
    block_valid: bool
    """valid(v): the driver has the block and it executes correctly on the head."""
    timely: bool = True
    """The block's time was close to the receiver's clock when the proposal arrived
    (proposer-based timestamps: a proposer cannot set the chain's time at will)."""


@dataclass(frozen=True)
class VoteReceived:
    vote: Vote


@dataclass(frozen=True)
class TimeoutFired:
    step: Step
    height: int
    round: int


Event = ProposalReceived | VoteReceived | TimeoutFired


# -- effects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildProposal:
    """This validator proposes at (height, round): ``block_hash`` if it has a valid value,
    else a new block built by the driver."""

    height: int
    round: int
    block_hash: bytes | None
    valid_round: int


@dataclass(frozen=True)
class CastVote:
    kind: VoteKind
    height: int
    round: int
    block_hash: bytes


@dataclass(frozen=True)
class ScheduleTimeout:
    step: Step
    height: int
    round: int


@dataclass(frozen=True)
class Decide:
    height: int
    round: int
    block_hash: bytes
    precommits: tuple[Vote, ...]


@dataclass(frozen=True)
class FetchBlock:
    """2f+1 precommits for a block this validator has no proposal for (pitfall: fetch it)."""

    height: int
    round: int
    block_hash: bytes


@dataclass(frozen=True)
class Equivocation:
    """Two signed votes of one validator for one (height, round, kind) that differ."""

    first: Vote
    second: Vote


Effect = BuildProposal | CastVote | ScheduleTimeout | Decide | FetchBlock | Equivocation


# -- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    validators: tuple[bytes, ...]
    me: bytes | None
    height: int
    round: int = 0
    step: Step = Step.PROPOSE
    locked_value: bytes | None = None
    locked_round: int = -1
    valid_value: bytes | None = None
    valid_round: int = -1
    decided: bytes | None = None
    proposals: tuple[Proposal, ...] = ()
    votes: tuple[Vote, ...] = ()
    valid_blocks: frozenset[bytes] = frozenset()
    fired: frozenset[tuple[str, int]] = field(default=frozenset())
    """"First time" rules already fired, as (rule, round)."""
    equivocations: frozenset[tuple[bytes, int, int]] = frozenset()
    """(validator, kind, round) already reported as equivocating: one piece of evidence each."""
    untimely: frozenset[int] = frozenset()
    """Rounds whose proposal arrived with a block time far from this validator's clock."""

    @property
    def quorum(self) -> int:
        """More than 2/3 of the validators (2f+1)."""
        return 2 * len(self.validators) // 3 + 1

    @property
    def one_honest(self) -> int:
        """More than 1/3 of the validators (f+1): at least one of them is correct."""
        return len(self.validators) // 3 + 1


def proposer(validators: tuple[bytes, ...], height: int, round_: int) -> bytes:
    """Round-robin over the sorted validator set, shifted by height."""
    ordered = sorted(validators)
    return ordered[(height + round_) % len(ordered)]


def start_height(validators: tuple[bytes, ...], me: bytes | None, height: int) -> tuple[State, list[Effect]]:
    """The machine at round 0 of ``height`` and what it does first."""
    return start_round(State(tuple(validators), me, height), 0)


# -- queries over the height's message log ------------------------------------------------------


# The log holds one vote per (validator, kind, round), and an equivocator's further votes
# only for proposed values, at most one per value (``_record``).


def _votes(state: State, kind: VoteKind, round_: int) -> list[Vote]:
    return [v for v in state.votes if v.kind == kind and v.round == round_]


def _count(state: State, kind: VoteKind, round_: int, block_hash: bytes | None = None) -> int:
    """Validators voting ``kind`` in ``round_`` (for ``block_hash``, or for anything)."""
    if block_hash is None:
        return len({v.validator for v in _votes(state, kind, round_)})
    return sum(1 for v in _votes(state, kind, round_) if v.block_hash == block_hash)


def _later_senders(state: State) -> dict[int, set[bytes]]:
    """Who sent a proposal or vote for each round above the current one, in one pass."""
    senders: dict[int, set[bytes]] = {}
    for v in state.votes:
        if v.round > state.round:
            senders.setdefault(v.round, set()).add(v.validator)
    for p in state.proposals:
        if p.round > state.round:
            senders.setdefault(p.round, set()).add(p.proposer)
    return senders


def _proposals(state: State, round_: int) -> list[Proposal]:
    """The round's proposals (``_record`` keeps only its proposer's, at most two)."""
    return [p for p in state.proposals if p.round == round_]


def _proposal(state: State, round_: int) -> Proposal | None:
    proposals = _proposals(state, round_)
    return proposals[0] if proposals else None


def _first_time(state: State, rule: str, round_: int) -> tuple[bool, State]:
    if (rule, round_) in state.fired:
        return False, state
    return True, dataclasses.replace(state, fired=state.fired | {(rule, round_)})


# -- transitions ------------------------------------------------------------------------------


def start_round(state: State, round_: int) -> tuple[State, list[Effect]]:
    state = dataclasses.replace(state, round=round_, step=Step.PROPOSE)
    if state.me is not None and proposer(state.validators, state.height, round_) == state.me:
        return state, [BuildProposal(state.height, round_, state.valid_value, state.valid_round)]
    return state, [ScheduleTimeout(Step.PROPOSE, state.height, round_)]


def _cast(state: State, kind: VoteKind, block_hash: bytes) -> tuple[State, list[Effect]]:
    step = Step.PREVOTE if kind == VoteKind.PREVOTE else Step.PRECOMMIT
    state = dataclasses.replace(state, step=step)
    if state.me is None or state.me not in state.validators:
        return state, []
    return state, [CastVote(kind, state.height, state.round, block_hash)]


def _record(state: State, event: Event) -> tuple[State, list[Effect]]:
    """Add a message to the log; a second, different vote of one validator is evidence."""
    if isinstance(event, ProposalReceived):
        p = event.proposal
        if p.height != state.height or p.proposer != proposer(state.validators, p.height, p.round):
            return state, []
        if p.round > state.round + MAX_ROUND_LEAD:
            return state, []
        same_round = [q for q in state.proposals if q.round == p.round]
        if len(same_round) >= 2 or any(q.block_hash == p.block_hash for q in same_round):
            return state, []  # an equivocating proposer's second value is kept (others may lock on it), no more
        valid = state.valid_blocks | {p.block_hash} if event.block_valid else state.valid_blocks
        untimely = state.untimely if event.timely else state.untimely | {p.round}
        return dataclasses.replace(state, proposals=(*state.proposals, p), valid_blocks=valid, untimely=untimely), []
    if isinstance(event, VoteReceived):
        v = event.vote
        if v.height != state.height or v.validator not in state.validators or v.round > state.round + MAX_ROUND_LEAD:
            return state, []
        same_slot = [seen for seen in state.votes if (seen.validator, seen.kind, seen.round) == (v.validator, v.kind, v.round)]
        if not same_slot:
            return dataclasses.replace(state, votes=(*state.votes, v)), []
        if any(seen.block_hash == v.block_hash for seen in same_slot):
            return state, []
        slot = (v.validator, int(v.kind), v.round)
        effects: list[Effect] = [] if slot in state.equivocations else [Equivocation(same_slot[0], v)]
        state = dataclasses.replace(state, equivocations=state.equivocations | {slot})
        if v.block_hash in {p.block_hash for p in state.proposals}:
            # An equivocator's vote for a proposed value counts for it too: another validator
            # may hold a polka that rests on it, and without it no one could follow (liveness).
            state = dataclasses.replace(state, votes=(*state.votes, v))
        return state, effects
    return state, []


def _on_timeout(state: State, timeout: TimeoutFired) -> tuple[State, list[Effect]]:
    if (timeout.height, timeout.round) != (state.height, state.round) or state.decided is not None:
        return state, []
    if timeout.step == Step.PROPOSE and state.step == Step.PROPOSE:
        return _cast(state, VoteKind.PREVOTE, NIL)
    if timeout.step == Step.PREVOTE and state.step == Step.PREVOTE:
        return _cast(state, VoteKind.PRECOMMIT, NIL)
    if timeout.step == Step.PRECOMMIT:
        return start_round(state, state.round + 1)
    return state, []


def _apply_rules(state: State) -> tuple[State, list[Effect]]:
    """Fire the first rule whose condition holds; ([], same state) when none does."""
    if state.decided is not None:
        return state, []
    h, r = state.height, state.round

    # L49: a proposal and 2f+1 precommits for it, in any round: decide.
    for p in state.proposals:
        if _count(state, VoteKind.PRECOMMIT, p.round, p.block_hash) >= state.quorum and p.block_hash in state.valid_blocks:
            precommits = tuple(v for v in _votes(state, VoteKind.PRECOMMIT, p.round) if v.block_hash == p.block_hash)
            return dataclasses.replace(state, decided=p.block_hash), [Decide(h, p.round, p.block_hash, precommits)]
    # Pitfall: 2f+1 precommits for a block we have no proposal for — fetch the block.
    precommits = Counter((v.round, v.block_hash) for v in state.votes if v.kind == VoteKind.PRECOMMIT)
    for (round_, value), count in precommits.items():
        if value != NIL and count >= state.quorum:
            first, state_after = _first_time(state, "fetch", round_)
            if first and not any(p.block_hash == value for p in state.proposals):
                return state_after, [FetchBlock(h, round_, value)]

    # L55: f+1 messages of a higher round: skip to it.
    later = _later_senders(state)
    for round_ in sorted(later, reverse=True):
        if len(later[round_]) >= state.one_honest:
            return start_round(state, round_)

    proposal = _proposal(state, r)  # the first: what L22 and L28 prevote on
    if state.step == Step.PROPOSE and proposal is not None:
        v, vr = proposal.block_hash, proposal.valid_round
        valid = v in state.valid_blocks
        if vr == -1:  # L22, with the timeliness of proposer-based timestamps
            ok = valid and r not in state.untimely and (state.locked_round == -1 or state.locked_value == v)
            return _cast(state, VoteKind.PREVOTE, v if ok else NIL)
        if 0 <= vr < r and _count(state, VoteKind.PREVOTE, vr, v) >= state.quorum:  # L28
            ok = valid and (state.locked_round <= vr or state.locked_value == v)
            return _cast(state, VoteKind.PREVOTE, v if ok else NIL)

    if state.step == Step.PREVOTE and _count(state, VoteKind.PREVOTE, r) >= state.quorum:  # L34
        first, after = _first_time(state, "L34", r)
        if first:
            return after, [ScheduleTimeout(Step.PREVOTE, h, r)]

    for proposal in _proposals(state, r):  # L36: either of an equivocator's values may have its polka
        if (
            state.step < Step.PREVOTE
            or proposal.block_hash not in state.valid_blocks
            or _count(state, VoteKind.PREVOTE, r, proposal.block_hash) < state.quorum
        ):
            continue
        first, after = _first_time(state, "L36", r)
        if first:
            v = proposal.block_hash
            effects: list[Effect] = []
            if after.step == Step.PREVOTE:
                after = dataclasses.replace(after, locked_value=v, locked_round=r)
                after, effects = _cast(after, VoteKind.PRECOMMIT, v)
            return dataclasses.replace(after, valid_value=v, valid_round=r), effects

    if state.step == Step.PREVOTE and _count(state, VoteKind.PREVOTE, r, NIL) >= state.quorum:  # L44
        return _cast(state, VoteKind.PRECOMMIT, NIL)

    if _count(state, VoteKind.PRECOMMIT, r) >= state.quorum:  # L47
        first, after = _first_time(state, "L47", r)
        if first:
            return after, [ScheduleTimeout(Step.PRECOMMIT, h, r)]
    return state, []


def step(state: State, event: Event) -> tuple[State, list[Effect]]:
    """Apply one event, then every rule it enables, until none fires."""
    if isinstance(event, TimeoutFired):
        state, effects = _on_timeout(state, event)
    else:
        state, effects = _record(state, event)
    while True:
        before = state
        state, more = _apply_rules(state)
        effects.extend(more)
        if state == before and not more:
            return state, effects


def drive(state: State, events: Iterable[Event]) -> tuple[State, list[Effect]]:
    """Apply several events in order (a convenience for replay and tests)."""
    effects: list[Effect] = []
    for event in events:
        state, more = step(state, event)
        effects.extend(more)
    return state, effects
