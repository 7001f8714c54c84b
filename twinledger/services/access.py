"""Who reads what: readers of an item, read grants through proxies (KP-CPRE), revocation
with new feed epochs, and reading as a reader or through a grant.

The owner's session makes a grant's re-encryption key from the organisation's sharing
key (it never leaves the owner's machine otherwise), records the grant on chain, then
hands the key to the proxy nodes. A reader's ``unlock`` opens an item's data key: as a
reader the item's ACL names, else through a proxy under an active grant covering it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twinledger.config import passphrase
from twinledger.contracts import calls
from twinledger.contracts.sharing import DEVICE_RECIPIENT, MAX_REKEYS
from twinledger.core.times import LAST_SECOND
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey, read_secret_file
from twinledger.crypto.policy import parse_policy, policy_text
from twinledger.crypto.policy import to_obj as policy_to_obj
from twinledger.errors import BadRequest, TwinledgerError
from twinledger.services import coverage
from twinledger.services.session import Outcome, Session, UnknownOrganisation
from twinledger.sharing.grants import covering_grant, hand_over, key_hash, make_grant_keys, rekeyed, through_proxy
from twinledger.store.documents import Unlock, as_reader
from twinledger.store.documents import change_readers as store_change_readers
from twinledger.store.feeds import parse_feed_reference, rotate_feed
from twinledger.store.items import AccessDenied, ItemAcl

T = TypeVar("T")
MIN_PREFIX = 8
"""Fewest hex digits that name a grant, document or request by prefix."""
LAST_MS = LAST_SECOND * 1000
REKEY_ROUNDS = 64
"""Re-key transactions one call sends at most (MAX_REKEYS grants each)."""


# -- devices' keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKeys:
    """What a twin's device holds: its Ed25519 signing key and its KP-CPRE key."""

    signing: SigningKey
    sharing: kpcpre.SecretKey

    @property
    def recipient(self) -> str:
        return f"{DEVICE_RECIPIENT}{self.signing.public.hex()}"


def device_keys(directory: Path) -> DeviceKeys:
    """The keys ``device add`` wrote into ``directory``."""
    return DeviceKeys(SigningKey(read_secret_file(directory / "device.key", "ed25519", passphrase())),
                      kpcpre.SecretKey.from_bytes(read_secret_file(directory / "device-sharing.key", "kpcpre",
                                                                   passphrase())))  # fmt: skip


# -- readers ------------------------------------------------------------------------------------


async def recipients(session: Session, twin: dict[str, Any] | None, chosen: Sequence[str]) -> dict[str, bytes]:
    """Reader organisations and their X25519 keys: ``chosen``, or every organisation with a
    role on ``twin``; the session's organisation always reads."""
    organisations = {org["name"]: org for org in (await session.members())["organisations"]}
    roles = twin["roles"] if twin is not None else {}
    names = set(chosen) if chosen else {s.removeprefix("org:") for s in roles if s.startswith("org:")}
    names.add(session.organisation)
    unknown = sorted(names - set(organisations))
    if unknown:
        raise UnknownOrganisation(f"no member organisation is named {', '.join(unknown)}")
    keyless = sorted(name for name in names if not organisations[name].get("encryption_key"))
    if keyless:
        raise TwinledgerError(f"organisation(s) {', '.join(keyless)} have no encryption key", code="no_encryption_key")
    return {name: bytes.fromhex(organisations[name]["encryption_key"]) for name in sorted(names)}


async def change_readers(session: Session, items: Sequence[bytes], add: Sequence[str],
                         remove: Sequence[str]) -> list[ItemAcl]:  # fmt: skip
    """Publish new owner-signed ACL versions of ``items`` with readers added and removed."""
    added = {name: key for name, key in (await recipients(session, None, add)).items() if name in add} if add else {}
    store = await session.store()
    return [await store_change_readers(store, session.signer, session.organisation, session.encryption_key, item,
                                       added, list(remove)) for item in items]  # fmt: skip


def unlock(session: Session, device: DeviceKeys | None = None) -> Unlock:
    """How the session's organisation (or one of its twin's devices) opens an item's data
    key: as a reader the ACL names, else through a proxy under an active covering grant."""
    recipient = device.recipient if device is not None else session.organisation

    async def open_key(acl: ItemAcl, commitment: bytes | None) -> bytes:
        if device is None and acl.allows(session.organisation):
            return await as_reader(session.organisation, session.encryption_key)(acl, commitment)
        listing = await session.get("/v1/grants", recipient=recipient, owner=acl.owner_organisation)
        chosen = covering_grant(listing["grants"], acl, recipient, int(time.time() * 1000))
        if chosen is None:
            who = "this device" if device is not None else f"{session.organisation} is no reader of it and"
            raise AccessDenied(f"item {acl.item.hex()[:16]}…: {who} holds no active grant of {acl.owner_organisation} "
                               "that covers it")  # fmt: skip
        secret = device.sharing if device is not None else session.sharing_key
        read = through_proxy(await session.store(), chosen, secret, listing["height"],
                             device.signing if device is not None else None)  # fmt: skip
        return await read(acl, commitment)

    return open_key


# -- read grants --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantMade:
    grant: str
    twin: str
    recipient: str
    policy: str
    valid_until: int
    proxies: dict[str, str]
    block: int
    covered: list[str] = field(default_factory=list)
    """The items it covered when made (document title and version, or feed component)."""
    unmatched: list[str] = field(default_factory=list)
    """Its attributes no item carried then: they cover data still to come."""


def default_proxies(organisation: dict[str, Any]) -> list[str]:
    """Every proxy node of the organisation, as ORG/NODE."""
    name = organisation["name"]
    proxies = [f"{name}/{node}" for node, entry in sorted(organisation["nodes"].items()) if "proxy" in entry["roles"]]
    if not proxies:
        raise TwinledgerError(f"{name} has no proxy node; name one with --proxy ORG/NODE", code="no_proxy")
    return proxies


async def grant(session: Session, twin_ref: str, to: str, policy: str, valid_until: int = 0,
                proxies: Sequence[str] = (), declared: Sequence[str] = ()) -> GrantMade:  # fmt: skip
    """Let ``to`` (an organisation, or ``device:NAME`` of the twin) read the twin's data that
    satisfies ``policy`` until ``valid_until`` (ms since the epoch; 0: no end).

    The policy is confined to the twin (twin:ID is added if it does not require it); its
    attributes use the twin's vocabulary, or keys ``declared`` for data still to come."""
    asked = parse_policy(policy)
    if valid_until and valid_until <= time.time() * 1000:
        raise BadRequest("the grant's end lies in the past", code="bad_time")
    if valid_until >= LAST_MS:
        raise BadRequest(f"the grant's end {valid_until} is past 2242: give it in milliseconds since the epoch",
                         code="bad_time")  # fmt: skip
    covers = await coverage.preview(session, twin_ref, policy, declared)
    twin = await session.twin(twin_ref)
    if to.startswith(DEVICE_RECIPIENT):
        from twinledger.services.devices import active_device

        device = active_device(twin, to.removeprefix(DEVICE_RECIPIENT))
        recipient, public = f"{DEVICE_RECIPIENT}{device['key']}", device["sharing_key"]
    else:
        recipient, public = to, (await session.member(to)).get("kpcpre_key")
        if not public:
            raise TwinledgerError(f"{to} has no sharing (KP-CPRE) key on chain", code="no_sharing_key")
    chosen = sorted(proxies) or default_proxies(await session.member(session.organisation))
    await rekey(session, twin["id"])  # a grant is made in the twin's generation: no grant may lag behind it
    twin = await session.twin(twin["id"])
    made = make_grant_keys(session.sharing_key, twin["id"], asked, kpcpre.PublicKey.from_bytes(bytes.fromhex(public)),
                           twin["generation"])  # fmt: skip
    outcome = await session.transact(calls.grant_read(twin["id"], recipient, policy_to_obj(made.policy), made.key_hashes,
                                                      chosen, valid_until))  # fmt: skip
    held = await hand_over(await session.store(), chosen, outcome.tx_hash, dict(enumerate(made.keys)), outcome.height)
    return GrantMade(outcome.tx_hash.hex(), twin["id"], to, policy_text(made.policy), valid_until, held, outcome.height,
                     [item.name for item in covers.covered], covers.unmatched)  # fmt: skip


async def grants_of(session: Session, twin_ref: str | None = None) -> dict[str, Any]:
    """Grants of read access, newest first (of one twin, or all)."""
    twin = (await session.twin(twin_ref))["id"] if twin_ref else None
    return dict(await session.get("/v1/grants", twin=twin))


def by_id(items: Iterable[T], given: str, id_of: Callable[[T], str], what: str) -> T:
    """The one item whose id is ``given`` or starts with it — the one rule for ids in every
    command: hex in either case, a prefix of at least MIN_PREFIX digits, never ambiguous."""
    wanted = given.strip().lower()
    listed = list(items)
    exact = [item for item in listed if id_of(item) == wanted]
    if exact:
        return exact[0]
    if len(wanted) < MIN_PREFIX:
        raise BadRequest(f"{given[:64]!r} is too short for a {what} id: give at least {MIN_PREFIX} of its digits")
    matches = [item for item in listed if id_of(item).startswith(wanted)]
    if len(matches) != 1:
        problem = f"starts {len(matches)} {what} ids" if matches else f"is no {what} id, nor the start of one"
        raise TwinledgerError(f"{given[:64]!r} {problem}", code=f"unknown_{what.replace(' ', '_')}")
    return matches[0]


async def find_grant(session: Session, prefix: str) -> dict[str, Any]:
    grants = (await session.get("/v1/grants"))["grants"]
    return dict(by_id(grants, prefix, lambda g: str(g["id"]), "grant"))


@dataclass(frozen=True)
class Revocation:
    grant: dict[str, Any]
    block: int
    generation: int
    """The twin's access generation once the revocation is done."""
    rekeyed: dict[str, dict[str, str]] = field(default_factory=dict)
    """Grants still active, re-keyed for the new generation: grant id → proxy → "held" or why not."""
    rotated: list[str] = field(default_factory=list)
    """Components whose feeds have a new data key."""
    not_rotated: dict[str, str] = field(default_factory=dict)
    """Components whose feed could not be given a new key, with why."""
    left_to_writers: list[str] = field(default_factory=list)
    """Components whose feed another key owns (a device agent's): its writer gives it a new
    key before it appends again."""


async def revoke(session: Session, grant_prefix: str, keys: Sequence[SigningKey] = ()) -> Revocation:
    """End a grant and start a new access generation of its twin: proxies delete the
    grant's keys and store nodes stop serving its data; the twin's other active grants get
    keys for the new generation in the same transaction; the twin's feeds the session's key
    or one of ``keys`` owns get a new data key at once (the others', device agents', get
    theirs from their writers before they append again). Nothing written from now on is
    under a key the revoked party — with any proxy's help — can open."""
    chosen = await find_grant(session, grant_prefix)
    if chosen["status"] != "active":
        raise TwinledgerError(f"grant {chosen['id'][:16]}… is already {chosen['status']}", code="already_revoked")
    twin_id = chosen["twin"]
    await rekey(session, twin_id)
    generation = (await session.twin(twin_id))["generation"] + 1
    others = [g for g in await active_grants(session, twin_id) if g["id"] != chosen["id"]][:MAX_REKEYS]
    new_keys = _keys_up_to(session, others, generation)
    outcome = await session.transact(calls.revoke_read(bytes.fromhex(chosen["id"]), _hashes(new_keys)))
    handed = await _hand_over_applied(session, others, new_keys, outcome)
    handed.update(await rekey(session, twin_id))  # the rest (more than one transaction holds; a race with an expiry)
    rotated, failed, left = await rotate_twin_feeds(session, twin_id, keys)
    return Revocation(chosen, outcome.height, (await session.twin(twin_id))["generation"], handed, rotated, failed, left)


async def active_grants(session: Session, twin_id: str) -> list[dict[str, Any]]:
    return [g for g in (await session.get("/v1/grants", twin=twin_id))["grants"] if g["status"] == "active"]


async def rekey(session: Session, twin_ref: str) -> dict[str, dict[str, str]]:
    """Give every active grant of the twin its keys up to the twin's current generation
    (needed after a grant expired, or when a revocation could not re-key them all); grant
    id → proxy → "held" or why not. Nothing to do is nothing done."""
    twin_id = (await session.twin(twin_ref))["id"]
    handed: dict[str, dict[str, str]] = {}
    for _ in range(REKEY_ROUNDS):
        generation = (await session.twin(twin_id))["generation"]
        lagging = [g for g in await active_grants(session, twin_id) if len(g["keys"]) <= generation][:MAX_REKEYS]
        if not lagging:
            break
        new_keys = _keys_up_to(session, lagging, generation)
        outcome = await session.transact(calls.rekey_read(twin_id, _hashes(new_keys)))
        handed.update(await _hand_over_applied(session, lagging, new_keys, outcome))
    return handed


def _keys_up_to(session: Session, grants: Sequence[dict[str, Any]], generation: int) -> dict[bytes, dict[int, bytes]]:
    """Each grant's keys for the generations it lacks, up to ``generation``: grant id → generation → key."""
    return {bytes.fromhex(g["id"]): {n: rekeyed(session.sharing_key, g, n) for n in range(len(g["keys"]), generation + 1)}
            for g in grants}  # fmt: skip


def _hashes(keys: dict[bytes, dict[int, bytes]]) -> dict[bytes, list[bytes]]:
    return {grant: [key_hash(key) for _, key in sorted(by_generation.items())] for grant, by_generation in keys.items()}


async def _hand_over_applied(session: Session, grants: Sequence[dict[str, Any]], keys: dict[bytes, dict[int, bytes]],
                             outcome: Outcome) -> dict[str, dict[str, str]]:  # fmt: skip
    """Hand the new keys the chain took (its AccessRekeyed events) to each grant's proxies;
    a grant none of whose proxies took them is reported, not raised."""
    applied = {event["data"]["grant"] for event in outcome.events if event["type"] == "AccessRekeyed"}
    handed: dict[str, dict[str, str]] = {}
    store = await session.store()
    for grant in grants:
        if grant["id"] not in applied:
            continue
        try:
            handed[grant["id"]] = await hand_over(store, grant["proxies"], bytes.fromhex(grant["id"]),
                                                  keys[bytes.fromhex(grant["id"])], outcome.height)  # fmt: skip
        except TwinledgerError as exc:
            handed[grant["id"]] = {"error": exc.message}
    return handed


async def rotate_twin_feeds(session: Session, twin_id: str,
                            keys: Sequence[SigningKey] = ()) -> tuple[list[str], dict[str, str], list[str]]:  # fmt: skip
    """Give every store feed of the twin that the session's key or one of ``keys`` owns a
    data key of the twin's current generation: (rotated, failed with why, owned by other keys)."""
    owners = {key.public.hex(): key for key in (session.signer, *keys)}
    feeds = [f for f in (await session.twin(twin_id))["feeds"] if f["reference"].startswith("store:")]
    rotated: list[str] = []
    failed: dict[str, str] = {}
    others: list[str] = []
    for entry in feeds:
        owner = owners.get(entry["owner"])
        if owner is None:
            others.append(entry["component"])
            continue
        try:
            await rotate_feed(await session.store(), owner, session.organisation, session.encryption_key,
                              parse_feed_reference(entry["reference"]), session.sharing_now(twin_id))  # fmt: skip
            rotated.append(entry["component"])
        except TwinledgerError as exc:
            failed[entry["component"]] = exc.message
    return rotated, failed, others
