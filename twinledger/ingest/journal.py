"""The node's ingest journal: which transaction holds each record of each stream.

A record's signed ``records.put`` is written here (fsynced) *before* it is submitted, so
whatever happens after, a record sent again — by a client that lost the connection, or
after a ``kill -9`` of the node — is matched to the transaction already made for it and
never becomes a second record. ``height`` is filled in once the transaction commits; a
row without it is re-checked against the chain when the node starts.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from twinledger.core.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (stream BLOB PRIMARY KEY, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shared_streams (stream BLOB PRIMARY KEY, attributes TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    stream BLOB NOT NULL,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    tx BLOB NOT NULL,
    tx_hash BLOB NOT NULL,
    height INTEGER,
    PRIMARY KEY (stream, seq)
);
CREATE INDEX IF NOT EXISTS records_open ON records (height) WHERE height IS NULL;
"""


@dataclass(frozen=True)
class StreamClaim:
    source: str
    """The client identity (organisation/node) the stream belongs to."""
    attributes: tuple[str, ...]
    """What its records are shared under; empty: private to the organisation."""


@dataclass(frozen=True)
class JournalRow:
    stream: bytes
    seq: int
    digest: bytes
    tx: bytes
    tx_hash: bytes
    height: int | None


class IngestJournal:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA, shared=True)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def claim_stream(self, stream: bytes, source: str, attributes: tuple[str, ...]) -> StreamClaim:
        """Who the stream belongs to and what it is shared under: ``source`` and
        ``attributes`` if the stream is new (its first hello fixes both)."""
        with self._transaction() as db:
            if db.execute("INSERT OR IGNORE INTO streams VALUES (?, ?)", (stream, source)).rowcount and attributes:
                db.execute("INSERT INTO shared_streams VALUES (?, ?)", (stream, "\n".join(attributes)))
            claim = self._claim(stream)
        assert claim is not None
        return claim

    def stream(self, stream: bytes) -> StreamClaim | None:
        """Who ``stream`` belongs to and what it is shared under; None if no client opened it."""
        with self._lock:
            return self._claim(stream)

    def _claim(self, stream: bytes) -> StreamClaim | None:
        owner = self._db.execute("SELECT source FROM streams WHERE stream = ?", (stream,)).fetchone()
        if owner is None:
            return None
        shared = self._db.execute("SELECT attributes FROM shared_streams WHERE stream = ?", (stream,)).fetchone()
        return StreamClaim(str(owner[0]), tuple(shared[0].split("\n")) if shared else ())

    def next_seq(self, stream: bytes) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM records WHERE stream = ?", (stream,)).fetchone()
        return int(row[0] or 0) + 1

    def lookup(self, stream: bytes, seq: int) -> JournalRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM records WHERE stream = ? AND seq = ?", (stream, seq)).fetchone()
        return JournalRow(*row) if row else None

    def add(self, rows: Iterable[JournalRow]) -> None:
        """Write (or, for a record re-signed, overwrite) rows durably, all or none."""
        self._write_all("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?)",
                        [(r.stream, r.seq, r.digest, r.tx, r.tx_hash, r.height) for r in rows])  # fmt: skip

    def committed(self, done: Iterable[tuple[bytes, int, int]]) -> None:
        """Record the heights of committed (stream, seq) records."""
        self._write_all("UPDATE records SET height = ? WHERE stream = ? AND seq = ?",
                        [(height, stream, seq) for stream, seq, height in done])  # fmt: skip

    def _write_all(self, statement: str, rows: list[tuple[object, ...]]) -> None:
        with self._transaction() as db:
            db.executemany(statement, rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One durable write for everything inside, all or none: in autocommit mode each
        statement (and each row of ``executemany``) would commit, and sync, by itself."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def open_rows(self) -> list[JournalRow]:
        """Rows whose transaction was not seen committed."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM records WHERE height IS NULL").fetchall()
        return [JournalRow(*row) for row in rows]

    def rows(self, stream: bytes, after: int = 0, limit: int = 1000) -> list[JournalRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM records WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                                    (stream, after, limit)).fetchall()  # fmt: skip
        return [JournalRow(*row) for row in rows]
