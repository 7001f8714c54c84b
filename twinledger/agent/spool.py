"""The agent's durable cache of samples not yet in their feeds.

Every sample the device reports is committed here first (SQLite, WAL); it leaves only
after the feed update holding it reached a write quorum. While the node is unreachable
samples pile up here, and they go out in order once it is back: a node outage, or a
``kill -9`` of the agent, loses nothing.

Values are sealed (AES-256-GCM, a key derived from the device's key, the OPC UA node and
time as associated data): the spool sits on the machine beside the plant, and a copy of
it — a backup, another account — shows when samples were taken, not what they were.
The file and its directory are readable by the agent's user only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from twinledger.core.sqlite import open_database
from twinledger.crypto.keys import SigningKey
from twinledger.errors import DecryptionFailed

SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    time INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sealed_samples_by_node ON sealed_samples (node, id);
"""
SPOOL_KEY_INFO = b"twinledger/agent/spool/v1"


def spool_key(device: SigningKey) -> bytes:
    """The spool's key, derived from the device's signing key: no other file to keep."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=SPOOL_KEY_INFO).derive(device.seed)


@dataclass(frozen=True)
class Spooled:
    id: int
    time: int
    value: float


class Spool:
    """Samples by OPC UA node, in arrival order; times are strictly increasing per node."""

    def __init__(self, path: Path, key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        os.chmod(path, 0o600)  # a spool an earlier agent made may have its default mode
        self.db = open_database(path, SCHEMA, synchronous="NORMAL")
        self._aead = AESGCM(key)
        self._seal_plain_spool()
        self._last: dict[str, int] = dict(self.db.execute("SELECT node, MAX(time) FROM sealed_samples "
                                                          "GROUP BY node").fetchall())  # fmt: skip

    def _seal(self, node: str, moment: int, value: float) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, struct.pack(">d", value), _associated(node, moment))

    def _open(self, node: str, moment: int, sealed: bytes) -> float:
        try:
            return float(struct.unpack(">d", self._aead.decrypt(sealed[:12], sealed[12:], _associated(node, moment)))[0])
        except (InvalidTag, struct.error):
            raise DecryptionFailed() from None

    def _seal_plain_spool(self) -> None:
        """Samples an earlier agent spooled in plain text are sealed, in order, and the
        plain table dropped: nothing spooled is lost across the upgrade."""
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'samples'").fetchone() is None:
            return
        rows = self.db.execute("SELECT node, time, value FROM samples ORDER BY id").fetchall()
        with self.db:
            self.db.executemany("INSERT INTO sealed_samples (node, time, value) VALUES (?, ?, ?)",
                                [(node, moment, self._seal(node, moment, value)) for node, moment, value in rows])  # fmt: skip
            self.db.execute("DROP TABLE samples")
        self.db.execute("VACUUM")  # the plain values' pages are rewritten, not left in free pages

    def add(self, samples: Iterable[tuple[str, int, float]]) -> int:
        """Commit samples; a time not after the node's last is moved just past it, so a
        sample's time names it within its feed. Returns how many were added."""
        rows = []
        for node, moment, value in samples:
            moment = max(moment, self._last.get(node, -1) + 1)
            self._last[node] = moment
            rows.append((node, moment, self._seal(node, moment, value)))
        with self.db:
            self.db.executemany("INSERT INTO sealed_samples (node, time, value) VALUES (?, ?, ?)", rows)
        return len(rows)

    def pending(self, node: str, after_id: int = 0, limit: int = 10_000) -> list[Spooled]:
        rows = self.db.execute("SELECT id, time, value FROM sealed_samples WHERE node = ? AND id > ? ORDER BY id "
                               "LIMIT ?", (node, after_id, limit)).fetchall()  # fmt: skip
        return [Spooled(row_id, moment, self._open(node, moment, sealed)) for row_id, moment, sealed in rows]

    def drop_through(self, node: str, last_id: int) -> None:
        """Forget the node's samples up to ``last_id``: they are in the feed."""
        with self.db:
            self.db.execute("DELETE FROM sealed_samples WHERE node = ? AND id <= ?", (node, last_id))

    def drop_until(self, node: str, moment: int) -> int:
        """Forget the node's samples at or before ``moment`` (the feed already holds them:
        the agent stopped after writing them, before forgetting them)."""
        with self.db:
            return self.db.execute("DELETE FROM sealed_samples WHERE node = ? AND time <= ?", (node, moment)).rowcount

    def count(self, node: str | None = None) -> int:
        if node is None:
            return int(self.db.execute("SELECT COUNT(*) FROM sealed_samples").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM sealed_samples WHERE node = ?", (node,)).fetchone()[0])

    def close(self) -> None:
        self.db.close()


def _associated(node: str, moment: int) -> bytes:
    return SPOOL_KEY_INFO + moment.to_bytes(8, "big", signed=True) + node.encode()
