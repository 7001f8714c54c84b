"""The ``sharing`` contract: grants and revocations of read access (Armored Twins, M1).

The owner of a twin lets another organisation read the twin's data that satisfies a
policy: it makes a KP-CPRE re-encryption key on its own side, hands it to proxy nodes,
and records the grant here — who granted what to whom, the policy, the hash of the key
the proxies must hold, which proxies, and until when. Proxies re-encrypt and store
nodes serve chunks only while the grant recorded here is active; a revocation recorded
here ends both.

A grant's policy must require the attribute ``twin:<id>``: the re-encryption key is
made from the owner organisation's key, which encrypts all its twins' data, so the
policy is what confines the grant to the twin it names.

State:
    sharing/grant/<grant id hex>   the grant (its id is the granting transaction's hash)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.abc import StateReader
from twinledger.contracts.arguments import Arguments
from twinledger.contracts.membership import organisation_key, required_organisation
from twinledger.contracts.runtime import Call, Contract, Method
from twinledger.contracts.twinstate import audited, load_twin
from twinledger.crypto.policy import Policy, PolicyError, leaves, policy_text, satisfied
from twinledger.crypto.policy import from_obj as policy_from_obj
from twinledger.crypto.policy import to_obj as policy_to_obj
from twinledger.errors import ContractError

MAX_PROXIES = 16


class SharingError(ContractError):
    code = "sharing"


def grant_key(grant: bytes) -> str:
    return f"sharing/grant/{grant.hex()}"


GRANT_PREFIX = "sharing/grant/"


def load_grant(state: StateReader, grant: bytes) -> dict[str, Any]:
    entry = state.get(grant_key(grant))
    if entry is None:
        raise SharingError(f"no grant {grant.hex()[:16]}…", code="unknown_grant")
    return entry


def grant_is_active(grant: Mapping[str, Any], now_ms: int) -> bool:
    return grant["status"] == "active" and (not grant["valid_until"] or now_ms < grant["valid_until"])


def twin_attribute(twin_id: str) -> str:
    return f"twin:{twin_id}"


def requires(policy: Policy, attribute: str) -> bool:
    """True if no set of attributes without ``attribute`` satisfies ``policy`` (policies are monotone)."""
    return not satisfied(policy, set(leaves(policy)) - {attribute})


@dataclass(frozen=True)
class GrantArgs:
    twin: str
    recipient: str
    policy: Policy
    key_hash: bytes
    proxies: tuple[str, ...]
    valid_until: int


def parse_grant(args: Mapping[str, Any]) -> GrantArgs:
    read = Arguments("sharing.grant", args, ("twin", "recipient", "policy", "key_hash", "proxies", "valid_until"))
    try:
        policy = policy_from_obj(list(read.items("policy", max_items=2)))
    except PolicyError as exc:
        raise read.error(f"'policy': {exc.message}") from None
    proxies = read.items("proxies", max_items=MAX_PROXIES)
    if not proxies or len(set(proxies)) != len(proxies) or not all(isinstance(p, str) and p.count("/") == 1 for p in proxies):
        raise read.error(f"'proxies' must list 1 to {MAX_PROXIES} distinct proxy nodes as organisation/node")
    return GrantArgs(read.identifier("twin"), read.identifier("recipient"), policy, read.digest("key_hash"),
                     tuple(sorted(proxies)), read.integer("valid_until", default=0))  # fmt: skip


def grant(call: Call, args: GrantArgs) -> None:
    """Record a grant from the twin's owner organisation to ``recipient``."""
    twin = load_twin(call.state, args.twin)
    owner = required_organisation(call.state, call.sender, "grant access to a twin's data")
    if owner != twin["owner"]:
        raise SharingError(f"only the owner of twin {args.twin} ({twin['owner']}) grants access to its data",
                           code="not_twin_owner")  # fmt: skip
    recipient = call.state.get(organisation_key(args.recipient))
    if recipient is None or args.recipient == owner:
        raise SharingError(f"the recipient must be another member organisation; {args.recipient!r} is not",
                           code="bad_recipient")  # fmt: skip
    if not recipient.get("kpcpre_key"):
        raise SharingError(f"organisation {args.recipient} has no sharing (KP-CPRE) key", code="no_sharing_key")
    if not requires(args.policy, twin_attribute(args.twin)):
        raise SharingError(f"the policy must require {twin_attribute(args.twin)}: "
                           f"'{policy_text(args.policy)}' would cover other twins' data", code="policy_not_confined")  # fmt: skip
    for proxy in args.proxies:
        organisation, node = proxy.split("/")
        entry = call.state.get(organisation_key(organisation))
        if entry is None or "proxy" not in entry["nodes"].get(node, {}).get("roles", []):
            raise SharingError(f"{proxy} is not a proxy node of a member organisation", code="not_a_proxy")
    if args.valid_until and args.valid_until <= call.header.timestamp:
        raise SharingError("'valid_until' lies in the past", code="bad_validity")
    grant_id = call.tx.hash
    call.state.set(grant_key(grant_id), {
        "id": grant_id, "twin": args.twin, "owner": owner, "grantor": call.sender, "recipient": args.recipient,
        "recipient_key": recipient["kpcpre_key"], "policy": policy_to_obj(args.policy),
        "policy_text": policy_text(args.policy), "key_hash": args.key_hash, "proxies": list(args.proxies),
        "valid_until": args.valid_until, "status": "active", "granted": {"height": call.header.height,
                                                                         "timestamp": call.header.timestamp},
        "revoked": None,
    })  # fmt: skip
    call.emit("AccessGranted", twin=args.twin, grant=grant_id, recipient=args.recipient, policy=policy_text(args.policy))


def parse_revoke(args: Mapping[str, Any]) -> bytes:
    return Arguments("sharing.revoke", args, ("grant",)).digest("grant")


def revoke(call: Call, grant_id: bytes) -> None:
    """End a grant: proxies delete its key and refuse, store nodes stop serving its data."""
    entry = load_grant(call.state, grant_id)
    organisation = required_organisation(call.state, call.sender, "revoke a grant")
    if organisation != entry["owner"]:
        raise SharingError(f"only {entry['owner']}, which granted it, revokes grant {grant_id.hex()[:16]}…",
                           code="not_grant_owner")  # fmt: skip
    if entry["status"] != "active":
        raise SharingError(f"grant {grant_id.hex()[:16]}… is already revoked", code="already_revoked")
    revoked = {"height": call.header.height, "timestamp": call.header.timestamp}
    call.state.set(grant_key(grant_id), {**entry, "status": "revoked", "revoked": revoked})
    call.emit("AccessRevoked", twin=entry["twin"], grant=grant_id, recipient=entry["recipient"])


SHARING = Contract(
    "sharing",
    {
        "grant": Method(parse_grant, audited(grant)),
        "revoke": Method(parse_revoke, audited(revoke)),
    },
)
