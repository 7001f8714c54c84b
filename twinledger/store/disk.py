"""A store node's local data: chunk files on disk and an SQLite index of items.

DIR/chunks/<ab>/<hash hex>   one file per chunk, written to a temporary name, fsynced,
                             renamed and the directory fsynced: an acknowledged chunk
                             survives kill -9 and power loss
DIR/corrupt/                 chunks that failed their hash, kept for inspection
DIR/index.db                 ACLs (newest version per item), which chunks belong to which
                             item, and feed updates
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from twinledger.core.encoding import decode, from_obj
from twinledger.core.sqlite import open_database
from twinledger.store.items import FeedUpdate, ItemAcl, StoreError, check_successor, chunk_hash, decode_acl

SCHEMA = """
CREATE TABLE IF NOT EXISTS acls (item BLOB PRIMARY KEY, version INTEGER NOT NULL, raw BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS item_chunks (item BLOB NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (item, hash));
CREATE INDEX IF NOT EXISTS item_chunks_by_hash ON item_chunks (hash);
CREATE TABLE IF NOT EXISTS feed_updates (item BLOB NOT NULL, sequence INTEGER NOT NULL, first INTEGER NOT NULL,
                                         last INTEGER NOT NULL, hash BLOB NOT NULL, raw BLOB NOT NULL,
                                         PRIMARY KEY (item, sequence));
CREATE INDEX IF NOT EXISTS feed_updates_by_time ON feed_updates (item, last);
"""
MAX_FEED_PAGE = 1000


class CorruptChunk(StoreError):
    code = "corrupt_chunk"


@dataclass(frozen=True)
class DiskStatus:
    items: int
    chunks: int
    bytes: int


class ChunkStore:
    """Thread-safe: the store server calls it from a pool of disk threads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (directory / "chunks").mkdir(parents=True, exist_ok=True)
        (directory / "corrupt").mkdir(exist_ok=True)
        self._db = open_database(directory / "index.db", SCHEMA, shared=True)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.directory / "chunks" / name[:2] / name

    # -- ACLs --------------------------------------------------------------------------------
    def acl(self, item: bytes) -> ItemAcl | None:
        with self._lock:
            row = self._db.execute("SELECT raw FROM acls WHERE item = ?", (item,)).fetchone()
        return decode_acl(row[0]) if row else None

    def put_acl(self, acl: ItemAcl) -> bool:
        """Keep ``acl`` if it is newer than the stored one and signed by the same owner;
        False if the stored one is as new. Raises if the owner differs."""
        with self._lock, self._db:
            row = self._db.execute("SELECT version, raw FROM acls WHERE item = ?", (acl.item,)).fetchone()
            if row is not None:
                stored = decode_acl(row[1])
                if stored.owner != acl.owner or stored.kind != acl.kind:
                    raise StoreError("an ACL may only be replaced with one signed by the item's owner",
                                     code="not_item_owner")  # fmt: skip
                if acl.version <= row[0]:
                    return False
            self._db.execute("INSERT OR REPLACE INTO acls (item, version, raw) VALUES (?, ?, ?)",
                             (acl.item, acl.version, acl.encoded()))  # fmt: skip
        return True

    def acl_versions(self) -> dict[bytes, int]:
        with self._lock:
            return dict(self._db.execute("SELECT item, version FROM acls").fetchall())

    # -- feeds -------------------------------------------------------------------------------
    def put_feed_update(self, update: FeedUpdate) -> None:
        """Append ``update`` (already checked against the owner's signature) durably, if it
        follows this node's head; StoreError with code replayed_update, conflicting_update
        or out_of_order otherwise."""
        with self._lock, self._db:
            head = self._feed_head(update.feed)
            if head is not None and update.sequence <= head.sequence:
                row = self._db.execute("SELECT hash FROM feed_updates WHERE item = ? AND sequence = ?",
                                       (update.feed, update.sequence)).fetchone()  # fmt: skip
                if row is not None and row[0] == update.hash:
                    raise StoreError(f"update {update.sequence} of this feed is already stored", code="replayed_update")
                raise StoreError(f"another update {update.sequence} of this feed is already stored",
                                 code="conflicting_update")  # fmt: skip
            check_successor(head, update)
            self._db.execute("INSERT INTO feed_updates (item, sequence, first, last, hash, raw) VALUES (?, ?, ?, ?, ?, ?)",
                             (update.feed, update.sequence, update.first, update.last, update.hash,
                              update.encoded()))  # fmt: skip

    def _feed_head(self, item: bytes) -> FeedUpdate | None:
        row = self._db.execute("SELECT raw FROM feed_updates WHERE item = ? ORDER BY sequence DESC LIMIT 1",
                               (item,)).fetchone()  # fmt: skip
        return from_obj(FeedUpdate, decode(row[0]), "feed update") if row else None

    def feed_head(self, item: bytes) -> FeedUpdate | None:
        with self._lock:
            return self._feed_head(item)

    def feed_updates(self, item: bytes, after: int = -1, limit: int = MAX_FEED_PAGE, since: int | None = None,
                     until: int | None = None) -> list[bytes]:  # fmt: skip
        """Encoded updates after sequence ``after`` in sequence order; with ``since`` and
        ``until`` only those whose samples overlap that time range (microseconds)."""
        query = "SELECT raw FROM feed_updates WHERE item = ? AND sequence > ?"
        params: list[object] = [item, after]
        if since is not None:
            query += " AND last >= ?"
            params.append(since)
        if until is not None:
            query += " AND first <= ?"
            params.append(until)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY sequence LIMIT ?", (*params, min(limit, MAX_FEED_PAGE)))
            return [row[0] for row in rows.fetchall()]

    def feed_heads(self) -> dict[bytes, int]:
        """The head sequence of every feed this node holds updates of."""
        with self._lock:
            return dict(self._db.execute("SELECT item, max(sequence) FROM feed_updates GROUP BY item").fetchall())

    # -- chunks ------------------------------------------------------------------------------
    def put_chunk(self, item: bytes, data: bytes) -> bytes:
        """Store ``data`` as a chunk of ``item``, durably; returns its hash."""
        digest = chunk_hash(data)
        path = self._path(digest)
        if not self._intact(path, digest):
            path.parent.mkdir(exist_ok=True)
            temporary = path.with_name(f".{path.name}.{threading.get_ident()}")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
            fsync_directory(path.parent)
        with self._lock, self._db:
            self._db.execute("INSERT OR IGNORE INTO item_chunks (item, hash) VALUES (?, ?)", (item, digest))
        return digest

    def _intact(self, path: Path, digest: bytes) -> bool:
        try:
            return chunk_hash(path.read_bytes()) == digest
        except FileNotFoundError:
            return False

    def read_chunk(self, digest: bytes) -> bytes | None:
        """The chunk, checked against its hash; None if absent. A chunk whose bytes no
        longer match is moved to ``corrupt/`` and reported as CorruptChunk."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if chunk_hash(data) != digest:
            self._quarantine(path)
            raise CorruptChunk(f"chunk {digest.hex()[:16]}… failed its hash check on this node")
        return data

    def _quarantine(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, self.directory / "corrupt" / path.name)

    def belongs(self, item: bytes, digest: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM item_chunks WHERE item = ? AND hash = ?",
                                    (item, digest)).fetchone() is not None  # fmt: skip

    def holds(self, pairs: list[tuple[bytes, bytes]]) -> list[bool]:
        """Which (item, chunk hash) pairs this node indexes and has a file for (not
        re-hashed: that is ``audit``'s work)."""
        return [self.belongs(item, digest) and self._path(digest).exists() for item, digest in pairs]

    def item_chunks(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (item, chunk hash) this node has indexed."""
        with self._lock:
            rows = self._db.execute("SELECT item, hash FROM item_chunks ORDER BY hash").fetchall()
        yield from rows

    def audit(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Re-hash every indexed chunk; returns how many were checked and the (hash, item)
        of those that are corrupt (now quarantined) or missing."""
        checked, bad = 0, []
        seen: set[bytes] = set()
        for item, digest in self.item_chunks():
            if digest in seen:
                continue
            seen.add(digest)
            checked += 1
            try:
                if self.read_chunk(digest) is None:
                    bad.append((digest, item))
            except CorruptChunk:
                bad.append((digest, item))
        return checked, bad

    def status(self) -> DiskStatus:
        with self._lock:
            items = self._db.execute("SELECT count(*) FROM acls").fetchone()[0]
            hashes = [row[0] for row in self._db.execute("SELECT DISTINCT hash FROM item_chunks")]
        size = 0
        for digest in hashes:
            with contextlib.suppress(FileNotFoundError):
                size += self._path(digest).stat().st_size
        return DiskStatus(items, len(hashes), size)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
