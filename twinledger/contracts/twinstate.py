"""Where a twin's state lives, shared by the specification and authorization contracts
and by the readers above them.

    registry/twin/<id>                 {id, name, device_id, owner}
    registry/device/<device id>        twin id
    twin/<id>                          the twin: name, device id, owner, AML version, call counter
    twin/<id>/aml/<version>            a version of the specification: its hash, size, store manifest and reference
                                       (the document is off chain, encrypted)
    twin/<id>/element/<ID>             the model of the current version, per element, program and signal
    twin/<id>/program/<path>           (layout in ``twinmodel``)
    twin/<id>/class-program/<class>/<name>
    twin/<id>/object/<OPC UA object>
    twin/<id>/signal/<ID>
    twin/<id>/history/<version>        who changed the specification, when, how
    twin/<id>/document/<document id>   a document with its versions
    twin/<id>/source/<uri digest>      an external source
    twin/<id>/feed/<component id>      a sensor feed reference
    twin/<id>/checkpoint/<feed digest> the newest checkpoint of a feed and how many there are
    twin/<id>/checkpoint/<feed digest>/<number>  each checkpoint: sequence, head hash, when
    twin/<id>/call/<number>            a program call and its life-cycle
    twin/<id>/log/<number>             every transaction that changed the twin (the audit trail): tx, method,
                                       key, organisation, principal (if one signed), height, time, events
    twin/<id>/roles                    {subject: {role: [scope IDs]}}
    twin/<id>/permissions              {role: [methods]} where the owner changed the defaults
    twin/<id>/tokens/<key hex>         the write tokens presented for a key: token id hex → what it allows
    twin/<id>/revoked-token/<id hex>   a revoked write token: never in force again
    twin/<id>/retired-key/<key hex>    a device key retired from the twin: no token ever acts for it
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from twinledger.abc import StateReader
from twinledger.contracts.membership import organisation_of, principal_of
from twinledger.contracts.runtime import Call
from twinledger.errors import ContractError

A = TypeVar("A")

VERSION_DIGITS = 8
MAX_DEPTH = 64
"""How deep elements nest at most (the AML parser's limit)."""
MAX_REFERENCE = 512
"""An element's ID or name path, a program's path, as an argument."""


class UnknownTwin(ContractError):
    code = "unknown_twin"


class TwinError(ContractError):
    code = "twin"


def actor(call: Call) -> dict[str, Any]:
    """Who did something: the signing key and the organisation it acts for, if any."""
    return {"key": call.sender, "organisation": organisation_of(call.state, call.sender) or "",
            "height": call.header.height, "timestamp": call.header.timestamp, "tx": call.tx.hash}  # fmt: skip


def registry_key(twin_id: str) -> str:
    return f"registry/twin/{twin_id}"


def device_key(device_id: str) -> str:
    return f"registry/device/{device_id}"


def twin_key(twin_id: str) -> str:
    return f"twin/{twin_id}"


def numbered(twin_id: str, kind: str, number: int) -> str:
    """Keys of numbered entries sort in number order."""
    return f"twin/{twin_id}/{kind}/{number:0{VERSION_DIGITS}d}"


def aml_key(twin_id: str, version: int) -> str:
    return numbered(twin_id, "aml", version)


def element_key(twin_id: str, element: str) -> str:
    return f"twin/{twin_id}/element/{element}"


def program_key(twin_id: str, path: str) -> str:
    return f"twin/{twin_id}/program/{path}"


def class_program_key(twin_id: str, declared_in: str, name: str) -> str:
    return f"twin/{twin_id}/class-program/{declared_in}/{name}"


def object_key(twin_id: str, opcua_object: str) -> str:
    return f"twin/{twin_id}/object/{opcua_object}"


def signal_key(twin_id: str, signal: str) -> str:
    return f"twin/{twin_id}/signal/{signal}"


def history_key(twin_id: str, version: int) -> str:
    return numbered(twin_id, "history", version)


def call_key(twin_id: str, number: int) -> str:
    return numbered(twin_id, "call", number)


def log_key(twin_id: str, number: int) -> str:
    return numbered(twin_id, "log", number)


def document_key(twin_id: str, document_id: str) -> str:
    return f"twin/{twin_id}/document/{document_id}"


def source_key(twin_id: str, source_id: str) -> str:
    return f"twin/{twin_id}/source/{source_id}"


def feed_key(twin_id: str, component: str) -> str:
    return f"twin/{twin_id}/feed/{component}"


def detached_feed_key(twin_id: str, component: str) -> str:
    """The feed last detached from a component: its history stays readable by name."""
    return f"twin/{twin_id}/detached-feed/{component}"


def anomaly_key(twin_id: str, signal: str) -> str:
    """The open anomaly of a signal, if any."""
    return f"twin/{twin_id}/anomaly/{signal}"


def checkpoint_key(twin_id: str, reference: str, number: int | None = None) -> str:
    """A feed's checkpoints are keyed by its reference, not its component: they stay with
    the feed when it is detached, and a feed attached again continues its numbering."""
    feed = hashlib.sha256(reference.encode()).hexdigest()[:32]
    return f"twin/{twin_id}/checkpoint/{feed}" if number is None else numbered(twin_id, f"checkpoint/{feed}", number)


def roles_key(twin_id: str) -> str:
    return f"twin/{twin_id}/roles"


def tokens_key(twin_id: str, recipient: bytes) -> str:
    """The write tokens presented for ``recipient``: token id hex → what it allows."""
    return f"twin/{twin_id}/tokens/{recipient.hex()}"


def revoked_token_key(twin_id: str, token_id: bytes) -> str:
    return f"twin/{twin_id}/revoked-token/{token_id.hex()}"


def retired_key(twin_id: str, key: bytes) -> str:
    return f"twin/{twin_id}/retired-key/{key.hex()}"


def permissions_key(twin_id: str) -> str:
    return f"twin/{twin_id}/permissions"


def load_twin(state: StateReader, twin_id: str) -> dict[str, Any]:
    twin = state.get(twin_key(twin_id)) if isinstance(twin_id, str) else None
    if twin is None:
        raise UnknownTwin(f"no twin {twin_id!r}")
    return twin


def _principal(call: Call) -> dict[str, str]:
    """The signing principal's name, for an audit entry (absent when no principal signed)."""
    found = principal_of(call.state, call.sender)
    return {"principal": found[1]} if found is not None else {}


def audited(apply: Callable[[Call, A], None]) -> Callable[[Call, A], None]:
    """Wrap a twin method so that each twin its events name gets an audit-trail entry:
    which transaction, which method, who, when."""

    def apply_and_log(call: Call, args: A) -> None:
        apply(call, args)
        for twin_id in dict.fromkeys(e.data["twin"] for e in call.events if "twin" in e.data):
            twin = load_twin(call.state, twin_id)
            number = twin.get("changes", 0) + 1
            call.state.set(twin_key(twin_id), {**twin, "changes": number})
            call.state.set(log_key(twin_id, number), {
                "number": number, "tx": call.tx.hash, "method": f"{call.tx.contract}.{call.tx.method}",
                "key": call.sender, "organisation": organisation_of(call.state, call.sender) or "",
                "height": call.header.height, "timestamp": call.header.timestamp,
                "events": [e.type for e in call.events if e.data.get("twin") == twin_id],
                **_principal(call),
            })  # fmt: skip

    return apply_and_log
