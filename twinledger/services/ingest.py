"""Records through a node's TCP ingest listener, and reading a record's payload back.

The sender keeps its own journal (a watched directory's files, a stream's sequence
numbers), so what is sent survives a restart of the sender or the node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twinledger.config import NodeConfig, passphrase, read_run_file
from twinledger.core.attributes import record_attributes
from twinledger.errors import TwinledgerError
from twinledger.ingest.payloads import read_payload
from twinledger.ingest.sender import IngestSender, SenderKey, sender_key
from twinledger.services import access
from twinledger.services.remote import segment
from twinledger.services.session import Session
from twinledger.store.protocol import Pin, StoreTls

TIER2_KEY = "ingest-tier2.key"


def tier2_key(config: NodeConfig, create: bool) -> SenderKey:
    """The home's tier-2 key: payloads sealed with it open for no one else, not even the node."""
    return sender_key(config.home / "keys" / TIER2_KEY, passphrase(), create)


def endpoint(config: NodeConfig, to: str | None) -> str | None:
    """The listener to connect to: ``to``, else where the home's node runs it (None while
    the node is not running and no port is configured)."""
    if to:
        return to
    running = (read_run_file(config) or {}).get("ingest")
    if running:
        return str(running)
    return f"{config.ingest_host}:{config.ingest_port}" if config.ingest_port else None


def shared_attributes(twin: str | None, attributes: list[str]) -> list[str]:
    """What a stream's records are shared under: none without ``twin``."""
    if attributes and not twin:
        raise TwinledgerError("--attribute needs --twin: shared records belong to a twin, whose owner's grants cover "
                              "them", code="attributes_invalid")  # fmt: skip
    return record_attributes(twin, attributes)


def sender(config: NodeConfig, to: str | None, stream: bytes, attributes: list[str],
           on_event: Callable[[str], None] | None = None) -> IngestSender:  # fmt: skip
    """A sender of one stream to the home's node (or ``to``, a node of the home's
    organisation), as the home's node certificate; pinned to that node (or organisation)."""
    if endpoint(config, to) is None:
        raise TwinledgerError(f"no ingest listener known for {config.home}: start its node (with an [ingest] section "
                              "in node.toml) or give --to HOST:PORT", code="ingest_unreachable")  # fmt: skip
    tls = StoreTls.of_home(config)
    pin = Pin(tls.own.organisation) if to else Pin.node_of(tls.own)
    return IngestSender(lambda: endpoint(config, to), tls, stream, attributes=attributes, on_event=on_event,
                        pin=pin)  # fmt: skip


async def record(session: Session, record_id: str) -> dict[str, Any]:
    return dict(await session.get(f"/v1/records/{segment(record_id, 'record id')}"))


async def payload(session: Session, entry: dict[str, Any]) -> bytes:
    """A record's payload from the store, checked against its hash on chain, decrypted (as
    a reader or through a grant) and opened with the home's tier-2 key if sealed with it."""
    key = tier2_key(session.config, create=False) if "tier2" in (entry.get("metadata") or {}) else None
    return await read_payload(await session.store(), entry, access.unlock(session), key)
