"""Read models of the twin contracts, shared by the REST resources, the GraphQL schema
and the event stream, so none of them holds logic of its own.

Reads of a twin's state take an optional block height: the twin is shown exactly as the
chain had it after that block (time travel). Views are JSON-ready: byte strings are hex.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from twinledger.abc import ChainStore
from twinledger.contracts.authorization import permissions
from twinledger.contracts.sharing import DEVICE_PREFIX, GRANT_PREFIX, grant_is_active, twin_generation
from twinledger.contracts.twinmodel import MODEL_KINDS
from twinledger.contracts.twinstate import (
    aml_key,
    checkpoint_key,
    class_program_key,
    detached_feed_key,
    device_key,
    feed_key,
    history_key,
    load_twin,
    roles_key,
    twin_key,
)
from twinledger.core.types import Event
from twinledger.errors import BadRequest, NotFound
from twinledger.ledger.chain import StoreState

CALL_STATUSES = ("queued", "dispatched", "executed", "failed", "rejected")


def jsonable(value: Any) -> Any:
    """Canonical values as JSON: byte strings become hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class TwinService:
    store: ChainStore

    def _height(self, at: int | None) -> int:
        head = self.store.head()
        assert head is not None
        if at is None:
            return head.height
        if not 0 <= at <= head.height:
            raise BadRequest(f"height {at} is not between 0 and the head ({head.height})")
        return at

    def _items(self, prefix: str, height: int) -> list[Any]:
        return [value for _, value in self.store.state_items(prefix, height)]

    # -- registry ------------------------------------------------------------------------------
    def twins(self, at: int | None = None) -> dict[str, Any]:
        height = self._height(at)
        return {"height": height, "twins": jsonable(self._items("registry/twin/", height))}

    def resolve(self, reference: str, height: int) -> dict[str, Any]:
        """A twin by id or by device id, as of ``height``."""
        state = StoreState(self.store, height)
        twin_id = reference if state.get(twin_key(reference)) is not None else state.get(device_key(reference))
        if twin_id is None:
            raise NotFound(f"no twin or device {reference!r} at height {height}")
        return load_twin(state, twin_id)

    def twin(self, reference: str, at: int | None = None) -> dict[str, Any]:
        """Everything about a twin: metadata, specification, documents, sources, feeds,
        roles and permissions, its program calls, open anomalies and its devices."""
        height = self._height(at)
        twin = self.resolve(reference, height)
        prefix = f"twin/{twin['id']}/"
        state = StoreState(self.store, height)
        return jsonable({
            "height": height,
            **twin,
            "specification": {"version": twin["aml_version"], **state.get(aml_key(twin["id"], twin["aml_version"]))},
            "documents": self._items(prefix + "document/", height),
            "sources": self._items(prefix + "source/", height),
            "feeds": self._items(prefix + "feed/", height),
            "roles": state.get(roles_key(twin["id"])) or {},
            "permissions": {role: list(methods) for role, methods in permissions(state, twin["id"]).items()},
            "calls": self._items(prefix + "call/", height),
            "anomalies": self._items(prefix + "anomaly/", height),
            "devices": self._items(f"{DEVICE_PREFIX}{twin['id']}/", height),
            "generation": twin_generation(state, twin["id"]),
        })  # fmt: skip

    # -- specification history ------------------------------------------------------------------
    def history(self, reference: str) -> list[dict[str, Any]]:
        height = self._height(None)
        twin = self.resolve(reference, height)
        return jsonable(self._items(f"twin/{twin['id']}/history/", height))

    def specification(self, reference: str, version: int | None = None) -> dict[str, Any]:
        """A version of the specification (default: the current one) as the chain knows
        it: who changed what, the stored form's hash and size, the store's manifest and
        reference (the document is off chain, encrypted for the twin's organisations)."""
        height = self._height(None)
        twin = self.resolve(reference, height)
        number = twin["aml_version"] if version is None else version
        known = 1 <= number <= twin["aml_version"]
        entry = StoreState(self.store, height).get(history_key(twin["id"], number)) if known else None
        if entry is None:
            raise NotFound(f"twin {twin['id']} has versions 1 to {twin['aml_version']}, not {number}")
        return jsonable(entry)

    # -- feeds -----------------------------------------------------------------------------------
    def checkpoints(self, reference: str, component: str) -> dict[str, Any]:
        """The feed attached to ``component`` (or, if none is, the one last detached from it,
        marked ``detached``) with every checkpoint recorded for it, oldest first."""
        height = self._height(None)
        twin = self.resolve(reference, height)
        state = StoreState(self.store, height)
        feed = state.get(feed_key(twin["id"], component))
        if feed is None:
            detached = state.get(detached_feed_key(twin["id"], component))
            if detached is None:
                raise NotFound(f"component {component!r} of twin {twin['id']} has no feed")
            feed = {**detached, "detached": True}
        prefix = checkpoint_key(twin["id"], feed["reference"]) + "/"
        return jsonable({"height": height, "twin": twin["id"], "feed": feed, "checkpoints": self._items(prefix, height)})

    # -- calls and audit -------------------------------------------------------------------------
    def calls(self, reference: str, status: str | None = None, at: int | None = None) -> list[dict[str, Any]]:
        if status is not None and status not in CALL_STATUSES:
            raise BadRequest(f"status must be one of {list(CALL_STATUSES)}")
        height = self._height(at)
        twin = self.resolve(reference, height)
        calls = self._items(f"twin/{twin['id']}/call/", height)
        return jsonable([c for c in calls if status is None or c["status"] == status])

    def model(self, reference: str, at: int | None = None) -> dict[str, Any]:
        """The model the contracts hold for the twin's current specification, entry by
        entry (``kind/name`` → value, layout in contracts/twinmodel.py): what clients
        compute deltas against and check documents with, and what the agent acts on."""
        height = self._height(at)
        twin = self.resolve(reference, height)
        prefix = f"twin/{twin['id']}/"
        entries = {key[len(prefix):]: value for kind in MODEL_KINDS
                   for key, value in self.store.state_items(f"{prefix}{kind}/", height)}  # fmt: skip
        return jsonable({"height": height, "version": twin["aml_version"], "hash": twin["aml_hash"], "entries": entries})

    def programs(self, reference: str, at: int | None = None) -> list[dict[str, Any]]:
        """The twin's programs as the contracts hold them: full path, component, interface,
        the class they come from, and their parameters with the safety rules."""
        height = self._height(at)
        twin = self.resolve(reference, height)
        state = StoreState(self.store, height)
        found = []
        for entry in self._items(f"twin/{twin['id']}/program/", height):
            declared = entry["declared_in"]
            parameters = state.get(class_program_key(twin["id"], declared, entry["name"])) if declared else entry["parameters"]
            found.append({**entry, "parameters": parameters})
        return jsonable(found)

    def audit(self, reference: str) -> list[dict[str, Any]]:
        """Every transaction that changed the twin, oldest first."""
        height = self._height(None)
        twin = self.resolve(reference, height)
        return jsonable(self._items(f"twin/{twin['id']}/log/", height))

    def members(self, at: int | None = None) -> dict[str, Any]:
        height = self._height(at)
        state = StoreState(self.store, height)
        return jsonable({"height": height, "organisations": self._items("membership/organisation/", height),
                         "admins": state.get("membership/admins") or [],
                         "quorum": state.get("membership/quorum") or 0,
                         "proposals": [p for p in self._items("membership/proposal/", height)
                                       if p["status"] == "open"],
                         "principals": self._items("principals/", height)})  # fmt: skip

    def grants(self, twin: str | None = None, recipient: str | None = None, owner: str | None = None,
               at: int | None = None) -> dict[str, Any]:
        """Grants of read access (the sharing contract), newest first, optionally of one twin,
        recipient or owner organisation."""
        height = self._height(at)
        grants = [g for g in self._items(GRANT_PREFIX, height)
                  if (twin is None or g["twin"] == twin) and (recipient is None or g["recipient"] == recipient)
                  and (owner is None or g["owner"] == owner)]  # fmt: skip
        grants.sort(key=lambda g: (-g["granted"]["height"], g["id"]))
        header = self.store.header_by_height(height)
        now = header.timestamp if header is not None else 0
        # past its end by the chain's time, not yet ended by a block: still "active" on chain, and said to be past
        grants = [{**g, "past_end": g["status"] == "active" and not grant_is_active(g, now)} for g in grants]
        return jsonable({"height": height, "time": now, "grants": grants})

    # -- events --------------------------------------------------------------------------------
    def events(self, height: int, twin: str | None = None) -> Iterator[dict[str, Any]]:
        """The events of block ``height``, of one twin or all, with their transaction."""
        header = self.store.header_by_height(height)
        if header is None:
            return
        block = self.store.block_by_hash(header.hash)
        assert block is not None
        for index, (tx, receipt) in enumerate(zip(block.transactions, self.store.receipts(height), strict=True)):
            for number, event in enumerate(receipt.events):
                if twin is None or event.data.get("twin") == twin:
                    yield event_view(event, height, index, number, tx.hash, tx.sender, header.timestamp)


def event_view(event: Event, height: int, index: int, number: int, tx_hash: bytes, sender: bytes,
               timestamp: int) -> dict[str, Any]:  # fmt: skip
    return jsonable({"id": f"{height}:{index}:{number}", "height": height, "timestamp": timestamp, "tx": tx_hash,
                     "sender": sender, "contract": event.contract, "type": event.type, "data": event.data})  # fmt: skip

