"""The validator's vote guard: it persists the lock and every vote it allows before the
vote is signed, so a restarted validator never signs two different votes for one
(height, round, kind) and resumes where it stopped, with no file to repair by hand. With
the valid value it keeps the 2f+1 signed prevotes that made it (the proof of lock): a
restarted validator that kept its lock but lost the proof could leave the others unable
ever to follow it, if a faulty validator's vote was part of that proof."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from twinledger.consensus.tendermint import CastVote, Effect, ScheduleTimeout, State, Step, Vote, VoteKind, start_round
from twinledger.core.encoding import decode, encode
from twinledger.errors import DecodeError


@dataclass(frozen=True)
class SignerRecord:
    """What survives a crash: the height in progress, its round, lock, valid value and
    the votes already signed at that height."""

    height: int = 0
    round: int = 0
    locked_value: bytes | None = None
    locked_round: int = -1
    valid_value: bytes | None = None
    valid_round: int = -1
    votes: tuple[tuple[int, int, bytes], ...] = ()
    """(round, kind, block hash) of each proposal (kind 0) and vote signed at ``height``."""
    proof: tuple[tuple[bytes, bytes], ...] = ()
    """(validator, signature) of the prevotes for the valid value in the valid round."""


class VoteGuard:
    def __init__(self, load: Callable[[], bytes | None], save: Callable[[bytes], None]) -> None:
        self._save = save
        raw = load()
        self.record = SignerRecord() if raw is None else _parse(raw)

    def permit(self, state: State, kind: int, round_: int, block_hash: bytes) -> bool:
        """True if this proposal (kind 0) or vote (a VoteKind) may be signed; it and the lock
        are durable when this returns. Signing the same message again is allowed."""
        height = state.height
        if height < self.record.height:
            return False
        votes = self.record.votes if height == self.record.height else ()
        for signed_round, signed_kind, signed_hash in votes:
            if (signed_round, signed_kind) == (round_, int(kind)):
                return signed_hash == block_hash
        if votes and max(r for r, _, _ in votes) > round_:
            return False  # never vote in a round older than one already voted in
        self._store(state, (*votes, (round_, int(kind), block_hash)))
        return True

    def signed_at(self, height: int) -> tuple[tuple[int, int, bytes], ...]:
        return self.record.votes if height == self.record.height else ()

    def restore(self, state: State) -> State:
        """``state`` (fresh at its height) with the persisted round and lock, if they are for it."""
        r = self.record
        if r.height != state.height:
            return state
        proof = tuple(Vote(VoteKind.PREVOTE, r.height, r.valid_round, r.valid_value or b"", validator, signature)
                      for validator, signature in r.proof if validator in state.validators)  # fmt: skip
        return dataclasses.replace(state, round=r.round, locked_value=r.locked_value, locked_round=r.locked_round,
                                   valid_value=r.valid_value, valid_round=r.valid_round, votes=proof)  # fmt: skip

    def _store(self, state: State, votes: tuple[tuple[int, int, bytes], ...]) -> None:
        proof = tuple((v.validator, v.signature) for v in state.votes
                      if (v.kind, v.round, v.block_hash) == (VoteKind.PREVOTE, state.valid_round, state.valid_value))  # fmt: skip
        record = SignerRecord(state.height, state.round, state.locked_value, state.locked_round,
                              state.valid_value, state.valid_round, votes, proof)  # fmt: skip
        self._save(encode(dataclasses.asdict(record)))
        self.record = record


def _parse(raw: bytes) -> SignerRecord:
    try:
        obj = decode(raw)
        votes = tuple((int(r), int(k), bytes(h)) for r, k, h in obj.pop("votes"))
        proof = tuple((bytes(v), bytes(s)) for v, s in obj.pop("proof", ()))  # a record from before has none
        return SignerRecord(**obj, votes=votes, proof=proof)
    except (DecodeError, TypeError, ValueError, KeyError) as exc:
        raise DecodeError("the validator's vote record is unreadable; refusing to sign from a blank record") from exc


def resume_height(validators: tuple[bytes, ...], me: bytes | None, height: int,
                  guard: VoteGuard | None) -> tuple[State, list[Effect]]:  # fmt: skip
    """The machine for ``height``; after a restart, at the persisted round and lock, with
    the votes already signed in that round cast again (the same votes, so the guard allows
    them). After a precommit, the timeout that moves the round on is armed; after a
    prevote it is not: the prevote timeout waits for 2f+1 prevotes (L34), which the peers'
    regossip brings back, else it would fire first and precommit nil for a value that had
    its polka."""
    state = State(tuple(validators), me, height)
    if guard is None:
        return start_round(state, 0)
    state = guard.restore(state)
    signed = [(kind, block_hash) for round_, kind, block_hash in guard.signed_at(height) if round_ == state.round and kind]
    if not signed:
        return start_round(state, state.round)
    last = max(kind for kind, _ in signed)
    state = dataclasses.replace(state, step=Step.PREVOTE if last == VoteKind.PREVOTE else Step.PRECOMMIT)
    effects: list[Effect] = [CastVote(VoteKind(kind), height, state.round, block_hash) for kind, block_hash in signed]
    if state.step == Step.PRECOMMIT:
        effects.append(ScheduleTimeout(state.step, height, state.round))
    return state, effects
