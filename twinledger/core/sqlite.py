"""The one way a node opens its own small SQLite files (journals, indexes, spools)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: Path, schema: str, *, synchronous: str = "FULL", shared: bool = False) -> sqlite3.Connection:
    """``path`` in autocommit mode with a write-ahead log, ``schema`` applied.

    ``synchronous`` FULL makes every commit survive a power cut; ``shared`` lets other
    threads use the connection, behind the caller's own lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=not shared)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    return db
