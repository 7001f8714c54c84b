"""Scripted adversarial schedules for the Tendermint machine: one Byzantine validator (the
proposer of round 2) and a network that delivers exactly what the script says, in the
order it says. Each scenario drives three correct validators to where one lock rule is
all that keeps them from deciding two different blocks at one height; it returns the
decisions. Random schedules rarely reach these corners (removing L28's checks went
unnoticed in 2,000 of them); these reach them every time.

Every function takes the machine's module, so the mutation tests can hand in a copy with
one rule removed.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

HEIGHT = 1
A, B = b"A" * 32, b"B" * 32


class Script:
    def __init__(self, tm: ModuleType) -> None:
        """Z, the Byzantine validator, proposes round 2; P0 and P1 (correct) rounds 0 and 1;
        X is the correct validator that proposes in none of them."""
        self.tm = tm
        keys = tuple(sorted(bytes([i + 1]) * 32 for i in range(4)))
        self.validators = keys
        self.Z = tm.proposer(keys, HEIGHT, 2)  # Byzantine: the proposer of round 2
        self.P0, self.P1 = tm.proposer(keys, HEIGHT, 0), tm.proposer(keys, HEIGHT, 1)
        self.X = next(k for k in keys if k not in (self.Z, self.P0, self.P1))
        self.states: dict[bytes, Any] = {k: tm.start_height(keys, k, HEIGHT)[0] for k in keys if k != self.Z}
        self.decided: dict[bytes, bytes] = {}

    def proposal(self, round_: int, value: bytes, valid_round: int = -1) -> Any:
        proposal = self.tm.Proposal(HEIGHT, round_, value, valid_round, self.tm.proposer(self.validators, HEIGHT, round_))
        return self.tm.ProposalReceived(proposal, True)

    def vote(self, kind: str, round_: int, value: bytes, by: bytes) -> Any:
        vote_kind = self.tm.VoteKind.PREVOTE if kind == "prevote" else self.tm.VoteKind.PRECOMMIT
        return self.tm.VoteReceived(self.tm.Vote(vote_kind, HEIGHT, round_, value, by))

    def timeout(self, step: str, round_: int) -> Any:
        return self.tm.TimeoutFired(getattr(self.tm.Step, step), HEIGHT, round_)

    def cast(self, who: bytes, kind: str, round_: int) -> bytes | None:
        """What ``who`` voted, if it did (its own vote is in its log)."""
        vote_kind = self.tm.VoteKind.PREVOTE if kind == "prevote" else self.tm.VoteKind.PRECOMMIT
        for v in self.states[who].votes:
            if v.validator == who and v.kind == vote_kind and v.round == round_:
                return v.block_hash
        return None


def _run(tm: ModuleType, s: Script, who: bytes, *events: Any) -> None:
    """Step ``who`` through ``events``; its own votes are fed back to it at once, as the
    driver does with what it signs."""
    for event in events:
        s.states[who], effects = tm.step(s.states[who], event)
        for effect in effects:
            if isinstance(effect, tm.Decide):
                s.decided[who] = effect.block_hash
            if isinstance(effect, tm.CastVote):
                kind = "prevote" if effect.kind == tm.VoteKind.PREVOTE else "precommit"
                _run(tm, s, who, s.vote(kind, effect.round, effect.block_hash, who))


def _round0_b_locked_by(tm: ModuleType, s: Script, lockers: list[bytes]) -> None:
    """Round 0: P0 proposes B; every correct validator prevotes B. ``lockers`` see the
    polka (Z shows them a prevote for B) and precommit B; the others see Z prevote nil,
    time out and precommit nil. Z precommits B to the lockers."""
    correct = list(s.states)
    for who in correct:
        _run(tm, s, who, s.proposal(0, B))
    for who in correct:
        others = [k for k in correct if k != who]
        if who in lockers:
            _run(tm, s, who, s.vote("prevote", 0, B, s.Z), *(s.vote("prevote", 0, B, k) for k in others[:1]))
        else:  # sees two prevotes for B (its own and another's, not a locker's if it can) and Z's nil: no polka
            peer = next((k for k in others if k not in lockers), others[0])
            _run(tm, s, who, s.vote("prevote", 0, B, peer), s.vote("prevote", 0, tm.NIL, s.Z), s.timeout("PREVOTE", 0))


def lock_then_new_value(tm: ModuleType) -> dict[bytes, bytes]:
    """L22 and L36: H1 decides B in round 0; H2 locked B there too. In round 1 the
    unlocked P1 proposes A: only H2's lock (L36 set it, L22 keeps it) stops A's polka."""
    s = Script(tm)
    h1, h2 = s.X, s.P0
    _round0_b_locked_by(tm, s, [h1, h2])
    _run(tm, s, h1, s.vote("precommit", 0, B, h2), s.vote("precommit", 0, B, s.Z))
    assert s.decided.get(h1) == B, "the script expects H1 to decide B in round 0"
    for who in (h2, s.P1):  # the others see B's precommits short of a quorum, and time out
        others = [s.vote("precommit", 0, s.cast(k, "precommit", 0) or tm.NIL, k) for k in (h1, h2, s.P1) if k != who]
        _run(tm, s, who, *others, s.vote("precommit", 0, tm.NIL, s.Z), s.timeout("PRECOMMIT", 0))
    for who in (h2, s.P1):
        _run(tm, s, who, s.proposal(1, A))
    prevotes = [s.vote("prevote", 1, s.cast(k, "prevote", 1) or tm.NIL, k) for k in (h2, s.P1)]
    for who in (h2, s.P1):
        _run(tm, s, who, *(p for p in prevotes if p.vote.validator != who), s.vote("prevote", 1, A, s.Z))
    precommits = [s.vote("precommit", 1, s.cast(k, "precommit", 1) or tm.NIL, k) for k in (h2, s.P1)]
    for who in (h2, s.P1):
        _run(tm, s, who, *(p for p in precommits if p.vote.validator != who), s.vote("precommit", 1, A, s.Z))
    return s.decided


def later_lock_then_old_value(tm: ModuleType, claimed_round: int) -> dict[bytes, bytes]:
    """L28: H1 locks B in round 0 (it alone sees the polka). In round 1, A gets its polka;
    H2 decides A, H3 locks A. In round 2, Z proposes B again claiming a polka in
    ``claimed_round``: 0 (true, but H3's lock on A is newer: L28's locked-round test
    stops it) or 1 (false: L28's 2f+1 prevote requirement stops it)."""
    s = Script(tm)
    h1 = s.X
    h2, h3 = s.P1, s.P0
    _round0_b_locked_by(tm, s, [h1])
    round0 = {k: s.cast(k, "precommit", 0) or tm.NIL for k in (h1, h2, h3)}
    for who in (h1, h2, h3):
        _run(tm, s, who, *(s.vote("precommit", 0, v, k) for k, v in round0.items() if k != who),
             s.timeout("PRECOMMIT", 0))  # fmt: skip
    for who in (h1, h2, h3):
        _run(tm, s, who, s.proposal(1, A))
    round1 = {k: s.cast(k, "prevote", 1) or tm.NIL for k in (h1, h2, h3)}  # H1 (locked on B) prevotes nil
    for who in (h1, h2, h3):  # Z prevotes A to H2 and H3, nil to H1: only they see A's polka
        _run(tm, s, who, *(s.vote("prevote", 1, v, k) for k, v in round1.items() if k != who),
             s.vote("prevote", 1, tm.NIL if who == h1 else A, s.Z), s.timeout("PREVOTE", 1))  # fmt: skip
    _run(tm, s, h2, s.vote("precommit", 1, A, h3), s.vote("precommit", 1, A, s.Z))
    assert s.decided.get(h2) == A, "the script expects H2 to decide A in round 1"
    for who in (h1, h3):  # they see A's precommits short of a quorum, and time out
        _run(tm, s, who, *(s.vote("precommit", 1, s.cast(k, "precommit", 1) or tm.NIL, k) for k in (h1, h3) if k != who),
             s.vote("precommit", 1, tm.NIL, s.Z), s.timeout("PRECOMMIT", 1))  # fmt: skip
    # Round 2: H3 gets H1's round-0 prevote for B at last (so B's round-0 polka is real);
    # Z proposes B again, prevotes and precommits B.
    _run(tm, s, h3, s.vote("prevote", 0, B, h1))
    for who in (h1, h3):
        _run(tm, s, who, s.proposal(2, B, valid_round=claimed_round))
    for kind in ("prevote", "precommit"):  # each hears the other's vote and Z's for B
        cast = {k: s.cast(k, kind, 2) for k in (h1, h3)}
        for who, other in ((h1, h3), (h3, h1)):
            if cast[other] is not None:
                _run(tm, s, who, s.vote(kind, 2, cast[other], other))
            _run(tm, s, who, s.vote(kind, 2, B, s.Z))
    return s.decided


SCENARIOS = {
    "a lock taken in round 0 against a new value in round 1": lock_then_new_value,
    "a newer lock against an old value's true polka": lambda tm: later_lock_then_old_value(tm, 0),
    "a lock against an old value's claimed polka": lambda tm: later_lock_then_old_value(tm, 1),
}
