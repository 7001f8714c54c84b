"""Typed builders of contract calls: the one place outside the contracts that knows a
method's name and the shape of its arguments.

Each builder returns a ``ContractCall``; ``services.session.Session.transact`` signs and
submits it. ``tests/test_architecture.py`` checks that every builder's arguments pass the
method's own parser, so a builder cannot drift from its contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twinledger.core.types import Transaction, sign_transaction
from twinledger.crypto.keys import SigningKey


@dataclass(frozen=True)
class ContractCall:
    contract: str
    method: str
    args: dict[str, Any] = field(default_factory=dict)


def sign(key: SigningKey, call: ContractCall, *, chain_id: str, nonce: int, timestamp: int) -> Transaction:
    """The transaction of ``call``, signed by ``key``."""
    return sign_transaction(key, chain_id=chain_id, nonce=nonce, contract=call.contract, method=call.method,
                            args=call.args, timestamp=timestamp)  # fmt: skip


def _optional(**items: Any) -> dict[str, Any]:
    return {name: value for name, value in items.items() if value is not None}


# -- the specification contract ("twins") ---------------------------------------------------------


@dataclass(frozen=True)
class SpecificationVersion:
    """A version of a specification as a transaction names it: the stored form's hash,
    the store's manifest and reference, the size, and the model delta, inline or staged
    (its SHA-256, after ``stage`` calls)."""

    hash: bytes
    manifest: bytes
    reference: str
    size: int
    model: bytes | None = None
    staged: bytes | None = None
    base: bytes | None = None
    """The hash of the version an edit was made from (none for a creation)."""

    def args(self) -> dict[str, Any]:
        return {"hash": self.hash, "manifest": self.manifest, "reference": self.reference, "size": self.size,
                **_optional(model=self.model, staged=self.staged, base=self.base)}  # fmt: skip


def create_twin(name: str, device_id: str, version: SpecificationVersion,
                roles: dict[str, dict[str, list[str]]]) -> ContractCall:  # fmt: skip
    return ContractCall("twins", "create", {"name": name, "device_id": device_id, "roles": roles, **version.args()})


def stage(digest: bytes, part: int, parts: int, data: bytes) -> ContractCall:
    return ContractCall("twins", "stage", {"digest": digest, "part": part, "parts": parts, "data": data})


def unstage(digest: bytes) -> ContractCall:
    return ContractCall("twins", "unstage", {"digest": digest})


def replace_aml(twin: str, version: SpecificationVersion) -> ContractCall:
    return ContractCall("twins", "replace_aml", {"twin": twin, **version.args()})


def insert_aml(twin: str, parent: str, after: str | None, element: str, version: SpecificationVersion) -> ContractCall:
    return ContractCall("twins", "insert_aml", {"twin": twin, "parent": parent, "element": element,
                                                **_optional(after=after), **version.args()})  # fmt: skip


def remove_aml(twin: str, element: str, links: Sequence[tuple[str, tuple[str, ...]]],
               version: SpecificationVersion) -> ContractCall:  # fmt: skip
    removed = [[text, list(ids)] for text, ids in links]
    return ContractCall("twins", "remove_aml", {"twin": twin, "element": element, "links": removed, **version.args()})


def add_document(twin: str, manifest: bytes, title: str, description: str, reference: str, media_type: str,
                 size: int, component: str | None = None) -> ContractCall:  # fmt: skip
    return ContractCall("twins", "add_document", {"twin": twin, "hash": manifest, "title": title,
                                                  "description": description, "reference": reference,
                                                  "media_type": media_type, "size": size,
                                                  **_optional(component=component)})  # fmt: skip


def add_document_version(twin: str, document: str, manifest: bytes, size: int, reference: str,
                         description: str) -> ContractCall:  # fmt: skip
    return ContractCall("twins", "add_document_version", {"twin": twin, "document": document, "hash": manifest,
                                                          "size": size, "reference": reference,
                                                          "description": description})  # fmt: skip


def remove_document(twin: str, document: str) -> ContractCall:
    return ContractCall("twins", "remove_document", {"twin": twin, "document": document})


def add_source(twin: str, uri: str, description: str) -> ContractCall:
    return ContractCall("twins", "add_source", {"twin": twin, "uri": uri, "description": description})


def remove_source(twin: str, uri: str) -> ContractCall:
    return ContractCall("twins", "remove_source", {"twin": twin, "uri": uri})


def add_feed(twin: str, component: str, reference: str, description: str) -> ContractCall:
    return ContractCall("twins", "add_feed", {"twin": twin, "component": component, "reference": reference,
                                              "description": description})  # fmt: skip


def remove_feed(twin: str, component: str) -> ContractCall:
    return ContractCall("twins", "remove_feed", {"twin": twin, "component": component})


def checkpoint_feed(twin: str, component: str, sequence: int, head: bytes) -> ContractCall:
    return ContractCall("twins", "checkpoint_feed", {"twin": twin, "component": component, "sequence": sequence,
                                                     "head": head})  # fmt: skip


def call_program(twin: str, program: str, params: dict[str, bool | int | str]) -> ContractCall:
    return ContractCall("twins", "call_program", {"twin": twin, "program": program, "params": params})


def dispatch_call(twin: str, call: int) -> ContractCall:
    return ContractCall("twins", "dispatch_call", {"twin": twin, "call": call})


def report_call(twin: str, call: int, status: str, result: str = "") -> ContractCall:
    return ContractCall("twins", "report_call", {"twin": twin, "call": call, "status": status, "result": result})


def report_anomaly(twin: str, signal: str, state: str, deviation: str, since: int, sequence: int) -> ContractCall:
    return ContractCall("twins", "report_anomaly", {"twin": twin, "signal": signal, "state": state,
                                                    "deviation": deviation, "since": since,
                                                    "sequence": sequence})  # fmt: skip


# -- roles and write tokens ("authorization") -----------------------------------------------------


def grant_role(twin: str, subject: str, role: str, scopes: list[str]) -> ContractCall:
    return ContractCall("authorization", "grant_role", {"twin": twin, "subject": subject, "role": role,
                                                        "scopes": scopes})  # fmt: skip


def revoke_role(twin: str, subject: str, role: str) -> ContractCall:
    return ContractCall("authorization", "revoke_role", {"twin": twin, "subject": subject, "role": role})


def set_permissions(twin: str, role: str, methods: list[str]) -> ContractCall:
    return ContractCall("authorization", "set_permissions", {"twin": twin, "role": role, "methods": methods})


def present_token(token: bytes) -> ContractCall:
    return ContractCall("authorization", "present_token", {"token": token})


def revoke_token(twin: str, token: bytes, recipient: bytes) -> ContractCall:
    return ContractCall("authorization", "revoke_token", {"twin": twin, "token": token, "recipient": recipient})


# -- read grants and devices ("sharing") -----------------------------------------------------------


def grant_read(twin: str, recipient: str, policy: Any, keys: list[bytes], proxies: list[str],
               valid_until: int) -> ContractCall:  # fmt: skip
    """A read grant (KP-CPRE, through proxies) — not a role grant (``grant_role``);
    ``keys`` are the hashes of its re-encryption keys, one per generation of the twin."""
    return ContractCall("sharing", "grant", {"twin": twin, "recipient": recipient, "policy": policy,
                                             "keys": keys, "proxies": proxies,
                                             "valid_until": valid_until})  # fmt: skip


def revoke_read(grant: bytes, rekeys: Mapping[bytes, Sequence[bytes]] | None = None) -> ContractCall:
    """End a grant; ``rekeys`` (grant id → hashes of the keys it lacks) re-keys the twin's
    other active grants up to the generation the revocation starts."""
    return ContractCall("sharing", "revoke", {"grant": grant, "rekeys": [[g, list(k)] for g, k in (rekeys or {}).items()]})


def rekey_read(twin: str, rekeys: Mapping[bytes, Sequence[bytes]]) -> ContractCall:
    """Give active grants of the twin their keys up to its current generation."""
    return ContractCall("sharing", "rekey", {"twin": twin, "rekeys": [[g, list(k)] for g, k in rekeys.items()]})


def add_device(twin: str, name: str, key: bytes, sharing_key: bytes) -> ContractCall:
    return ContractCall("sharing", "add_device", {"twin": twin, "name": name, "key": key, "sharing_key": sharing_key})


def retire_device(twin: str, key: bytes) -> ContractCall:
    return ContractCall("sharing", "retire_device", {"twin": twin, "key": key})


# -- membership and records -------------------------------------------------------------------------


def propose(change: dict[str, Any]) -> ContractCall:
    return ContractCall("membership", "propose", {"change": change})


def approve(proposal: bytes) -> ContractCall:
    return ContractCall("membership", "approve", {"proposal": proposal})


def withdraw(proposal: bytes) -> ContractCall:
    return ContractCall("membership", "withdraw", {"proposal": proposal})


def revoke_key(key: bytes) -> ContractCall:
    return ContractCall("membership", "revoke_key", {"key": key})


def put_record(media_type: str, metadata: dict[str, str], payload: bytes | None = None,
               payload_hash: bytes | None = None) -> ContractCall:  # fmt: skip
    """A record of a payload, or of its hash alone (give exactly one)."""
    return ContractCall("records", "put", {"media_type": media_type, "metadata": metadata,
                                           **_optional(payload=payload, payload_hash=payload_hash)})  # fmt: skip


# -- principals (an organisation's people and programs) --------------------------------------------


def register_principal(name: str, kind: str, key: bytes, roles: list[str], proof: bytes) -> ContractCall:
    """``proof``: the key's consent (``contracts.principals.registration_proof``)."""
    return ContractCall("principals", "register", {"name": name, "kind": kind, "key": key, "roles": roles,
                                                   "proof": proof})  # fmt: skip


def set_principal_roles(name: str, roles: list[str]) -> ContractCall:
    return ContractCall("principals", "set_roles", {"name": name, "roles": roles})


def remove_principal(name: str) -> ContractCall:
    return ContractCall("principals", "remove", {"name": name})
