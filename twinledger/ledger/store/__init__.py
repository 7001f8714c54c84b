"""Chain stores: SQLite (embedded default) and PostgreSQL, behind ``abc.ChainStore``."""

from __future__ import annotations

from twinledger.abc import ChainStore
from twinledger.errors import ConfigError


def open_store(url: str) -> ChainStore:
    """Open a store from ``sqlite:///path/to/chain.db`` or ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        from twinledger.ledger.store.sqlite import SqliteChainStore

        return SqliteChainStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from twinledger.ledger.store.postgres import PostgresChainStore

        return PostgresChainStore(url)
    raise ConfigError(f"unknown store URL {url!r}: use sqlite:///PATH or postgresql://…")
