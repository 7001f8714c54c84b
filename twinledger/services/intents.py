"""Writes that commit once. Every transaction a session waits for is journaled in the
home under its *intent* — the signer and the call, or a key the caller chooses — before
it is submitted, and forgotten once the chain took or refused it. Sending an intent
again while an attempt of it may still commit resends that attempt instead of writing
twice: the same bytes, or, when they are too old to be admitted, the same call signed
again with the same nonce, so that at most one attempt can ever commit.

An attempt that committed after its command gave up is taken as the result of the same
intent sent again within ``SAME_WRITE_MS``; later, sending it again is a new write.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from twinledger.contracts.calls import ContractCall
from twinledger.core.encoding import encode
from twinledger.core.sqlite import open_database
from twinledger.core.types import Transaction, decode_transaction

SAME_WRITE_MS = 24 * 3600 * 1000
"""How long an attempt that committed late stands for its intent."""


def intent_of(signer: bytes, call: ContractCall) -> bytes:
    """The intent of a call: who signs it and what it says."""
    return hashlib.sha256(encode({"signer": signer, "contract": call.contract, "method": call.method,
                                  "args": call.args})).digest()  # fmt: skip


def intent_key(signer: bytes, key: str) -> bytes:
    """The intent a caller names (an idempotency key), per signer."""
    return hashlib.sha256(encode({"signer": signer, "key": key})).digest()


@dataclass(frozen=True)
class Attempt:
    tx: Transaction
    made: int
    """Milliseconds since the epoch when it was journaled."""

    @property
    def fresh(self) -> bool:
        return time.time() * 1000 - self.made < SAME_WRITE_MS


class IntentJournal:
    """The home's attempts not yet seen committed or refused, by intent."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS attempt (hash BLOB PRIMARY KEY, intent BLOB NOT NULL, tx BLOB NOT NULL,
                                            made INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS attempt_by_intent ON attempt (intent, made);
    """

    def __init__(self, home: Path) -> None:
        self.db = open_database(home / "data" / "intents.sqlite", self.SCHEMA)

    def attempts(self, intent: bytes) -> list[Attempt]:
        rows = self.db.execute("SELECT tx, made FROM attempt WHERE intent = ? ORDER BY made", (intent,)).fetchall()
        return [Attempt(_transaction(tx), made) for tx, made in rows]

    def add(self, intent: bytes, tx: Transaction) -> None:
        """Journal ``tx`` (durably) before it is submitted."""
        self.db.execute("INSERT OR IGNORE INTO attempt VALUES (?, ?, ?, ?)",
                        (tx.hash, intent, tx.encoded, int(time.time() * 1000)))  # fmt: skip

    def forget(self, intent: bytes) -> None:
        self.db.execute("DELETE FROM attempt WHERE intent = ?", (intent,))

    def forget_transaction(self, tx_hash: bytes) -> None:
        """Forget the intent ``tx_hash`` is an attempt of (it was seen committed)."""
        self.db.execute("DELETE FROM attempt WHERE intent IN (SELECT intent FROM attempt WHERE hash = ?)", (tx_hash,))

    def close(self) -> None:
        self.db.close()


@contextlib.contextmanager
def journal(home: Path) -> Iterator[IntentJournal]:
    opened = IntentJournal(home)
    try:
        yield opened
    finally:
        opened.close()


def _transaction(data: bytes) -> Transaction:
    tx = decode_transaction(data)
    assert isinstance(tx, Transaction), "the journal holds signed transactions only"
    return tx
