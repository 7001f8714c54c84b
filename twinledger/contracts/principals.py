"""The ``principals`` contract: the people and programs of an organisation, by name.

An organisation's operators register its principals — a person (``alice``) or a program
(``mes``) — each with its own Ed25519 key and principal roles. A principal's key acts
for its organisation (twin roles granted to ``org:NAME`` apply to it), but only for the
actions its roles permit: the runtime checks every transaction a principal signs, at
admission and again when it is applied (``check_sender``), so the audit trail names the
person or program behind each change and a viewer can sign nothing at all.

Principal roles and the actions they permit (``ACTIONS`` maps methods to actions):

    administrator  every action, including registering principals
    engineer       specification, data, programs
    data-steward   data, sharing
    viewer         none (reads only, through the API)

State:
    principals/<organisation>/<name>  {name, organisation, kind, key, roles, status, height}
    membership/key/<key hex>          {organisation, kind: principal, node: "", principal: name}
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
    principal_of,
)
from twinledger.contracts.runtime import Call, Contract, Method
from twinledger.core.types import Transaction
from twinledger.errors import ContractError

KINDS = ("person", "program")
ACTIONS: dict[str, tuple[str, ...]] = {
    "specification": ("twins.create", "twins.insert_aml", "twins.remove_aml", "twins.add_source",
                      "twins.remove_source"),
    "data": ("twins.add_document", "twins.add_document_version", "twins.remove_document", "twins.add_feed",
             "twins.remove_feed", "twins.checkpoint_feed", "records.put"),
    "programs": ("twins.call_program", "twins.dispatch_call", "twins.report_call", "twins.report_anomaly"),
    "sharing": ("sharing.grant", "sharing.revoke", "sharing.add_device", "sharing.retire_device",
                "authorization.present_token", "authorization.revoke_token"),
    "roles": ("authorization.grant_role", "authorization.revoke_role", "authorization.set_permissions"),
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


class NotPermitted(ContractError):
    code = "not_permitted"
    http_status = 403


def principal_key(organisation: str, name: str) -> str:
    return f"principals/{organisation}/{name}"


def action_of(contract: str, method: str) -> str | None:
    qualified = f"{contract}.{method}"
    return next((action for action, methods in ACTIONS.items() if qualified in methods), None)


def permits(roles: list[str], contract: str, method: str) -> bool:
    action = action_of(contract, method)
    return action is not None and any(action in PRINCIPAL_ROLES.get(role, ()) for role in roles)


def check_sender(state: StateReader, tx: Transaction) -> None:
    """A principal may only sign what its roles permit (keys of no principal pass: the
    contracts decide what operators, nodes and devices may do)."""
    found = principal_of(state, tx.sender)
    if found is None:
        return
    organisation, name = found
    entry = state.get(principal_key(organisation, name))
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
    if any(role not in PRINCIPAL_ROLES for role in roles) or len(set(roles)) != len(roles):
        raise read.error(f"'roles' must name distinct roles among {list(PRINCIPAL_ROLES)}")
    return sorted(roles)


@dataclass(frozen=True)
class Registration:
    name: str
    kind: str
    key: bytes
    roles: list[str]


def parse_register(args: Mapping[str, Any]) -> Registration:
    read = Arguments("principals.register", args, ("name", "kind", "key", "roles"))
    return Registration(read.identifier("name"), read.choice("kind", KINDS), read.key("key"), _roles(read))


def register(call: Call, args: Registration) -> None:
    organisation = _authority(call)
    existing = call.state.get(principal_key(organisation, args.name))
    if existing is not None and existing["status"] == "active":
        raise MembershipError(f"{organisation} already has a principal {args.name!r}")
    if call.state.get(member_key(args.key)) is not None:
        raise MembershipError(f"key {args.key.hex()[:16]}… already belongs to a member or principal")
    call.state.set(principal_key(organisation, args.name), {
        "name": args.name, "organisation": organisation, "kind": args.kind, "key": args.key, "roles": args.roles,
        "status": "active", "height": call.header.height})  # fmt: skip
    call.state.set(member_key(args.key), {"organisation": organisation, "kind": "principal", "node": "",
                                          "principal": args.name})  # fmt: skip
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
    """The principal's key stops acting for the organisation at once; its entry stays."""
    organisation = _authority(call)
    entry = _active(call, organisation, name)
    call.state.set(principal_key(organisation, name), {**entry, "status": "removed", "roles": []})
    call.state.set(member_key(entry["key"]), None)
    call.emit("PrincipalRemoved", organisation=organisation, principal=name)


PRINCIPALS = Contract("principals", {
    "register": Method(parse_register, register),
    "set_roles": Method(parse_set_roles, set_roles),
    "remove": Method(parse_remove, remove),
})  # fmt: skip
