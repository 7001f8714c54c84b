"""The home's journal of writes on its own: what is forgotten when, what is kept how
long, and that one process at a time works on an intent."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import pytest

from twinledger.contracts.calls import ContractCall
from twinledger.core.types import resigned, sign_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.errors import TwinledgerError
from twinledger.services import intents

KEY = SigningKey.generate()
CALL = ContractCall("twins", "call_program", {"twin": "t1", "program": "SetVelocity", "params": {"velocity": "1.5"}})


def _attempt(nonce: int = 7):
    return sign_transaction(KEY, chain_id="plant", nonce=nonce, contract=CALL.contract, method=CALL.method,
                            args=CALL.args, timestamp=int(time.time() * 1000))  # fmt: skip


def test_an_intent_is_its_signer_and_its_call():
    assert intents.intent_of(KEY.public, CALL) == intents.intent_of(KEY.public, ContractCall(**vars(CALL)))
    other = ContractCall(CALL.contract, CALL.method, {**CALL.args, "params": {"velocity": "2.0"}})
    assert intents.intent_of(KEY.public, other) != intents.intent_of(KEY.public, CALL)
    assert intents.intent_of(SigningKey.generate().public, CALL) != intents.intent_of(KEY.public, CALL)
    assert intents.intent_key(KEY.public, "doc") != intents.intent_key(SigningKey.generate().public, "doc")


def test_a_refused_attempt_is_forgotten_alone_and_a_done_intent_whole(tmp_path: Path):
    journal = intents.IntentJournal(tmp_path)
    intent = intents.intent_of(KEY.public, CALL)
    first = _attempt()
    again = sign_transaction(KEY, chain_id=first.chain_id, nonce=first.nonce, contract=first.contract,
                             method=first.method, args=first.args, timestamp=first.timestamp + 1)  # signed again
    assert resigned(KEY, first).nonce == first.nonce
    journal.add(intent, first)
    journal.add(intent, again)
    assert [a.tx.hash for a in journal.attempts(intent)] == [first.hash, again.hash]
    assert journal.intent_of_attempt(first.hash) == intent and again.nonce == first.nonce
    journal.forget_attempt(again.hash)
    assert [a.tx.hash for a in journal.attempts(intent)] == [first.hash], "the other attempt may still commit"
    journal.close()
    reopened = intents.IntentJournal(tmp_path)  # on disk
    assert [a.tx for a in reopened.attempts(intent)] == [first]
    reopened.forget(intent)
    assert reopened.attempts(intent) == []


def test_a_late_commit_stands_for_an_hour_and_the_journal_keeps_a_day(tmp_path: Path):
    now = int(time.time() * 1000)
    assert intents.Attempt(_attempt(), now - 60_000).stands
    assert not intents.Attempt(_attempt(), now - intents.SAME_WRITE_MS - 1).stands
    journal = intents.IntentJournal(tmp_path)
    intent = intents.intent_of(KEY.public, CALL)
    journal.add(intent, _attempt())
    journal.close()
    db = sqlite3.connect(tmp_path / "data" / "intents.sqlite")
    db.execute("UPDATE attempt SET made = ?", (now - intents.KEEP_MS - 1,))
    db.commit()
    db.close()
    assert intents.IntentJournal(tmp_path).attempts(intent) == [], "older than a day: dropped when opened"


def test_one_process_at_a_time_works_on_an_intent(tmp_path: Path):
    intent = intents.intent_of(KEY.public, CALL)
    stripe = tmp_path / "data" / "intent-locks" / f"{intent[0] % intents.LOCK_STRIPES:02d}"

    def locked_elsewhere() -> bool:
        descriptor = os.open(stripe, os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)
        return False

    async def claim() -> tuple[bool, bool]:
        async with intents.claimed(tmp_path, intent) as journal:
            await journal.add(intent, _attempt())
            held = locked_elsewhere()
        return held, locked_elsewhere()

    assert asyncio.run(claim()) == (True, False)


def test_a_journal_that_cannot_be_used_is_one_line(tmp_path: Path):
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(TwinledgerError) as caught:
        intents.IntentJournal(tmp_path)
    assert caught.value.code == "journal_unavailable" and "intents.sqlite" in caught.value.message
