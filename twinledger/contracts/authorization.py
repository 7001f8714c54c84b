"""The ``authorization`` contract: role-based access control per twin.

A *subject* is an organisation (``org:<name>``: any of its operator keys) or one key
(``key:<hex>``: a device agent, a processing service). A subject holds roles on a twin,
each either over the whole twin or *scoped* to AML component subtrees. A role maps to the
twin methods it permits; the defaults follow Dietz et al. §4.5 (write: owner and
maintainer; read: everyone) plus what a device agent needs to keep the twin in sync
(§5.2). Only the owner grants and revokes roles or changes a role's permissions, and
the owner's own permissions are fixed.

``authorize`` is the one check every state-changing twin method makes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.abc import StateReader
from twinledger.contracts.arguments import Arguments
from twinledger.contracts.membership import organisation_of
from twinledger.contracts.runtime import Call, Contract, Method
from twinledger.contracts.twinstate import audited, load_twin, permissions_key, roles_key, specification
from twinledger.errors import ContractError
from twinledger.twins import aml

ROLES = ("owner", "manufacturer", "maintainer", "auditor", "device-agent", "distributor", "processing-service")
DATA_METHODS = (
    "aml.insert", "aml.remove",
    "document.add", "document.version", "document.remove",
    "source.add", "source.remove",
    "feed.add", "feed.remove",
    "program.call", "program.dispatch", "program.report",
)  # fmt: skip
OWNER_METHODS = ("role.grant", "role.revoke", "permissions.set")
DEFAULT_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "owner": DATA_METHODS + OWNER_METHODS,
    "maintainer": ("aml.insert", "aml.remove", "document.add", "document.version", "document.remove",
                   "source.add", "source.remove", "feed.add", "feed.remove", "program.call"),
    "device-agent": ("aml.insert", "aml.remove", "feed.add", "feed.remove", "program.dispatch", "program.report"),
    "manufacturer": (),
    "auditor": (),
    "distributor": (),
    "processing-service": (),
}  # fmt: skip
SUBJECT = re.compile(r"^(org:[A-Za-z0-9][A-Za-z0-9._-]{0,62}|key:[0-9a-f]{64})$")
MAX_SUBJECTS = 256
MAX_SCOPES = 32

RoleTable = dict[str, dict[str, list[str]]]
"""subject → role → scope IDs (empty: the whole twin)."""


class Forbidden(ContractError):
    code = "forbidden"


def subjects_of(state: StateReader, sender: bytes) -> tuple[str, ...]:
    organisation = organisation_of(state, sender)
    own = f"key:{sender.hex()}"
    return (own, f"org:{organisation}") if organisation is not None else (own,)


def role_table(state: StateReader, twin_id: str) -> RoleTable:
    return state.get(roles_key(twin_id)) or {}


def permissions(state: StateReader, twin_id: str) -> dict[str, tuple[str, ...]]:
    changed = state.get(permissions_key(twin_id)) or {}
    return {role: tuple(changed.get(role, default)) for role, default in DEFAULT_PERMISSIONS.items()}


def roles_of(state: StateReader, twin_id: str, sender: bytes) -> dict[str, list[str]]:
    """The sender's roles on the twin (through its key and its organisation), with scopes."""
    table = role_table(state, twin_id)
    held: dict[str, list[str]] = {}
    for subject in subjects_of(state, sender):
        for role, scopes in table.get(subject, {}).items():
            if role in held and (not held[role] or not scopes):
                held[role] = []
            else:
                held[role] = sorted({*held.get(role, []), *scopes})
    return held


def authorize(state: StateReader, twin: dict[str, Any], sender: bytes, method: str,
              component: str | None = None) -> None:  # fmt: skip
    """Pass if a role the sender holds permits ``method`` on the whole twin, or within a
    scope that contains ``component``; raise Forbidden naming who, what and where."""
    held = roles_of(state, twin["id"], sender)
    allowed = permissions(state, twin["id"])
    path: tuple[str, ...] | None = None
    for role, scopes in held.items():
        if method not in allowed[role]:
            continue
        if not scopes:
            return
        if component is not None:
            if path is None:
                path = aml.component_path(specification(state, twin), component)
            if set(scopes) & set(path):
                return
    where = f" within {component!r}" if component is not None else ""
    roles = ", ".join(f"{r} ({'/'.join(s)})" if s else r for r, s in sorted(held.items())) or "none"
    who = subjects_of(state, sender)[-1]
    who = who if who.startswith("org:") else who[:20] + "…"
    raise Forbidden(f"{who} may not {method} on twin {twin['id']}{where} (its roles: {roles})")


# -- parsing -----------------------------------------------------------------------------------


def parse_subject(read: Arguments, name: str = "subject") -> str:
    value = read.text(name, max_length=80)
    if not SUBJECT.match(value):
        raise read.error(f"{name!r} must be org:<organisation> or key:<64 hex digits> (got {value[:40]!r})")
    return value


def parse_scopes(read: Arguments, value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_SCOPES or not all(isinstance(s, str) and aml_id(s) for s in value):
        raise read.error(f"{where} must be a list of at most {MAX_SCOPES} AML element IDs")
    return sorted(set(value))


def aml_id(value: str) -> bool:
    return 0 < len(value) <= 128 and value.isprintable()


def parse_role_table(read: Arguments, name: str) -> RoleTable:
    """``{subject: {role: [scope IDs]}}`` as given to twin creation."""
    table = read.mapping(name, max_items=MAX_SUBJECTS, default={})
    result: RoleTable = {}
    for subject, roles in table.items():
        if not SUBJECT.match(subject):
            raise read.error(f"{name!r}: {subject[:40]!r} is not org:<organisation> or key:<64 hex digits>")
        if not isinstance(roles, dict) or not roles or any(role not in ROLES for role in roles):
            raise read.error(f"{name!r}: {subject} must map to roles among {list(ROLES)}")
        result[subject] = {role: parse_scopes(read, scopes, f"{name!r}: scopes of {subject} {role}")
                           for role, scopes in roles.items()}  # fmt: skip
    return result


def check_scopes_exist(spec: bytes, table: RoleTable) -> None:
    for roles in table.values():
        for scopes in roles.values():
            for scope in scopes:
                aml.component_path(spec, scope)


# -- methods -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    twin: str
    subject: str
    role: str
    scopes: tuple[str, ...]


def parse_grant(args: Mapping[str, Any]) -> Grant:
    read = Arguments("authorization.grant_role", args, ("twin", "subject", "role", "scopes"))
    scopes = parse_scopes(read, list(read.items("scopes", max_items=MAX_SCOPES, default=())), "'scopes'")
    role = read.choice("role", ROLES)
    if role == "owner" and scopes:
        raise read.error("ownership covers the whole twin; it cannot be scoped")
    return Grant(read.identifier("twin"), parse_subject(read), role, tuple(scopes))


def grant_role(call: Call, grant: Grant) -> None:
    twin = load_twin(call.state, grant.twin)
    authorize(call.state, twin, call.sender, "role.grant")
    spec = specification(call.state, twin)
    for scope in grant.scopes:
        aml.component_path(spec, scope)
    table = role_table(call.state, grant.twin)
    if grant.subject not in table and len(table) >= MAX_SUBJECTS:
        raise Forbidden(f"twin {grant.twin} already has {MAX_SUBJECTS} subjects with roles")
    table[grant.subject] = {**table.get(grant.subject, {}), grant.role: list(grant.scopes)}
    call.state.set(roles_key(grant.twin), table)
    call.emit("RoleGranted", twin=grant.twin, subject=grant.subject, role=grant.role, scopes=list(grant.scopes))


@dataclass(frozen=True)
class Revocation:
    twin: str
    subject: str
    role: str


def parse_revoke(args: Mapping[str, Any]) -> Revocation:
    read = Arguments("authorization.revoke_role", args, ("twin", "subject", "role"))
    return Revocation(read.identifier("twin"), parse_subject(read), read.choice("role", ROLES))


def revoke_role(call: Call, revocation: Revocation) -> None:
    twin = load_twin(call.state, revocation.twin)
    authorize(call.state, twin, call.sender, "role.revoke")
    table = role_table(call.state, revocation.twin)
    roles = table.get(revocation.subject, {})
    if revocation.role not in roles:
        raise Forbidden(f"{revocation.subject} holds no role {revocation.role!r} on twin {revocation.twin}",
                        code="no_such_role")  # fmt: skip
    if revocation.role == "owner" and sum("owner" in r for r in table.values()) == 1:
        raise Forbidden(f"{revocation.subject} is the twin's only owner; grant ownership to another first",
                        code="last_owner")  # fmt: skip
    remaining = {role: scopes for role, scopes in roles.items() if role != revocation.role}
    if remaining:
        table[revocation.subject] = remaining
    else:
        del table[revocation.subject]
    call.state.set(roles_key(revocation.twin), table)
    call.emit("RoleRevoked", twin=revocation.twin, subject=revocation.subject, role=revocation.role)


@dataclass(frozen=True)
class PermissionChange:
    twin: str
    role: str
    methods: tuple[str, ...]


def parse_set_permissions(args: Mapping[str, Any]) -> PermissionChange:
    read = Arguments("authorization.set_permissions", args, ("twin", "role", "methods"))
    role = read.choice("role", [r for r in ROLES if r != "owner"])
    methods = read.items("methods", max_items=len(DATA_METHODS))
    if any(m not in DATA_METHODS for m in methods) or len(set(methods)) != len(methods):
        raise read.error(f"'methods' must name distinct methods among {list(DATA_METHODS)}")
    return PermissionChange(read.identifier("twin"), role, tuple(sorted(methods)))


def set_permissions(call: Call, change: PermissionChange) -> None:
    twin = load_twin(call.state, change.twin)
    authorize(call.state, twin, call.sender, "permissions.set")
    changed = call.state.get(permissions_key(change.twin)) or {}
    call.state.set(permissions_key(change.twin), {**changed, change.role: list(change.methods)})
    call.emit("PermissionsSet", twin=change.twin, role=change.role, methods=list(change.methods))


AUTHORIZATION = Contract(
    "authorization",
    {
        "grant_role": Method(parse_grant, audited(grant_role)),
        "revoke_role": Method(parse_revoke, audited(revoke_role)),
        "set_permissions": Method(parse_set_permissions, audited(set_permissions)),
    },
)
