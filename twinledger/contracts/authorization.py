"""The ``authorization`` contract: role-based access control per twin.

A *subject* is an organisation (``org:<name>``: any of its operator keys) or one key
(``key:<hex>``: a device agent, a processing service). A subject holds roles on a twin,
each either over the whole twin or *scoped* to AML component subtrees. A role maps to the
twin methods it permits; the defaults follow Dietz et al. §4.5 (write: owner and
maintainer; read: everyone) plus what a device agent needs to keep the twin in sync
(§5.2). Only the owner grants and revokes roles or changes a role's permissions, and
the owner's own permissions are fixed.

A key may also act through a *write token* (Armored Twins phase 2 step 2): the owner's
signed leave for one key — a processing service — to use some methods, optionally within
some components, until a time. It is presented on chain, checked again at every use
(unexpired, its issuer still allowed to grant roles) and ended early by ``revoke_token``.

``authorize`` is the one check every state-changing twin method makes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from twinledger.abc import StateReader
from twinledger.contracts.arguments import Arguments
from twinledger.contracts.membership import key_removed, organisation_of, principal_of
from twinledger.contracts.principals import key_may
from twinledger.contracts.runtime import Call, Contract, Method
from twinledger.contracts.twinmodel import element_path, require_element
from twinledger.contracts.twinstate import (
    audited,
    load_twin,
    permissions_key,
    retired_key,
    revoked_token_key,
    roles_key,
    tokens_key,
)
from twinledger.core.encoding import decode, encode, from_obj, to_obj
from twinledger.core.hashing import hash_obj
from twinledger.crypto.keys import SigningKey, verify_signature
from twinledger.errors import ContractError, DecodeError

ROLES = ("owner", "manufacturer", "maintainer", "auditor", "device-agent", "distributor", "processing-service")
DATA_METHODS = (
    "aml.insert", "aml.remove",
    "document.add", "document.version", "document.remove",
    "source.add", "source.remove",
    "feed.add", "feed.remove",
    "program.call", "program.dispatch", "program.report",
    "anomaly.report",
)  # fmt: skip
OWNER_METHODS = ("role.grant", "role.revoke", "permissions.set")
DEFAULT_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "owner": DATA_METHODS + OWNER_METHODS,
    "maintainer": ("aml.insert", "aml.remove", "document.add", "document.version", "document.remove",
                   "source.add", "source.remove", "feed.add", "feed.remove", "program.call", "anomaly.report"),
    "device-agent": ("aml.insert", "aml.remove", "feed.add", "feed.remove", "program.dispatch", "program.report",
                     "anomaly.report"),
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
    http_status = 403


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


def may(state: StateReader, twin: dict[str, Any], key: bytes, method: str, component: str | None = None,
        now: int | None = None, path: tuple[str, ...] | None = None) -> bool:  # fmt: skip
    """Whether ``key`` may ``method`` on the twin (within ``component``, or within the
    element whose IDs from the top are ``path``): through a role it holds over the whole
    twin or a scope containing the component, or, given the block's time ``now``,
    through a write token the owner issued it."""
    if not key_may(state, key, method) or key_removed(state, key):  # a principal within its roles; no removed key
        return False
    allowed = permissions(state, twin["id"])
    grants = [scopes for role, scopes in roles_of(state, twin["id"], key).items() if method in allowed[role]]
    if now is not None:
        grants += [token["scopes"] for token in tokens_in_force(state, twin, key, now) if method in token["methods"]]
    if any(not scopes for scopes in grants):
        return True
    if (component is None and path is None) or not grants:
        return False
    if path is None:  # an element the model does not hold (a library's, a name path) is in no scope
        path = element_path(state, twin["id"], component or "") or ()
    return any(set(scopes) & set(path) for scopes in grants)


def tokens_in_force(state: StateReader, twin: dict[str, Any], key: bytes, now: int) -> list[dict[str, Any]]:
    """The write tokens ``key`` holds on the twin that act now: unexpired, not revoked
    (whatever recipient the revocation named), their issuer still allowed to grant roles."""
    if state.get(retired_key(twin["id"], key)) is not None:
        return []
    return [token for token in (state.get(tokens_key(twin["id"], key)) or {}).values()
            if now < token["not_after"] and state.get(revoked_token_key(twin["id"], token["id"])) is None
            and may(state, twin, token["issuer"], "role.grant")]  # fmt: skip


def authorize(call: Call, twin: dict[str, Any], method: str, component: str | None = None,
              path: tuple[str, ...] | None = None) -> None:  # fmt: skip
    """Pass if the sender may ``method`` (``may``); raise Forbidden naming who, what and where."""
    if may(call.state, twin, call.sender, method, component, call.header.timestamp, path):
        return
    principal = principal_of(call.state, call.sender)
    if principal is not None and not key_may(call.state, call.sender, method):
        raise Forbidden(f"principal {'/'.join(principal)} may not {method}: its principal roles do not allow it",
                        code="not_permitted")  # fmt: skip
    held = roles_of(call.state, twin["id"], call.sender)
    where = f" within {component or (path or ('',))[-1]!r}" if component is not None or path else ""
    roles = ", ".join(f"{r} ({'/'.join(s)})" if s else r for r, s in sorted(held.items())) or "none"
    who = subjects_of(call.state, call.sender)[-1]
    who = who if who.startswith("org:") else who[:20] + "…"
    raise Forbidden(f"{who} may not {method} on twin {twin['id']}{where} (its roles: {roles}; no valid write token)")


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


def check_scopes_exist(state: StateReader, twin_id: str, table: RoleTable) -> None:
    for roles in table.values():
        for scopes in roles.values():
            for scope in scopes:
                require_element(state, twin_id, scope)


# -- methods -----------------------------------------------------------------------------------


def set_role(call: Call, twin_id: str, subject: str, role: str, scopes: tuple[str, ...] = ()) -> None:
    """Give ``subject`` ``role`` on the twin (within ``scopes``), the one place roles are added."""
    table = role_table(call.state, twin_id)
    if subject not in table and len(table) >= MAX_SUBJECTS:
        raise Forbidden(f"twin {twin_id} already has {MAX_SUBJECTS} subjects with roles")
    table[subject] = {**table.get(subject, {}), role: list(scopes)}
    call.state.set(roles_key(twin_id), table)


def remove_role(call: Call, twin_id: str, subject: str, role: str) -> None:
    """Take ``role`` from ``subject``, if it holds it; a subject left with no role leaves the table."""
    table = dict(role_table(call.state, twin_id))
    remaining = {held: scopes for held, scopes in table.get(subject, {}).items() if held != role}
    if remaining:
        table[subject] = remaining
    else:
        table.pop(subject, None)
    call.state.set(roles_key(twin_id), table)


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
    authorize(call, twin, "role.grant")
    for scope in grant.scopes:
        require_element(call.state, grant.twin, scope)
    set_role(call, grant.twin, grant.subject, grant.role, grant.scopes)
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
    authorize(call, twin, "role.revoke")
    table = role_table(call.state, revocation.twin)
    roles = table.get(revocation.subject, {})
    if revocation.role not in roles:
        raise Forbidden(f"{revocation.subject} holds no role {revocation.role!r} on twin {revocation.twin}",
                        code="no_such_role")  # fmt: skip
    if revocation.role == "owner" and sum("owner" in r for r in table.values()) == 1:
        raise Forbidden(f"{revocation.subject} is the twin's only owner; grant ownership to another first",
                        code="last_owner")  # fmt: skip
    remove_role(call, revocation.twin, revocation.subject, revocation.role)
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
    authorize(call, twin, "permissions.set")
    changed = call.state.get(permissions_key(change.twin)) or {}
    call.state.set(permissions_key(change.twin), {**changed, change.role: list(change.methods)})
    call.emit("PermissionsSet", twin=change.twin, role=change.role, methods=list(change.methods))


# -- write tokens ------------------------------------------------------------------------------

TOKEN_TAG = "twinledger/write-token/v1"
MAX_TOKENS = 16
"""Tokens in force one key may hold on one twin."""
MAX_TOKEN_LIFE_MS = 366 * 24 * 3600 * 1000
"""A token ends at most a year and a day after it is presented: leave, not ownership."""


@dataclass(frozen=True)
class WriteToken:
    """The owner's signed leave for one key to change a twin's state (Armored Twins, phase 2
    step 2): which methods, where, until when. The recipient presents it on chain
    (``authorization.present_token``); from then until ``not_after`` or a revocation it
    acts as a role, if its issuer may still grant roles on the twin."""

    chain_id: str
    twin: str
    recipient: bytes
    methods: tuple[str, ...]
    scopes: tuple[str, ...]
    not_after: int
    """Milliseconds since the epoch; block time must be earlier."""
    issuer: bytes
    nonce: bytes
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return hash_obj(TOKEN_TAG, to_obj(replace(self, signature=b"")))

    def signed(self, key: SigningKey) -> WriteToken:
        return replace(self, issuer=key.public, signature=key.sign(replace(self, issuer=key.public).signing_bytes()))

    def encoded(self) -> bytes:
        return encode(to_obj(self))

    @property
    def id(self) -> bytes:
        return hashlib.sha256(self.encoded()).digest()


def decode_token(raw: bytes, read: Arguments) -> WriteToken:
    """A well-formed token with a valid issuer signature, or the argument error naming what is wrong."""
    try:
        token = from_obj(WriteToken, decode(raw, max_size=4096), "write token")
    except DecodeError as exc:
        raise read.error(f"'token' is malformed: {exc.message}") from None
    if (len(token.recipient) != 32 or len(token.issuer) != 32 or len(token.nonce) != 16 or not token.methods
            or any(m not in DATA_METHODS for m in token.methods) or len(set(token.methods)) != len(token.methods)
            or len(token.scopes) > MAX_SCOPES or not all(aml_id(s) for s in token.scopes)):  # fmt: skip
        raise read.error(f"'token' must name a 32-byte recipient and issuer, a 16-byte nonce and methods among "
                         f"{list(DATA_METHODS)}")  # fmt: skip
    if not verify_signature(token.issuer, token.signing_bytes(), token.signature):
        raise read.error("'token' does not carry its issuer's valid signature")
    return token


def parse_present_token(args: Mapping[str, Any]) -> WriteToken:
    read = Arguments("authorization.present_token", args, ("token",))
    return decode_token(read.blob("token", max_size=4096), read)


def present_token(call: Call, token: WriteToken) -> None:
    """Put a write token into force for its recipient; anyone may present it."""
    twin = load_twin(call.state, token.twin)
    if token.chain_id != call.tx.chain_id:
        raise Forbidden(f"the token was issued for chain {token.chain_id!r}", code="bad_token")
    if not may(call.state, twin, token.issuer, "role.grant"):
        raise Forbidden(f"the token's issuer {token.issuer.hex()[:16]}… may not grant access to twin {twin['id']}",
                        code="bad_token")  # fmt: skip
    if token.not_after <= call.header.timestamp:
        raise Forbidden("the token has expired", code="expired_token")
    if token.not_after > call.header.timestamp + MAX_TOKEN_LIFE_MS:
        raise Forbidden("the token runs more than a year and a day; issue one that ends sooner", code="bad_token")
    if call.state.get(revoked_token_key(twin["id"], token.id)) is not None:
        raise Forbidden(f"token {token.id.hex()[:16]}… was revoked", code="revoked_token")
    if call.state.get(retired_key(twin["id"], token.recipient)) is not None:
        raise Forbidden(f"key {token.recipient.hex()[:16]}… is a retired device of twin {twin['id']}", code="bad_token")
    for scope in token.scopes:
        require_element(call.state, twin["id"], scope)
    held = {t["id"].hex(): t for t in tokens_in_force(call.state, twin, token.recipient, call.header.timestamp)}
    if token.id.hex() in held:
        raise Forbidden(f"token {token.id.hex()[:16]}… is already in force", code="token_in_force")
    if len(held) >= MAX_TOKENS:
        raise Forbidden(f"key {token.recipient.hex()[:16]}… already holds {MAX_TOKENS} tokens on twin {twin['id']}")
    held[token.id.hex()] = {"id": token.id, "methods": list(token.methods), "scopes": list(token.scopes),
                            "not_after": token.not_after, "issuer": token.issuer, "presented": call.header.height}  # fmt: skip
    call.state.set(tokens_key(twin["id"], token.recipient), held)
    call.emit("TokenPresented", twin=twin["id"], token=token.id, recipient=token.recipient, issuer=token.issuer,
              methods=list(token.methods), scopes=list(token.scopes), not_after=token.not_after)  # fmt: skip


@dataclass(frozen=True)
class TokenRevocation:
    twin: str
    token: bytes
    recipient: bytes


def parse_revoke_token(args: Mapping[str, Any]) -> TokenRevocation:
    read = Arguments("authorization.revoke_token", args, ("twin", "token", "recipient"))
    return TokenRevocation(read.identifier("twin"), read.digest("token"), read.key("recipient"))


def revoke_token(call: Call, revocation: TokenRevocation) -> None:
    """End a write token now, whether presented yet or not (Armored Twins M1 step 3)."""
    twin = load_twin(call.state, revocation.twin)
    authorize(call, twin, "role.revoke")
    key = revoked_token_key(twin["id"], revocation.token)
    if call.state.get(key) is not None:
        raise Forbidden(f"token {revocation.token.hex()[:16]}… is already revoked", code="already_revoked")
    call.state.set(key, {"revoked": call.header.height})
    held = call.state.get(tokens_key(twin["id"], revocation.recipient)) or {}
    if revocation.token.hex() in held:
        call.state.set(tokens_key(twin["id"], revocation.recipient),
                       {k: v for k, v in held.items() if k != revocation.token.hex()} or None)  # fmt: skip
    call.emit("TokenRevoked", twin=twin["id"], token=revocation.token, recipient=revocation.recipient)


AUTHORIZATION = Contract(
    "authorization",
    {
        "grant_role": Method(parse_grant, audited(grant_role)),
        "revoke_role": Method(parse_revoke, audited(revoke_role)),
        "set_permissions": Method(parse_set_permissions, audited(set_permissions)),
        "present_token": Method(parse_present_token, audited(present_token)),
        "revoke_token": Method(parse_revoke_token, audited(revoke_token)),
    },
)
