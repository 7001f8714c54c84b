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

Revocation holds against a recipient that runs or bribes a proxy (docs/sharing.md): a
twin has an *access generation*, raised whenever one of its grants ends (revoked,
expired, its device retired, its recipient removed from the consortium). Every capsule carries ``generation:N`` for the generation
its key was made in, and a grant holds one re-encryption key per generation, each for
its policy and that generation. Whatever a revoked recipient extracts from its keys
covers generations up to its revocation only; the owner re-keys the grants still active
for each new generation (in the revoking transaction, or with ``rekey``). The contract
records the hash of each key; the proxies check the keys against them. A grant's proxies
never belong to its recipient's organisation.

A grant's recipient is another member organisation, or one of the twin's *devices*
(``device:<key hex>``): the owner registers a device with its Ed25519 key (which gets
the device-agent role) and its own KP-CPRE key, so a device reads what its grants cover
without ever holding the owner's keys. Retiring a device (it broke or was stolen, M3)
takes its role and ends its grants; its replacement is registered and granted anew and
recovers the twin's state by reading it back through a proxy.

State:
    sharing/grant/<grant id hex>            the grant (its id is the granting transaction's hash);
                                            ``keys[g]`` is the hash of its key for generation g
    sharing/generation/<twin>               the twin's access generation (absent: 0)
    sharing/expiring/<minute>               [valid_until, grant id] of active grants ending in
                                            that minute (since the epoch, 12 digits), soonest
                                            first: the first block past an end ends the grant
    sharing/expiry-cursor                   the first minute ``begin_block`` has not finished
    sharing/recipient/<organisation>        ids of the active grants to that organisation: when
                                            it leaves the consortium, ``begin_block`` ends them
    sharing/device/<twin>/<device key hex>  a device of the twin
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.abc import StateReader
from twinledger.contracts.arguments import Arguments
from twinledger.contracts.authorization import authorize, remove_role, set_role
from twinledger.contracts.membership import DEPARTURES, organisation_key, required_organisation
from twinledger.contracts.runtime import Call, Contract, Method, Overlay
from twinledger.contracts.twinstate import audited, load_twin, retired_key, revoked_token_key, tokens_key
from twinledger.core.attributes import GENERATION, generation_attribute, twin_attribute
from twinledger.core.types import BlockHeader
from twinledger.crypto import kpcpre
from twinledger.crypto.policy import Leaf, Policy, PolicyError, all_of, leaves, policy_text, satisfied
from twinledger.crypto.policy import from_obj as policy_from_obj
from twinledger.crypto.policy import to_obj as policy_to_obj
from twinledger.errors import ContractError, TwinledgerError

MAX_PROXIES = 16
MAX_GENERATIONS = 1024
"""A grant holds a key per generation of its twin: a twin's grants can end this often."""
MAX_REKEYS = 256
"""Grants one transaction re-keys."""
EXPIRY_MINUTE_MS = 60_000
MAX_ENDING_PER_MINUTE = 1024
"""Grants whose ends fall in one minute: each bucket is read and written whole."""
MAX_ENDED_PER_BLOCK = 256
"""Grants one block ends at most; the rest, the blocks after (a block's work stays bounded)."""
MAX_MINUTES_PER_BLOCK = 10_080
"""Minutes one block looks through at most (a week: after a long pause, the next blocks go on)."""
EXPIRY_CURSOR = "sharing/expiry-cursor"


def recipient_grants_key(organisation: str) -> str:
    return f"sharing/recipient/{organisation}"


def expiring_key(minute: int) -> str:
    return f"sharing/expiring/{minute:012d}"


class SharingError(ContractError):
    code = "sharing"


def grant_key(grant: bytes) -> str:
    return f"sharing/grant/{grant.hex()}"


def device_key(twin_id: str, key: bytes) -> str:
    return f"sharing/device/{twin_id}/{key.hex()}"


DEVICE_PREFIX = "sharing/device/"
DEVICE_RECIPIENT = "device:"


GRANT_PREFIX = "sharing/grant/"


def generation_key(twin_id: str) -> str:
    return f"sharing/generation/{twin_id}"


def twin_generation(state: StateReader, twin_id: str) -> int:
    """The twin's access generation: how many of its grants have ended."""
    return int(state.get(generation_key(twin_id)) or 0)


def load_grant(state: StateReader, grant: bytes) -> dict[str, Any]:
    entry = state.get(grant_key(grant))
    if entry is None:
        raise SharingError(f"no grant {grant.hex()[:16]}…", code="unknown_grant")
    return entry


def grant_is_active(grant: Mapping[str, Any], now_ms: int) -> bool:
    return grant["status"] == "active" and (not grant["valid_until"] or now_ms < grant["valid_until"])


def generation_policy(policy: Policy, generation: int) -> Policy:
    """The policy of a grant's key for one generation: the grant's, and ``generation:N``."""
    return all_of([policy, Leaf(generation_attribute(generation))])


def requires(policy: Policy, attribute: str) -> bool:
    """True if no set of attributes without ``attribute`` satisfies ``policy`` (policies are monotone)."""
    return not satisfied(policy, set(leaves(policy)) - {attribute})


@dataclass(frozen=True)
class GrantArgs:
    twin: str
    recipient: str
    policy: Policy
    keys: tuple[bytes, ...]
    """Hashes of the re-encryption keys, one per generation of the twin so far."""
    proxies: tuple[str, ...]
    valid_until: int


def _digests(read: Arguments, name: str, values: Any) -> tuple[bytes, ...]:
    if not values or not all(isinstance(v, bytes) and len(v) == 32 for v in values):
        raise read.error(f"{name!r} must list 32-byte key hashes")
    return tuple(values)


def parse_grant(args: Mapping[str, Any]) -> GrantArgs:
    read = Arguments("sharing.grant", args, ("twin", "recipient", "policy", "keys", "proxies", "valid_until"))
    try:
        policy = policy_from_obj(list(read.items("policy", max_items=2)))
    except PolicyError as exc:
        raise read.error(f"'policy': {exc.message}") from None
    if any(leaf.startswith(GENERATION) for leaf in leaves(policy)):
        raise read.error(f"'policy' may not name {GENERATION}N: each of the grant's keys adds its own generation")
    proxies = read.items("proxies", max_items=MAX_PROXIES)
    if not proxies or len(set(proxies)) != len(proxies) or not all(isinstance(p, str) and p.count("/") == 1 for p in proxies):
        raise read.error(f"'proxies' must list 1 to {MAX_PROXIES} distinct proxy nodes as organisation/node")
    keys = _digests(read, "keys", read.items("keys", max_items=MAX_GENERATIONS))
    return GrantArgs(read.identifier("twin"), read.identifier("recipient"), policy, keys,
                     tuple(sorted(proxies)), read.integer("valid_until", default=0))  # fmt: skip


def grant(call: Call, args: GrantArgs) -> None:
    """Record a grant from the twin's owner organisation to ``recipient``."""
    twin = load_twin(call.state, args.twin)
    owner = required_organisation(call.state, call.sender, "grant access to a twin's data")
    if owner != twin["owner"]:
        raise SharingError(f"only the owner of twin {args.twin} ({twin['owner']}) grants access to its data",
                           code="not_twin_owner")  # fmt: skip
    recipient_key = _recipient_key(call, args.twin, args.recipient, owner)
    if not requires(args.policy, twin_attribute(args.twin)):
        raise SharingError(f"the policy must require {twin_attribute(args.twin)}: "
                           f"'{policy_text(args.policy)}' would cover other twins' data", code="policy_not_confined")  # fmt: skip
    for proxy in args.proxies:
        organisation, node = proxy.split("/")
        entry = call.state.get(organisation_key(organisation))
        if entry is None or "proxy" not in entry["nodes"].get(node, {}).get("roles", []):
            raise SharingError(f"{proxy} is not a proxy node of a member organisation", code="not_a_proxy")
        if organisation == args.recipient:
            raise SharingError(f"{proxy} belongs to the recipient {args.recipient}: a recipient holding its own "
                               "re-encryption key would keep reading after a revocation", code="proxy_of_recipient")  # fmt: skip
    if args.valid_until and args.valid_until <= call.header.timestamp:
        raise SharingError("'valid_until' lies in the past", code="bad_validity")
    generation = twin_generation(call.state, args.twin)
    if len(args.keys) != generation + 1:
        raise SharingError(f"twin {args.twin} is in access generation {generation}: the grant needs {generation + 1} "
                           f"key(s), one per generation, not {len(args.keys)}", code="wrong_generation")  # fmt: skip
    grant_id = call.tx.hash
    call.state.set(grant_key(grant_id), {
        "id": grant_id, "twin": args.twin, "owner": owner, "grantor": call.sender, "recipient": args.recipient,
        "recipient_key": recipient_key, "policy": policy_to_obj(args.policy),
        "policy_text": policy_text(args.policy), "keys": list(args.keys), "proxies": list(args.proxies),
        "valid_until": args.valid_until, "status": "active", "granted": {"height": call.header.height,
                                                                         "timestamp": call.header.timestamp},
        "revoked": None,
    })  # fmt: skip
    if not args.recipient.startswith(DEVICE_RECIPIENT):
        listed = call.state.get(recipient_grants_key(args.recipient)) or []
        call.state.set(recipient_grants_key(args.recipient), [*listed, grant_id])
    if args.valid_until:
        minute = args.valid_until // EXPIRY_MINUTE_MS
        ending = call.state.get(expiring_key(minute)) or []
        if len(ending) >= MAX_ENDING_PER_MINUTE:
            raise SharingError(f"{MAX_ENDING_PER_MINUTE} grants already end in that minute; choose another end",
                               code="bad_validity")  # fmt: skip
        call.state.set(expiring_key(minute), sorted([*ending, [args.valid_until, grant_id]]))
        cursor = call.state.get(EXPIRY_CURSOR)
        if cursor is None or minute < cursor:
            call.state.set(EXPIRY_CURSOR, minute)
    if args.recipient.startswith(DEVICE_RECIPIENT):
        key = device_key(args.twin, bytes.fromhex(args.recipient.removeprefix(DEVICE_RECIPIENT)))
        device = call.state.get(key)
        call.state.set(key, {**device, "grants": [*device["grants"], grant_id]})
    call.emit("AccessGranted", twin=args.twin, grant=grant_id, recipient=args.recipient, policy=policy_text(args.policy))


def _recipient_key(call: Call, twin_id: str, recipient: str, owner: str) -> bytes:
    """The KP-CPRE public key of a grant's recipient: another member organisation, or an
    active device of the twin."""
    if recipient.startswith(DEVICE_RECIPIENT):
        try:
            key = bytes.fromhex(recipient.removeprefix(DEVICE_RECIPIENT))
        except ValueError:
            key = b""
        device = call.state.get(device_key(twin_id, key)) if len(key) == 32 else None
        if device is None or device["status"] != "active":
            raise SharingError(f"{recipient[:30]} is no active device of twin {twin_id}", code="bad_recipient")
        return device["sharing_key"]
    entry = call.state.get(organisation_key(recipient))
    if entry is None or recipient == owner:
        raise SharingError(f"the recipient must be another member organisation or a device of the twin; {recipient!r} "
                           "is neither", code="bad_recipient")  # fmt: skip
    if not entry.get("kpcpre_key"):
        raise SharingError(f"organisation {recipient} has no sharing (KP-CPRE) key", code="no_sharing_key")
    return entry["kpcpre_key"]


Rekeys = tuple[tuple[bytes, tuple[bytes, ...]], ...]
"""(grant id, hashes of its keys for the generations it lacks, up to the current one)."""


def _rekeys(read: Arguments) -> Rekeys:
    pairs = read.items("rekeys", max_items=MAX_REKEYS, default=())
    if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[1], list) for p in pairs):
        raise read.error("'rekeys' must list [grant id, [key hash, …]] pairs")
    grants = _digests(read, "rekeys", [p[0] for p in pairs]) if pairs else ()
    if len(set(grants)) != len(grants):
        raise read.error("'rekeys' names a grant twice")
    return tuple((grant, _digests(read, "rekeys", p[1][:MAX_GENERATIONS])) for grant, p in zip(grants, pairs, strict=True))


@dataclass(frozen=True)
class RevokeArgs:
    grant: bytes
    rekeys: Rekeys
    """Grants of the twin still active, with their keys up to the generation the revocation starts."""


def parse_revoke(args: Mapping[str, Any]) -> RevokeArgs:
    read = Arguments("sharing.revoke", args, ("grant", "rekeys"))
    return RevokeArgs(read.digest("grant"), _rekeys(read))


def revoke(call: Call, args: RevokeArgs) -> None:
    """End a grant: proxies delete its keys and refuse, store nodes stop serving its data,
    and the twin starts a new generation, which the grants listed in ``rekeys`` keep reading."""
    entry = load_grant(call.state, args.grant)
    organisation = required_organisation(call.state, call.sender, "revoke a grant")
    if organisation != entry["owner"]:
        raise SharingError(f"only {entry['owner']}, which granted it, revokes grant {args.grant.hex()[:16]}…",
                           code="not_grant_owner")  # fmt: skip
    if entry["status"] != "active":
        raise SharingError(f"grant {args.grant.hex()[:16]}… is already {entry['status']}", code="already_revoked")
    end_grant(call.state, call.header, entry, "revoked")
    call.emit("AccessRevoked", twin=entry["twin"], grant=args.grant, recipient=entry["recipient"])
    _add_keys(call, entry["twin"], args.rekeys)


def end_grant(state: Overlay, header: BlockHeader, entry: Mapping[str, Any], status: str) -> None:
    """Mark a grant ended and start a new generation of its twin."""
    ended = {"height": header.height, "timestamp": header.timestamp}
    state.set(grant_key(entry["id"]), {**entry, "status": status, "revoked": ended})
    state.set(generation_key(entry["twin"]), twin_generation(state, entry["twin"]) + 1)
    if entry["valid_until"]:
        key = expiring_key(entry["valid_until"] // EXPIRY_MINUTE_MS)
        state.set(key, [e for e in state.get(key) or [] if e[1] != entry["id"]] or None)
    if not entry["recipient"].startswith(DEVICE_RECIPIENT):
        key = recipient_grants_key(entry["recipient"])
        state.set(key, [g for g in state.get(key) or [] if g != entry["id"]] or None)


@dataclass(frozen=True)
class RekeyArgs:
    twin: str
    rekeys: Rekeys


def parse_rekey(args: Mapping[str, Any]) -> RekeyArgs:
    read = Arguments("sharing.rekey", args, ("twin", "rekeys"))
    rekeys = _rekeys(read)
    if not rekeys:
        raise read.error("'rekeys' lists no grant")
    return RekeyArgs(read.identifier("twin"), rekeys)


def rekey(call: Call, args: RekeyArgs) -> None:
    """The owner gives active grants their keys for the twin's current generation (after
    a grant expired, or when the revoking transaction did not re-key them all)."""
    twin = load_twin(call.state, args.twin)
    if required_organisation(call.state, call.sender, "re-key grants") != twin["owner"]:
        raise SharingError(f"only the owner of twin {args.twin} ({twin['owner']}) re-keys its grants",
                           code="not_twin_owner")  # fmt: skip
    _add_keys(call, args.twin, args.rekeys)


def _add_keys(call: Call, twin_id: str, rekeys: Rekeys) -> None:
    """Append keys to active grants of the twin, so each holds one for every generation up
    to the current one. A grant that ended, or whose keys no longer match the generation
    (another grant ended in this very block), is passed over, not refused: a revocation
    must never fail for its re-keying; the owner's session re-keys what is left."""
    generation = twin_generation(call.state, twin_id)
    if rekeys and generation >= MAX_GENERATIONS:
        raise SharingError(f"twin {twin_id} has had {MAX_GENERATIONS} generations; its grants cannot be re-keyed",
                           code="too_many_generations")  # fmt: skip
    for grant_id, hashes in rekeys:
        entry = load_grant(call.state, grant_id)
        if entry["twin"] != twin_id:
            raise SharingError(f"grant {grant_id.hex()[:16]}… is no grant of twin {twin_id}", code="not_rekeyable")
        if entry["status"] != "active" or not _recipient_present(call.state, entry):
            continue  # it ended since the owner looked (or its recipient left): nothing to re-key
        if len(entry["keys"]) + len(hashes) != generation + 1:
            continue
        call.state.set(grant_key(grant_id), {**entry, "keys": [*entry["keys"], *hashes]})
        call.emit("AccessRekeyed", twin=twin_id, grant=grant_id, generation=generation)


def _recipient_present(state: StateReader, grant: Mapping[str, Any]) -> bool:
    """Whether the grant's recipient is still there to read: a device, or a member."""
    return grant["recipient"].startswith(DEVICE_RECIPIENT) or state.get(organisation_key(grant["recipient"])) is not None


def begin_block(state: Overlay, header: BlockHeader) -> None:
    """End the grants to organisations that left the consortium, and those whose time is
    up (the first block past a grant's end ends it), so each twin's next data is under a
    generation their recipients have no key for. At most MAX_ENDED_PER_BLOCK a block."""
    ended = _end_departed(state, header)
    start = state.get(EXPIRY_CURSOR)
    if start is None:
        return
    now, cursor = header.timestamp // EXPIRY_MINUTE_MS, start
    for minute in range(start, min(now, start + MAX_MINUTES_PER_BLOCK) + 1):
        due = [e for e in state.get(expiring_key(minute)) or [] if e[0] <= header.timestamp]
        for _, grant_id in due[: MAX_ENDED_PER_BLOCK - ended]:
            end_grant(state, header, load_grant(state, grant_id), "expired")  # it leaves the bucket
            ended += 1
        if ended >= MAX_ENDED_PER_BLOCK or minute == now:
            break
        cursor = minute + 1  # every end in a past minute was due: it is empty now
    if cursor != start:
        state.set(EXPIRY_CURSOR, cursor)


def _end_departed(state: Overlay, header: BlockHeader) -> int:
    """End the grants to organisations removed from the consortium; how many ended."""
    departed = state.get(DEPARTURES) or []
    ended = 0
    while departed and ended < MAX_ENDED_PER_BLOCK:
        grants = state.get(recipient_grants_key(departed[0])) or []
        batch = grants[: MAX_ENDED_PER_BLOCK - ended]
        for grant_id in batch:
            end_grant(state, header, load_grant(state, grant_id), "revoked")  # it leaves the list
        ended += len(batch)
        if len(batch) < len(grants):
            break
        departed = departed[1:]
    if departed != (state.get(DEPARTURES) or []):
        state.set(DEPARTURES, departed or None)
    return ended


@dataclass(frozen=True)
class DeviceArgs:
    twin: str
    name: str
    key: bytes
    sharing_key: bytes


def parse_add_device(args: Mapping[str, Any]) -> DeviceArgs:
    read = Arguments("sharing.add_device", args, ("twin", "name", "key", "sharing_key"))
    sharing_key = read.blob("sharing_key", max_size=96, size=96)
    try:
        kpcpre.PublicKey.from_bytes(sharing_key)
    except TwinledgerError:
        raise read.error("'sharing_key' is not a KP-CPRE public key (a point of G2)") from None
    return DeviceArgs(read.identifier("twin"), read.identifier("name"), read.key("key"), sharing_key)


def add_device(call: Call, args: DeviceArgs) -> None:
    """Register a device of the twin (Armored Twins phase 1): its key gets the device-agent
    role; grants to ``device:<key hex>`` reach its KP-CPRE key."""
    twin = load_twin(call.state, args.twin)
    authorize(call, twin, "role.grant")
    if call.state.get(device_key(args.twin, args.key)) is not None:
        raise SharingError(f"key {args.key.hex()[:16]}… is already a device of twin {args.twin}", code="duplicate_device")
    call.state.set(device_key(args.twin, args.key), {
        "twin": args.twin, "name": args.name, "key": args.key, "sharing_key": args.sharing_key, "status": "active",
        "grants": [], "added": {"height": call.header.height, "timestamp": call.header.timestamp}, "retired": None})  # fmt: skip
    set_role(call, args.twin, f"key:{args.key.hex()}", "device-agent")
    call.emit("DeviceAdded", twin=args.twin, name=args.name, key=args.key)


@dataclass(frozen=True)
class DeviceRef:
    twin: str
    key: bytes


def parse_retire_device(args: Mapping[str, Any]) -> DeviceRef:
    read = Arguments("sharing.retire_device", args, ("twin", "key"))
    return DeviceRef(read.identifier("twin"), read.key("key"))


def retire_device(call: Call, ref: DeviceRef) -> None:
    """A device broke or was lost (M3): its role is taken and its grants end, so its keys
    open and change nothing from now on."""
    twin = load_twin(call.state, ref.twin)
    authorize(call, twin, "role.revoke")
    device = call.state.get(device_key(ref.twin, ref.key))
    if device is None or device["status"] != "active":
        raise SharingError(f"key {ref.key.hex()[:16]}… is no active device of twin {ref.twin}", code="unknown_device")
    revoked = {"height": call.header.height, "timestamp": call.header.timestamp}
    for grant_id in device["grants"]:
        entry = load_grant(call.state, grant_id)
        if entry["status"] == "active":
            end_grant(call.state, call.header, entry, "revoked")
            call.emit("AccessRevoked", twin=ref.twin, grant=grant_id, recipient=entry["recipient"])
    call.state.set(device_key(ref.twin, ref.key), {**device, "status": "retired", "retired": revoked})
    remove_role(call, ref.twin, f"key:{ref.key.hex()}", "device-agent")
    for token in (call.state.get(tokens_key(ref.twin, ref.key)) or {}).values():  # nor any write token it held
        call.state.set(revoked_token_key(ref.twin, token["id"]), {"revoked": call.header.height})
    call.state.set(tokens_key(ref.twin, ref.key), None)
    call.state.set(retired_key(ref.twin, ref.key), {"retired": call.header.height})
    call.emit("DeviceRetired", twin=ref.twin, name=device["name"], key=ref.key)


SHARING = Contract(
    "sharing",
    {
        "grant": Method(parse_grant, audited(grant)),
        "revoke": Method(parse_revoke, audited(revoke)),
        "rekey": Method(parse_rekey, audited(rekey)),
        "add_device": Method(parse_add_device, audited(add_device)),
        "retire_device": Method(parse_retire_device, audited(retire_device)),
    },
    begin_block=begin_block,
)
