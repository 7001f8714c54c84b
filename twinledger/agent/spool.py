"""The agent's durable cache of samples not yet in their feeds.

Every sample the device reports is committed here first (SQLite, WAL); it leaves only
after the feed update holding it reached a write quorum. While the node is unreachable
samples pile up here, and they go out in order once it is back: a node outage, or a
``kill -9`` of the agent, loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twinledger.core.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    time INTEGER NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_node ON samples (node, id);
"""


@dataclass(frozen=True)
class Spooled:
    id: int
    time: int
    value: float


class Spool:
    """Samples by OPC UA node, in arrival order; times are strictly increasing per node."""

    def __init__(self, path: Path) -> None:
        self.db = open_database(path, SCHEMA, synchronous="NORMAL")
        self._last: dict[str, int] = dict(self.db.execute("SELECT node, MAX(time) FROM samples GROUP BY node").fetchall())

    def add(self, samples: Iterable[tuple[str, int, float]]) -> int:
        """Commit samples; a time not after the node's last is moved just past it, so a
        sample's time names it within its feed. Returns how many were added."""
        rows = []
        for node, moment, value in samples:
            moment = max(moment, self._last.get(node, -1) + 1)
            self._last[node] = moment
            rows.append((node, moment, value))
        with self.db:
            self.db.executemany("INSERT INTO samples (node, time, value) VALUES (?, ?, ?)", rows)
        return len(rows)

    def pending(self, node: str, after_id: int = 0, limit: int = 10_000) -> list[Spooled]:
        rows = self.db.execute("SELECT id, time, value FROM samples WHERE node = ? AND id > ? ORDER BY id LIMIT ?",
                               (node, after_id, limit)).fetchall()  # fmt: skip
        return [Spooled(*row) for row in rows]

    def drop_through(self, node: str, last_id: int) -> None:
        """Forget the node's samples up to ``last_id``: they are in the feed."""
        with self.db:
            self.db.execute("DELETE FROM samples WHERE node = ? AND id <= ?", (node, last_id))

    def drop_until(self, node: str, moment: int) -> int:
        """Forget the node's samples at or before ``moment`` (the feed already holds them:
        the agent stopped after writing them, before forgetting them)."""
        with self.db:
            return self.db.execute("DELETE FROM samples WHERE node = ? AND time <= ?", (node, moment)).rowcount

    def count(self, node: str | None = None) -> int:
        if node is None:
            return int(self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM samples WHERE node = ?", (node,)).fetchone()[0])

    def close(self) -> None:
        self.db.close()
