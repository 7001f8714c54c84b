"""The chain store in SQL, shared by the SQLite and PostgreSQL engines.

Statements are written once with ``?`` placeholders; an engine supplies connections,
its column types and its placeholder style. Every lookup the node makes on a hot path
is a primary-key or index seek.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from twinledger.abc import BlockResult, ChainStore, StateValue, TransactionLocation
from twinledger.core.encoding import decode
from twinledger.core.killpoints import kill_point
from twinledger.core.types import (
    AnyTransaction,
    Block,
    BlockHeader,
    CommitCertificate,
    Receipt,
    Transaction,
    decode_certificate,
    decode_header,
    decode_receipt,
    decode_transaction,
    encode_certificate,
    encode_header,
    encode_receipt,
    encode_transaction,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    hash {blob} PRIMARY KEY, height {int} NOT NULL, previous {blob} NOT NULL,
    header {blob} NOT NULL, certificate {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS block_txs (
    block_hash {blob} NOT NULL, idx {int} NOT NULL, tx_hash {blob} NOT NULL, tx {blob} NOT NULL,
    PRIMARY KEY (block_hash, idx));
CREATE TABLE IF NOT EXISTS canonical (height {int} PRIMARY KEY, hash {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS tx_index (
    tx_hash {blob} PRIMARY KEY, height {int} NOT NULL, idx {int} NOT NULL, receipt {blob} NOT NULL);
CREATE INDEX IF NOT EXISTS tx_index_height ON tx_index (height);
CREATE TABLE IF NOT EXISTS state (
    key {text} NOT NULL, height {int} NOT NULL, value {blob}, PRIMARY KEY (key, height));
CREATE INDEX IF NOT EXISTS state_height ON state (height);
CREATE TABLE IF NOT EXISTS pending (tx_hash {blob} PRIMARY KEY, seq {int} NOT NULL, tx {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value {blob} NOT NULL);
"""


class SqlChainStore(ChainStore):
    blob_type = "BLOB"
    int_type = "INTEGER"
    text_type = "TEXT"
    """State keys compare in code point order on every engine (prefix ranges rely on it)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        with self._transaction() as cur:
            for statement in SCHEMA.format(blob=self.blob_type, int=self.int_type, text=self.text_type).split(";"):
                if statement.strip():
                    cur.execute(statement)
        row = self._one("SELECT MAX(seq) FROM pending")
        self._seq = itertools.count((row[0] or 0) + 1 if row else 1)

    # -- engine hooks ----------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Any: ...

    @abstractmethod
    def _sql(self, statement: str) -> str:
        """Rewrite ``?`` placeholders for this engine."""

    @abstractmethod
    def _begin(self, conn: Any) -> Any:
        """A context manager that makes its block one atomic, durable transaction."""

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        conn = self._conn()
        with self._begin(conn):
            yield _Cursor(conn.cursor(), self._sql)

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _one(self, statement: str, *params: Any) -> Any:
        cur = _Cursor(self._conn().cursor(), self._sql)
        cur.execute(statement, params)
        return cur.fetchone()

    def _all(self, statement: str, *params: Any) -> list[Any]:
        cur = _Cursor(self._conn().cursor(), self._sql)
        cur.execute(statement, params)
        return cur.fetchall()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(Exception):  # best effort at shutdown
                    conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- blocks ----------------------------------------------------------------------------
    def _insert_block(self, cur: _Cursor, block: Block, certificate: CommitCertificate,
                      stored: tuple[AnyTransaction, ...]) -> None:  # fmt: skip
        header = block.header
        cur.execute(
            "INSERT INTO blocks (hash, height, previous, header, certificate) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (hash) DO UPDATE SET certificate = excluded.certificate",
            (header.hash, header.height, header.previous, encode_header(header),
             encode_certificate(certificate)),
        )  # fmt: skip
        cur.executemany(
            "INSERT INTO block_txs (block_hash, idx, tx_hash, tx) VALUES (?, ?, ?, ?) ON CONFLICT (block_hash, idx) DO NOTHING",
            [(header.hash, i, tx.hash, encode_transaction(tx)) for i, tx in enumerate(stored)],
        )

    def commit_block(self, block: Block, certificate: CommitCertificate, result: BlockResult,
                     stored: tuple[AnyTransaction, ...]) -> None:  # fmt: skip
        header = block.header
        kill_point("commit.before")
        with self._transaction() as cur:
            self._insert_block(cur, block, certificate, stored)
            cur.execute("INSERT INTO canonical (height, hash) VALUES (?, ?)", (header.height, header.hash))
            cur.executemany(
                "INSERT INTO tx_index (tx_hash, height, idx, receipt) VALUES (?, ?, ?, ?)",
                [(r.tx_hash, header.height, i, encode_receipt(r)) for i, r in enumerate(result.receipts)],
            )
            cur.executemany(
                "INSERT INTO state (key, height, value) VALUES (?, ?, ?)",
                [(key, header.height, value) for key, value in result.encoded_writes.items()],
            )
            cur.executemany("DELETE FROM pending WHERE tx_hash = ?", [(tx.hash,) for tx in stored])
            kill_point("commit.written")
        kill_point("commit.durable")

    def store_side_block(self, block: Block, certificate: CommitCertificate) -> None:
        with self._transaction() as cur:
            self._insert_block(cur, block, certificate, block.transactions)

    def rewind(self, height: int) -> None:
        with self._transaction() as cur:
            for table in ("canonical", "tx_index", "state"):
                cur.execute(f"DELETE FROM {table} WHERE height > ?", (height,))

    def head(self) -> BlockHeader | None:
        row = self._one("SELECT b.header FROM canonical c JOIN blocks b ON b.hash = c.hash ORDER BY c.height DESC LIMIT 1")
        return decode_header(bytes(row[0])) if row else None

    def header_by_height(self, height: int) -> BlockHeader | None:
        row = self._one(
            "SELECT b.header FROM canonical c JOIN blocks b ON b.hash = c.hash WHERE c.height = ?",
            height,
        )
        return decode_header(bytes(row[0])) if row else None

    def block_by_hash(self, block_hash: bytes) -> Block | None:
        row = self._one("SELECT header FROM blocks WHERE hash = ?", block_hash)
        if row is None:
            return None
        txs = self._all("SELECT tx FROM block_txs WHERE block_hash = ? ORDER BY idx", block_hash)
        return Block(decode_header(bytes(row[0])), tuple(decode_transaction(bytes(t[0])) for t in txs))

    def certificate(self, block_hash: bytes) -> CommitCertificate | None:
        row = self._one("SELECT certificate FROM blocks WHERE hash = ?", block_hash)
        return decode_certificate(bytes(row[0])) if row else None

    def headers(self) -> Iterator[tuple[BlockHeader, bool]]:
        rows = self._all("SELECT b.header, c.hash FROM blocks b LEFT JOIN canonical c ON c.hash = b.hash ORDER BY b.height")
        for header, canonical in rows:
            yield decode_header(bytes(header)), canonical is not None

    def transaction(self, tx_hash: bytes) -> TransactionLocation | None:
        row = self._one(
            "SELECT t.height, t.idx, t.receipt, b.tx, c.hash FROM tx_index t"
            " JOIN canonical c ON c.height = t.height"
            " JOIN block_txs b ON b.block_hash = c.hash AND b.idx = t.idx"
            " WHERE t.tx_hash = ?",
            tx_hash,
        )
        if row is None:
            return None
        height, index, receipt, tx, block_hash = row
        return TransactionLocation(decode_transaction(bytes(tx)), bytes(block_hash), height, index,
                                   decode_receipt(bytes(receipt)))  # fmt: skip

    def raw_block(self, height: int) -> tuple[bytes, bytes, bytes, list[bytes]] | None:
        row = self._one(
            "SELECT b.hash, b.header, b.certificate FROM canonical c JOIN blocks b ON b.hash = c.hash WHERE c.height = ?",
            height,
        )
        if row is None:
            return None
        txs = self._all("SELECT tx FROM block_txs WHERE block_hash = ? ORDER BY idx", row[0])
        return bytes(row[0]), bytes(row[1]), bytes(row[2]), [bytes(t[0]) for t in txs]

    # -- state -----------------------------------------------------------------------------
    def state_get(self, key: str, height: int | None = None) -> StateValue:
        if height is None:
            row = self._one("SELECT value FROM state WHERE key = ? ORDER BY height DESC LIMIT 1", key)
        else:
            row = self._one(
                "SELECT value FROM state WHERE key = ? AND height <= ? ORDER BY height DESC LIMIT 1",
                key, height,
            )  # fmt: skip
        if row is None or row[0] is None:
            return None
        return decode(bytes(row[0]))

    def state_items(self, prefix: str, height: int | None = None) -> list[tuple[str, StateValue]]:
        if not prefix:
            raise ValueError("state_items needs a prefix")
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        at = (1 << 62) if height is None else height
        rows = self._all(
            "SELECT s.key, s.value FROM state s WHERE s.key >= ? AND s.key < ? AND s.height ="
            " (SELECT MAX(t.height) FROM state t WHERE t.key = s.key AND t.height <= ?)",
            prefix, upper, at,
        )  # fmt: skip
        rows.sort(key=lambda row: row[0])
        return [(key, decode(bytes(value))) for key, value in rows if value is not None]

    def state_writes(self, height: int) -> dict[str, StateValue]:
        rows = self._all("SELECT key, value FROM state WHERE height = ?", height)
        return {key: None if value is None else decode(bytes(value)) for key, value in rows}

    def receipts(self, height: int) -> list[Receipt]:
        rows = self._all("SELECT receipt FROM tx_index WHERE height = ? ORDER BY idx", height)
        return [decode_receipt(bytes(row[0])) for row in rows]

    # -- pending ---------------------------------------------------------------------------
    def add_pending(self, txs: Iterable[Transaction]) -> None:
        rows = [(tx.hash, next(self._seq), encode_transaction(tx)) for tx in txs]
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO pending (tx_hash, seq, tx) VALUES (?, ?, ?) ON CONFLICT (tx_hash) DO NOTHING",
                rows,
            )

    def pending(self) -> list[Transaction]:
        rows = self._all("SELECT tx FROM pending ORDER BY seq")
        txs = [decode_transaction(bytes(row[0])) for row in rows]
        return [tx for tx in txs if isinstance(tx, Transaction)]

    # -- metadata --------------------------------------------------------------------------
    def meta(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", key)
        return bytes(row[0]) if row else None

    def meta_items(self, prefix: str) -> list[tuple[str, bytes]]:
        rows = self._all("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", len(prefix), prefix)
        rows.sort(key=lambda row: row[0])  # code point order on every engine, whatever its collation
        return [(key, bytes(value)) for key, value in rows]

    def set_meta(self, key: str, value: bytes) -> None:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


class _Cursor:
    """A cursor that rewrites placeholders for its engine."""

    def __init__(self, cursor: Any, sql: Any) -> None:
        self._cursor = cursor
        self._rewrite = sql

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        self._cursor.execute(self._rewrite(statement), params)

    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._cursor.executemany(self._rewrite(statement), rows)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()
