"""The ``principals`` contract: the people and programs of an organisation, by name.

An organisation's operators register its principals — a person (``alice``) or a program
(``mes``) — each with its own Ed25519 key, whose holder signs the registration too (so
nobody can claim another party's key, a device's say), and principal roles. A principal's key acts
for its organisation (twin roles granted to ``org:NAME`` apply to it), but only for the
actions its roles permit: the runtime checks every transaction a principal signs, at
admission and again when it is applied (``check_sender``), and for a write token it
issued (``key_may``), so the audit trail names the person or program behind each change
and a viewer can sign nothing at all. A removed principal's key signs nothing, ever, and
an organisation's removal retires its principals.

Principal roles and the actions they permit (``ACTIONS`` maps methods to actions):

    administrator  every action, including registering principals
    engineer       specification, data, programs
    data-steward   data, sharing
    viewer         none (reads only, through the API)

State:
    principals/<organisation>/<name>  {name, organisation, kind, key, roles, status, height}
    membership/key/<key hex>          {organisation, kind: principal, node: "", principal: name[, removed]}
    membership/principals/<org>       every name the organisation registered
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.abc import StateReader
from twinledger.contracts.arguments import Arguments
from twinledger.contracts.membership import (
    MembershipError,
    NotAMember,
    member_key,
    organisation_of,
    principal_key,
    principal_names_key,
    principal_of,
    retire_principal,
)
from twinledger.contracts.runtime import Call, Contract, Method
from twinledger.core.hashing import hash_obj
from twinledger.core.types import Transaction
from twinledger.crypto.keys import SigningKey, verify_signature
from twinledger.errors import ContractError

KINDS = ("person", "program")
ACTIONS: dict[str, tuple[str, ...]] = {
    "specification": ("twins.create", "twins.stage", "twins.unstage", "twins.insert_aml", "twins.remove_aml",
                      "twins.replace_aml", "twins.add_source",
                      "twins.remove_source"),
    "data": ("twins.add_document", "twins.add_document_version", "twins.remove_document", "twins.add_feed",
             "twins.remove_feed", "twins.checkpoint_feed", "records.put"),
    "programs": ("twins.call_program", "twins.dispatch_call", "twins.report_call", "twins.report_anomaly"),
    "sharing": ("sharing.grant", "sharing.revoke", "sharing.rekey", "authorization.present_token"),
    "roles": ("authorization.grant_role", "authorization.revoke_role", "authorization.set_permissions",
              "sharing.add_device", "sharing.retire_device", "authorization.revoke_token"),
    "membership": ("membership.propose", "membership.approve", "membership.withdraw", "membership.revoke_key",
                   "principals.register", "principals.set_roles", "principals.remove"),
}  # fmt: skip
PRINCIPAL_ROLES: dict[str, tuple[str, ...]] = {
    "administrator": tuple(ACTIONS),
    "engineer": ("specification", "data", "programs"),
    "data-steward": ("data", "sharing"),
    "viewer": (),
}
MAX_ROLES = len(PRINCIPAL_ROLES)
TWIN_METHOD_ACTIONS: dict[str, str] = {
    "aml.insert": "specification", "aml.remove": "specification", "source.add": "specification",
    "source.remove": "specification", "document.add": "data", "document.version": "data", "document.remove": "data",
    "feed.add": "data", "feed.remove": "data", "program.call": "programs", "program.dispatch": "programs",
    "program.report": "programs", "anomaly.report": "programs", "role.grant": "roles", "role.revoke": "roles",
    "permissions.set": "roles",
}  # fmt: skip
"""The action behind each twin method the authorization contract names (tokens, roles)."""
PROOF_TAG = "twinledger/principal/v1"


class NotPermitted(ContractError):
    code = "not_permitted"
    http_status = 403


def action_of(contract: str, method: str) -> str | None:
    qualified = f"{contract}.{method}"
    return next((action for action, methods in ACTIONS.items() if qualified in methods), None)


def permits(roles: list[str], contract: str, method: str) -> bool:
    action = action_of(contract, method)
    return action is not None and any(action in PRINCIPAL_ROLES.get(role, ()) for role in roles)


def roles_of_key(state: StateReader, key: bytes) -> list[str] | None:
    """A principal's roles (none once removed); None for a key of no principal."""
    found = principal_of(state, key)
    if found is None:
        return None
    entry = state.get(principal_key(*found))
    return list(entry["roles"]) if entry is not None and entry["status"] == "active" else []


def key_may(state: StateReader, key: bytes, twin_method: str) -> bool:
    """Whether ``key``'s principal roles allow a twin method (a key of no principal: yes;
    the twin's own RBAC decides the rest)."""
    roles = roles_of_key(state, key)
    action = TWIN_METHOD_ACTIONS.get(twin_method)
    return roles is None or (action is not None and any(action in PRINCIPAL_ROLES.get(r, ()) for r in roles))


def check_sender(state: StateReader, tx: Transaction) -> None:
    """A principal may only sign what its roles permit (keys of no principal pass: the
    contracts decide what operators, nodes and devices may do)."""
    found = principal_of(state, tx.sender)
    if found is None:
        return
    organisation, name = found
    entry = state.get(principal_key(organisation, name))
    if entry is None or entry["status"] != "active":
        raise NotPermitted(f"principal {organisation}/{name} was removed; its key signs nothing")
    if not permits(entry["roles"], tx.contract, tx.method):
        raise NotPermitted(f"principal {organisation}/{name} (roles: {', '.join(entry['roles']) or 'none'}) may not "
                           f"call {tx.contract}.{tx.method}")  # fmt: skip


def _authority(call: Call) -> str:
    """The organisation whose principals the sender may manage: an operator's, or an
    administrator principal's (whose membership action ``check_sender`` let through)."""
    organisation = organisation_of(call.state, call.sender)
    if organisation is None:
        raise NotAMember(f"only an operator or an administrator of a member organisation manages principals; key "
                         f"{call.sender.hex()[:16]}… is neither")  # fmt: skip
    return organisation


def _roles(read: Arguments) -> list[str]:
    roles = read.items("roles", max_items=MAX_ROLES)
    if any(not isinstance(role, str) or role not in PRINCIPAL_ROLES for role in roles) or len(set(roles)) != len(roles):
        raise read.error(f"'roles' must name distinct roles among {list(PRINCIPAL_ROLES)}")
    return sorted(roles)


def proof_bytes(chain_id: str, organisation: str, name: str, key: bytes) -> bytes:
    """What a principal's key signs to be registered: it consents to act as this principal."""
    return hash_obj(PROOF_TAG, {"chain": chain_id, "organisation": organisation, "name": name, "key": key})


def registration_proof(key: SigningKey, chain_id: str, organisation: str, name: str) -> bytes:
    return key.sign(proof_bytes(chain_id, organisation, name, key.public))


@dataclass(frozen=True)
class Registration:
    name: str
    kind: str
    key: bytes
    roles: list[str]
    proof: bytes
    """The key's signature of ``proof_bytes``."""


def parse_register(args: Mapping[str, Any]) -> Registration:
    read = Arguments("principals.register", args, ("name", "kind", "key", "roles", "proof"))
    return Registration(read.identifier("name"), read.choice("kind", KINDS), read.key("key"), _roles(read),
                        read.blob("proof", max_size=64, size=64))  # fmt: skip


def register(call: Call, args: Registration) -> None:
    organisation = _authority(call)
    if call.state.get(principal_key(organisation, args.name)) is not None:
        raise MembershipError(f"{organisation} already has (or had) a principal {args.name!r}; names are not reused")
    if call.state.get(member_key(args.key)) is not None:
        raise MembershipError(f"key {args.key.hex()[:16]}… already belongs to a member or principal")
    if not verify_signature(args.key, proof_bytes(call.tx.chain_id, organisation, args.name, args.key), args.proof):
        raise MembershipError(f"the registration of {args.name!r} carries no valid signature of its key: a "
                              "principal's key must consent")  # fmt: skip
    call.state.set(principal_key(organisation, args.name), {
        "name": args.name, "organisation": organisation, "kind": args.kind, "key": args.key, "roles": args.roles,
        "status": "active", "height": call.header.height})  # fmt: skip
    call.state.set(member_key(args.key), {"organisation": organisation, "kind": "principal", "node": "",
                                          "principal": args.name})  # fmt: skip
    call.state.set(principal_names_key(organisation),
                   sorted({*(call.state.get(principal_names_key(organisation)) or []), args.name}))  # fmt: skip
    call.emit("PrincipalRegistered", organisation=organisation, principal=args.name, kind=args.kind, key=args.key,
              roles=args.roles)  # fmt: skip


@dataclass(frozen=True)
class RoleChange:
    name: str
    roles: list[str]


def parse_set_roles(args: Mapping[str, Any]) -> RoleChange:
    read = Arguments("principals.set_roles", args, ("name", "roles"))
    return RoleChange(read.identifier("name"), _roles(read))


def _active(call: Call, organisation: str, name: str) -> dict[str, Any]:
    entry = call.state.get(principal_key(organisation, name))
    if entry is None or entry["status"] != "active":
        raise MembershipError(f"{organisation} has no active principal {name!r}")
    return dict(entry)


def set_roles(call: Call, args: RoleChange) -> None:
    organisation = _authority(call)
    entry = _active(call, organisation, args.name)
    call.state.set(principal_key(organisation, args.name), {**entry, "roles": args.roles})
    call.emit("PrincipalRolesSet", organisation=organisation, principal=args.name, roles=args.roles)


def parse_remove(args: Mapping[str, Any]) -> str:
    return str(Arguments("principals.remove", args, ("name",)).identifier("name"))


def remove(call: Call, name: str) -> None:
    """The principal's key stops acting at once, for good; its entry stays."""
    organisation = _authority(call)
    retire_principal(call.state, _active(call, organisation, name))
    call.emit("PrincipalRemoved", organisation=organisation, principal=name)


PRINCIPALS = Contract("principals", {
    "register": Method(parse_register, register),
    "set_roles": Method(parse_set_roles, set_roles),
    "remove": Method(parse_remove, remove),
})  # fmt: skip
