"""The ``membership`` contract: who is in the consortium.

An organisation has operator keys (people and tools acting for it), nodes (signing and
X25519 keys, roles, API, peer and storage endpoints) and two organisation-wide public
keys: X25519 for wrapping data keys, and a slot for its KP-CPRE key. The genesis names
the founding members and the administrators.

Every change is a *proposal*. A consortium administrator's proposal applies at once;
an operator's proposal applies once operators of ``quorum`` organisations approved it
(0 means a majority of the current organisations). The one change an organisation may
make alone is to revoke one of its own keys: that only ever takes power away.

State:
    membership/organisation/<name>  the organisation
    membership/key/<key hex>        {organisation, kind: operator | node | principal, node[, principal]}
    membership/removed/<key hex>    {organisation}: an operator or node key its organisation
                                    removed (or that left with it): it acts for nobody, not
                                    even through a role or write token given to the key itself
    membership/left/<name>          {height}: an organisation that was removed; its nodes,
                                    even with certificates issued since, are no peers
    membership/departures           names of organisations removed whose grants the sharing
                                    contract has yet to end (its ``begin_block``)
    membership/organisations        sorted names
    membership/admins, membership/quorum
    membership/proposal/<tx hex>    {change, proposer, approvals, status}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.abc import StateReader, StateValue
from twinledger.contracts.arguments import Arguments
from twinledger.contracts.runtime import Call, Contract, Method, Overlay
from twinledger.errors import ContractError
from twinledger.ledger.genesis import Genesis

NODE_ROLES = ("thin", "validator", "archive", "full", "store", "proxy", "mpc")
MAX_KEYS = 64
MAX_NODES = 64
ORGANISATIONS = "membership/organisations"
ADMINS = "membership/admins"
QUORUM = "membership/quorum"


class NotAMember(ContractError):
    code = "not_a_member"
    http_status = 403


class MembershipError(ContractError):
    code = "membership"


def organisation_key(name: str) -> str:
    return f"membership/organisation/{name}"


def member_key(public: bytes) -> str:
    return f"membership/key/{public.hex()}"


def removed_key(public: bytes) -> str:
    return f"membership/removed/{public.hex()}"


def key_removed(state: StateReader, public: bytes) -> bool:
    """Whether an operator or node key was removed from its organisation (and not added again)."""
    return state.get(removed_key(public)) is not None and state.get(member_key(public)) is None


DEPARTURES = "membership/departures"


def left_key(organisation: str) -> str:
    return f"membership/left/{organisation}"


def node_standing(state: StateReader, organisation: str, public: bytes) -> str:
    """What the membership says of a node key claiming ``organisation``: ``member`` (a
    current node of it), ``refused`` (the key is another member's, or was removed, or
    the organisation was), or ``unknown`` (perhaps added after this state)."""
    entry = state.get(member_key(public))
    if entry is not None:
        return "member" if entry["kind"] == "node" and entry["organisation"] == organisation else "refused"
    if state.get(removed_key(public)) is not None:
        return "refused"
    if state.get(left_key(organisation)) is not None and state.get(organisation_key(organisation)) is None:
        return "refused"
    return "unknown"


def _forget_key(state: Overlay, public: bytes, organisation: str) -> None:
    state.set(member_key(public), None)
    state.set(removed_key(public), {"organisation": organisation})


def proposal_key(proposal: bytes) -> str:
    return f"membership/proposal/{proposal.hex()}"


def principal_key(organisation: str, name: str) -> str:
    """A principal of the organisation (``contracts/principals.py``)."""
    return f"principals/{organisation}/{name}"


def principal_names_key(organisation: str) -> str:
    """Every principal name the organisation ever registered."""
    return f"membership/principals/{organisation}"


# -- reading -----------------------------------------------------------------------------------


def organisation_of(state: StateReader, public: bytes) -> str | None:
    """The organisation an operator's or a principal's key acts for (node keys never act
    for it; a principal's acts only within its roles, see ``contracts/principals.py``)."""
    entry = state.get(member_key(public))
    if entry is None or entry["kind"] not in ("operator", "principal") or entry.get("removed"):
        return None
    return str(entry["organisation"])


def principal_of(state: StateReader, public: bytes) -> tuple[str, str] | None:
    """(organisation, principal name) if ``public`` is or was a principal's key (a removed
    principal's key stays known, so it can never act as anyone else's)."""
    entry = state.get(member_key(public))
    return (entry["organisation"], entry["principal"]) if entry is not None and entry["kind"] == "principal" else None


def required_organisation(state: StateReader, public: bytes, action: str) -> str:
    organisation = organisation_of(state, public)
    if organisation is None:
        raise NotAMember(f"only an operator of a member organisation may {action}; key {public.hex()[:16]}… is none")
    return organisation


def organisations(state: StateReader) -> list[str]:
    return list(state.get(ORGANISATIONS) or [])


def quorum(state: StateReader) -> int:
    configured = state.get(QUORUM) or 0
    return configured or len(organisations(state)) // 2 + 1


# -- changes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One membership change, checked for shape; ``apply_change`` checks it against state."""

    op: str
    args: dict[str, Any]


def _node_entry(read: Arguments) -> dict[str, Any]:
    roles = read.items("roles", max_items=len(NODE_ROLES))
    if not roles or any(role not in NODE_ROLES for role in roles) or len(set(roles)) != len(roles):
        raise read.error(f"'roles' must name distinct roles among {list(NODE_ROLES)}")
    return {
        "signing_key": read.key("signing_key"),
        "encryption_key": read.key("encryption_key"),
        "roles": sorted(roles),
        "api": read.text("api", empty=True, default=""),
        "p2p": read.text("p2p", empty=True, default=""),
        "storage": read.text("storage", empty=True, default=""),
    }


def _keys(read: Arguments, name: str) -> list[bytes]:
    keys = read.items(name, max_items=MAX_KEYS)
    if not keys or any(not isinstance(k, bytes) or len(k) != 32 for k in keys) or len(set(keys)) != len(keys):
        raise read.error(f"{name!r} must list distinct 32-byte keys")
    return sorted(keys)


CHANGE_ARGUMENTS: dict[str, Callable[[Arguments], dict[str, Any]]] = {
    "add_organisation": lambda r: {"name": r.identifier("name"), "operators": _keys(r, "operators"),
                                   "encryption_key": r.key("encryption_key")},
    "remove_organisation": lambda r: {"name": r.identifier("name")},
    "add_operator": lambda r: {"organisation": r.identifier("organisation"), "key": r.key("key")},
    "remove_operator": lambda r: {"organisation": r.identifier("organisation"), "key": r.key("key")},
    "set_node": lambda r: {"organisation": r.identifier("organisation"), "node": r.identifier("node"),
                           **_node_entry(r)},
    "remove_node": lambda r: {"organisation": r.identifier("organisation"), "node": r.identifier("node")},
    "set_keys": lambda r: {"organisation": r.identifier("organisation"),
                           "encryption_key": r.key("encryption_key", default=None),
                           "kpcpre_key": r.blob("kpcpre_key", max_size=4096, default=None)},
    "set_admins": lambda r: {"admins": _keys(r, "admins") if r.items("admins", max_items=MAX_KEYS) else []},
    "set_quorum": lambda r: {"quorum": r.integer("quorum", maximum=1024)},
}  # fmt: skip
CHANGE_FIELDS = {
    "add_organisation": ("name", "operators", "encryption_key"),
    "remove_organisation": ("name",),
    "add_operator": ("organisation", "key"),
    "remove_operator": ("organisation", "key"),
    "set_node": ("organisation", "node", "signing_key", "encryption_key", "roles", "api", "p2p", "storage"),
    "remove_node": ("organisation", "node"),
    "set_keys": ("organisation", "encryption_key", "kpcpre_key"),
    "set_admins": ("admins",),
    "set_quorum": ("quorum",),
}


def parse_change(value: Any) -> Change:
    if not isinstance(value, dict) or value.get("op") not in CHANGE_ARGUMENTS:
        raise Arguments("membership.propose", {}, ()).error(
            f"'change' must be a map whose 'op' is one of {sorted(CHANGE_ARGUMENTS)}"
        )
    op = value["op"]
    args = {k: v for k, v in value.items() if k != "op"}
    read = Arguments(f"membership.propose {op}", args, CHANGE_FIELDS[op])
    return Change(op, CHANGE_ARGUMENTS[op](read))


def _organisation(state: StateReader, name: str) -> dict[str, Any]:
    org = state.get(organisation_key(name))
    if org is None:
        raise MembershipError(f"no organisation {name!r}")
    return org


def _claim_key(state: StateReader, public: bytes) -> None:
    if state.get(member_key(public)) is not None:
        raise MembershipError(f"key {public.hex()[:16]}… already belongs to a member")


def apply_change(call: Call, change: Change) -> None:
    """Check ``change`` against the current members and apply it (the one place membership
    state is written after genesis)."""
    state, a = call.state, change.args
    if change.op == "add_organisation":
        if state.get(organisation_key(a["name"])) is not None:
            raise MembershipError(f"organisation {a['name']!r} already exists")
        for key in a["operators"]:
            _claim_key(state, key)
        _write_organisation(state, {"name": a["name"], "operators": a["operators"], "nodes": {},
                                    "encryption_key": a["encryption_key"], "kpcpre_key": None})  # fmt: skip
        state.set(ORGANISATIONS, sorted({*organisations(state), a["name"]}))
    elif change.op == "remove_organisation":
        org = _organisation(state, a["name"])
        for key in _keys_of(org):
            _forget_key(state, key, org["name"])
        retire_principals(state, a["name"])
        state.set(organisation_key(a["name"]), None)
        state.set(left_key(a["name"]), {"height": call.header.height})
        state.set(DEPARTURES, [*(state.get(DEPARTURES) or []), a["name"]])
        state.set(ORGANISATIONS, [n for n in organisations(state) if n != a["name"]])
    elif change.op == "add_operator":
        org = _organisation(state, a["organisation"])
        _claim_key(state, a["key"])
        _write_organisation(state, {**org, "operators": sorted([*org["operators"], a["key"]])})
    elif change.op == "remove_operator":
        _remove_key(state, _organisation(state, a["organisation"]), a["key"])
    elif change.op == "set_node":
        org = _organisation(state, a["organisation"])
        entry = {k: v for k, v in a.items() if k not in ("organisation", "node")}
        old = org["nodes"].get(a["node"])
        if old is None or old["signing_key"] != entry["signing_key"]:
            _claim_key(state, entry["signing_key"])
        if old is not None and old["signing_key"] != entry["signing_key"]:
            _forget_key(state, old["signing_key"], org["name"])
        if old is None and len(org["nodes"]) >= MAX_NODES:
            raise MembershipError(f"an organisation has at most {MAX_NODES} nodes")
        _write_organisation(state, {**org, "nodes": {**org["nodes"], a["node"]: entry}})
    elif change.op == "remove_node":
        org = _organisation(state, a["organisation"])
        if a["node"] not in org["nodes"]:
            raise MembershipError(f"organisation {a['organisation']!r} has no node {a['node']!r}")
        _forget_key(state, org["nodes"][a["node"]]["signing_key"], org["name"])
        _write_organisation(state, {**org, "nodes": {n: v for n, v in org["nodes"].items() if n != a["node"]}})
    elif change.op == "set_keys":
        org = _organisation(state, a["organisation"])
        updated = {k: a[k] for k in ("encryption_key", "kpcpre_key") if a[k] is not None}
        _write_organisation(state, {**org, **updated})
    elif change.op == "set_admins":
        state.set(ADMINS, a["admins"])
    elif change.op == "set_quorum":
        if a["quorum"] > len(organisations(state)):
            raise MembershipError(f"a quorum of {a['quorum']} is more than the {len(organisations(state))} organisations")
        state.set(QUORUM, a["quorum"])
    call.emit("MembershipChanged", op=change.op, **{k: v for k, v in a.items() if isinstance(v, str)})


def retire_principal(state: Overlay, entry: dict[str, Any]) -> None:
    """The principal acts no more; its key stays marked as a removed principal's."""
    state.set(principal_key(entry["organisation"], entry["name"]), {**entry, "status": "removed", "roles": []})
    state.set(member_key(entry["key"]), {"organisation": entry["organisation"], "kind": "principal", "node": "",
                                         "principal": entry["name"], "removed": True})  # fmt: skip


def retire_principals(state: Overlay, organisation: str) -> None:
    """A removed organisation's principals never act again, even if the name returns."""
    for name in state.get(principal_names_key(organisation)) or []:
        entry = state.get(principal_key(organisation, name))
        if entry is not None and entry["status"] == "active":
            retire_principal(state, entry)


def _keys_of(org: dict[str, Any]) -> list[bytes]:
    return [*org["operators"], *(node["signing_key"] for node in org["nodes"].values())]


def _organisation_writes(org: dict[str, Any]) -> dict[str, StateValue]:
    """The organisation and the index of its keys."""
    writes: dict[str, StateValue] = {organisation_key(org["name"]): org}
    for key in org["operators"]:
        writes[member_key(key)] = {"organisation": org["name"], "kind": "operator", "node": ""}
    for name, node in org["nodes"].items():
        writes[member_key(node["signing_key"])] = {"organisation": org["name"], "kind": "node", "node": name}
    return writes


def _write_organisation(state: Overlay, org: dict[str, Any]) -> None:
    for key, value in _organisation_writes(org).items():
        state.set(key, value)


def _remove_key(state: Overlay, org: dict[str, Any], key: bytes) -> None:
    if key in org["operators"]:
        if len(org["operators"]) == 1:
            raise MembershipError(f"{key.hex()[:16]}… is the last operator key of {org['name']!r}; add another first")
        _forget_key(state, key, org["name"])
        _write_organisation(state, {**org, "operators": [k for k in org["operators"] if k != key]})
        return
    for name, node in org["nodes"].items():
        if node["signing_key"] == key:
            _forget_key(state, key, org["name"])
            _write_organisation(state, {**org, "nodes": {n: v for n, v in org["nodes"].items() if n != name}})
            return
    raise MembershipError(f"key {key.hex()[:16]}… does not belong to {org['name']!r}")


# -- methods -----------------------------------------------------------------------------------


def parse_propose(args: Mapping[str, Any]) -> Change:
    read = Arguments("membership.propose", args, ("change",))
    return parse_change(read.mapping("change", max_items=16))


def propose(call: Call, change: Change) -> None:
    if call.sender in (call.state.get(ADMINS) or []):
        apply_change(call, change)
        return
    proposer = required_organisation(call.state, call.sender, "propose a membership change")
    call.state.set(proposal_key(call.tx.hash), {"change": {"op": change.op, **change.args}, "proposer": proposer,
                                                "approvals": [proposer], "status": "open",
                                                "height": call.header.height})  # fmt: skip
    call.emit("MembershipProposed", proposal=call.tx.hash, op=change.op, proposer=proposer)
    _apply_if_approved(call, call.tx.hash)


def proposal_parser(method: str) -> Callable[[Mapping[str, Any]], bytes]:
    return lambda args: Arguments(f"membership.{method}", args, ("proposal",)).digest("proposal")


def _open_proposal(state: StateReader, proposal: bytes) -> dict[str, Any]:
    entry = state.get(proposal_key(proposal))
    if entry is None or entry["status"] != "open":
        raise MembershipError(f"no open proposal {proposal.hex()[:16]}…")
    return entry


def approve(call: Call, proposal: bytes) -> None:
    approver = required_organisation(call.state, call.sender, "approve a membership change")
    entry = _open_proposal(call.state, proposal)
    if approver in entry["approvals"]:
        raise MembershipError(f"{approver!r} already approved proposal {proposal.hex()[:16]}…")
    call.state.set(proposal_key(proposal), {**entry, "approvals": sorted([*entry["approvals"], approver])})
    call.emit("MembershipApproved", proposal=proposal, organisation=approver)
    _apply_if_approved(call, proposal)


def _apply_if_approved(call: Call, proposal: bytes) -> None:
    entry = call.state.get(proposal_key(proposal))
    members = set(organisations(call.state))
    if len(members & set(entry["approvals"])) < quorum(call.state):
        return
    change = entry["change"]
    apply_change(call, Change(change["op"], {k: v for k, v in change.items() if k != "op"}))
    call.state.set(proposal_key(proposal), {**entry, "status": "applied", "applied_height": call.header.height})


def withdraw(call: Call, proposal: bytes) -> None:
    organisation = required_organisation(call.state, call.sender, "withdraw a membership proposal")
    entry = _open_proposal(call.state, proposal)
    if entry["proposer"] != organisation:
        raise MembershipError("only the proposing organisation may withdraw a proposal")
    call.state.set(proposal_key(proposal), {**entry, "status": "withdrawn"})
    call.emit("MembershipWithdrawn", proposal=proposal)


def parse_revoke_key(args: Mapping[str, Any]) -> bytes:
    return Arguments("membership.revoke_key", args, ("key",)).key("key")


def revoke_key(call: Call, key: bytes) -> None:
    """An organisation revokes one of its own keys (operator or node) without a vote."""
    organisation = required_organisation(call.state, call.sender, "revoke a key")
    _remove_key(call.state, _organisation(call.state, organisation), key)
    call.emit("KeyRevoked", organisation=organisation, key=key)


def genesis_state(genesis: Genesis) -> dict[str, StateValue]:
    writes: dict[str, StateValue] = {}
    for org in genesis.organisations:
        nodes = {n.name: {"signing_key": n.signing_key, "encryption_key": n.encryption_key, "roles": sorted(n.roles),
                          "api": n.api, "p2p": n.p2p, "storage": n.storage} for n in org.nodes}  # fmt: skip
        encryption = org.nodes[0].encryption_key if org.nodes else None
        writes.update(_organisation_writes({"name": org.name, "operators": sorted(org.operators), "nodes": nodes,
                                            "encryption_key": encryption, "kpcpre_key": org.kpcpre_key or None}))  # fmt: skip
    writes[ORGANISATIONS] = sorted(org.name for org in genesis.organisations)
    writes[ADMINS] = sorted(genesis.admins)
    writes[QUORUM] = genesis.membership_quorum
    return writes


MEMBERSHIP = Contract(
    "membership",
    {
        "propose": Method(parse_propose, propose),
        "approve": Method(proposal_parser("approve"), approve),
        "withdraw": Method(proposal_parser("withdraw"), withdraw),
        "revoke_key": Method(parse_revoke_key, revoke_key),
    },
    genesis_state,
)
