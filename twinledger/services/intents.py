"""Writes that commit once. Every transaction a session sends is journaled in the home
under its *intent* — the signer and the call, or a key the workflow names — before it is
submitted, and forgotten once the chain took or refused it. Sending an intent again
while an attempt of it may still commit resends that attempt instead of writing twice:
the same bytes, or, when they are too old to be admitted, the same call signed again
with the same nonce, so that at most one attempt can ever commit.

An attempt that committed after its command gave up stands for the intent sent again
while it is recent (``SAME_WRITE_MS``): a write reported pending and sent again within
the hour is its retry, whatever else was written meanwhile (the command says the earlier
attempt committed). Later, or once a command or ``tx wait`` saw it commit, the same
call is a new write, as repeating a program call on purpose should be.

One process at a time works on an intent (a lock in the home), so two commands sending
the same write at once send one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from twinledger.contracts.calls import ContractCall
from twinledger.core.encoding import encode
from twinledger.core.sqlite import open_database
from twinledger.core.types import Transaction, decode_transaction
from twinledger.errors import TwinledgerError

T = TypeVar("T")
SAME_WRITE_MS = 3600 * 1000
"""How long an attempt that committed late stands for its intent sent again."""
KEEP_MS = 24 * 3600 * 1000
"""Attempts older than this are dropped from the journal: none can be admitted any more
(10 minutes), and a chain stalled for a day is repaired, not retried through."""
LOCK_STRIPES = 64


def intent_of(signer: bytes, call: ContractCall) -> bytes:
    """The intent of a call: who signs it and what it says."""
    return hashlib.sha256(encode({"signer": signer, "contract": call.contract, "method": call.method,
                                  "args": call.args})).digest()  # fmt: skip


def write_key(*parts: object) -> str:
    """A workflow's own intent key: everything that makes two sends of it the same write
    (JSON-able parts: names, lists, content digests)."""
    return json.dumps(parts, sort_keys=True)


def intent_key(signer: bytes, key: str) -> bytes:
    """The intent a workflow names (an idempotency key), per signer."""
    return hashlib.sha256(encode({"signer": signer, "key": key})).digest()


@dataclass(frozen=True)
class Attempt:
    tx: Transaction
    made: int
    """Milliseconds since the epoch when it was journaled."""

    @property
    def stands(self) -> bool:
        """Whether, committed late, it is the outcome of its intent sent again now."""
        return time.time() * 1000 - self.made < SAME_WRITE_MS


class IntentJournal:
    """The home's attempts not yet seen committed or refused, by intent."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS attempt (hash BLOB PRIMARY KEY, intent BLOB NOT NULL, tx BLOB NOT NULL,
                                            made INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS attempt_by_intent ON attempt (intent, made);
    """

    def __init__(self, home: Path) -> None:
        self.path = home / "data" / "intents.sqlite"
        self.db = self._guarded(lambda: open_database(self.path, self.SCHEMA, shared=True))  # used from threads, one at a time
        self._guarded(lambda: self.db.execute("DELETE FROM attempt WHERE made < ?", (_now() - KEEP_MS,)))

    def _guarded(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except (sqlite3.Error, OSError) as exc:
            raise TwinledgerError(f"the home's journal of writes ({self.path}) cannot be used: {exc}",
                                  code="journal_unavailable") from None  # fmt: skip

    def attempts(self, intent: bytes) -> list[Attempt]:
        rows = self._guarded(lambda: self.db.execute("SELECT tx, made FROM attempt WHERE intent = ? ORDER BY made",
                                                     (intent,)).fetchall())  # fmt: skip
        return [Attempt(_transaction(tx), made) for tx, made in rows]

    def add(self, intent: bytes, tx: Transaction) -> None:
        """Journal ``tx`` (durably) before it is submitted."""
        self._guarded(lambda: self.db.execute("INSERT OR IGNORE INTO attempt VALUES (?, ?, ?, ?)",
                                              (tx.hash, intent, tx.encoded, _now())))  # fmt: skip

    def forget(self, intent: bytes) -> None:
        """The intent is done: an attempt committed, or none can."""
        self._guarded(lambda: self.db.execute("DELETE FROM attempt WHERE intent = ?", (intent,)))

    def forget_attempt(self, tx_hash: bytes) -> None:
        """One attempt cannot commit (refused); the intent's others still may."""
        self._guarded(lambda: self.db.execute("DELETE FROM attempt WHERE hash = ?", (tx_hash,)))

    def intent_of_attempt(self, tx_hash: bytes) -> bytes | None:
        row = self._guarded(lambda: self.db.execute("SELECT intent FROM attempt WHERE hash = ?",
                                                    (tx_hash,)).fetchone())  # fmt: skip
        return bytes(row[0]) if row else None

    def close(self) -> None:
        self.db.close()


class Journal:
    """An IntentJournal used from the event loop: each call runs in a thread."""

    def __init__(self, journal: IntentJournal) -> None:
        self.journal = journal

    async def attempts(self, intent: bytes) -> list[Attempt]:
        return await asyncio.to_thread(self.journal.attempts, intent)

    async def add(self, intent: bytes, tx: Transaction) -> None:
        await asyncio.to_thread(self.journal.add, intent, tx)

    async def forget(self, intent: bytes) -> None:
        await asyncio.to_thread(self.journal.forget, intent)

    async def forget_attempt(self, tx_hash: bytes) -> None:
        await asyncio.to_thread(self.journal.forget_attempt, tx_hash)

    async def intent_of_attempt(self, tx_hash: bytes) -> bytes | None:
        return await asyncio.to_thread(self.journal.intent_of_attempt, tx_hash)


@contextlib.asynccontextmanager
async def opened(home: Path) -> AsyncIterator[Journal]:
    journal = await asyncio.to_thread(IntentJournal, home)
    try:
        yield Journal(journal)
    finally:
        journal.close()


@contextlib.asynccontextmanager
async def claimed(home: Path, intent: bytes) -> AsyncIterator[Journal]:
    """The journal, with this process alone working on ``intent`` (other processes and
    tasks of the home wait) until the block ends."""
    lock = home / "data" / "intent-locks" / f"{intent[0] % LOCK_STRIPES:02d}"
    lock.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX)
        async with opened(home) as journal:
            yield journal
    finally:
        os.close(descriptor)  # and with it the lock


def _now() -> int:
    return int(time.time() * 1000)


def _transaction(data: bytes) -> Transaction:
    tx = decode_transaction(data)
    assert isinstance(tx, Transaction), "the journal holds signed transactions only"
    return tx
