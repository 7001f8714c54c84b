"""Who reads what: the items of a twin with their attributes, what a grant's policy covers
before it is made (a dry run), and per item who reads it — the organisations its ACL
names and the grants that cover it.

A policy may use the keys twinledger sets (twin, kind, component, signal), the owners'
common keys (type, line, site, batch, supplier), and any key an item of the twin carries;
another key is refused unless the grant declares it, so ``typ:quality`` fails at once
instead of covering nothing for ever. A value no item carries yet is allowed (data to
come) and reported as covering nothing yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twinledger.core.attributes import FORM, KNOWN_KEYS, REQUEST, BadAttribute, form_problem, near_miss, twin_attribute
from twinledger.crypto.policy import Policy, leaves, parse_policy, policy_text
from twinledger.errors import TwinledgerError
from twinledger.services.session import Session
from twinledger.sharing.grants import confined
from twinledger.store.documents import parse_reference
from twinledger.store.feeds import REFERENCE as FEED_REFERENCE
from twinledger.store.items import AccessDenied, ItemAcl, ReadGrant, StoreError


@dataclass(frozen=True)
class TwinItem:
    """A document version or a feed of a twin, with its ACL from the store."""

    kind: str
    """"document" or "feed"."""
    name: str
    """The document's title and version, or the feed's component."""
    acl: ItemAcl

    @property
    def attributes(self) -> tuple[str, ...]:
        return self.acl.attributes


@dataclass(frozen=True)
class Unavailable:
    """An item of the twin whose ACL the store did not give (down, or refused)."""

    kind: str
    name: str
    why: str


async def twin_items(session: Session, twin: dict[str, Any]) -> tuple[list[TwinItem], list[Unavailable]]:
    """The twin's current documents (every version) and store feeds, with their ACLs; and
    those whose ACL could not be read, with why."""
    wanted: list[tuple[str, str, bytes]] = []
    for document in twin["documents"]:
        if document["removed"] is None:
            for number, version in enumerate(document["versions"], start=1):
                if version["reference"].startswith("store:"):
                    wanted.append(("document", f"{document['title']} v{number}", parse_reference(version["reference"])[0]))
    for feed in twin["feeds"]:
        match = FEED_REFERENCE.match(feed["reference"])
        if match is not None:
            wanted.append(("feed", feed["component"], bytes.fromhex(match[1])))
    store = await session.store()
    acls = await asyncio.gather(*(store.get_acl(item) for _, _, item in wanted), return_exceptions=True)
    found, missing = [], []
    for (kind, name, _), acl in zip(wanted, acls, strict=True):
        if isinstance(acl, ItemAcl):
            found.append(TwinItem(kind, name, acl))
        elif isinstance(acl, StoreError | AccessDenied):
            missing.append(Unavailable(kind, name, acl.message))
        else:
            raise acl
    return found, missing


def vocabulary(items: Iterable[TwinItem]) -> set[str]:
    """Keys a policy on these items may use: the built-in ones and those the items carry."""
    return {*KNOWN_KEYS, *(FORM.fullmatch(a)[1] for item in items for a in item.attributes if FORM.fullmatch(a))}


@dataclass(frozen=True)
class Coverage:
    """What a grant's policy covers among a twin's items, now."""

    twin: str
    policy: str
    """The policy as the grant would record it (confined to the twin)."""
    covered: list[TwinItem]
    uncovered: list[TwinItem]
    unmatched: list[str] = field(default_factory=list)
    """Attributes of the policy no item carries yet (they cover nothing until one does)."""
    generations: int = 1
    """Access generations the grant's keys would open (0 to the twin's current one)."""


def check_policy_attributes(policy: Policy, items: Sequence[TwinItem], declared: Sequence[str] = ()) -> None:
    """Refuse a policy attribute that is not KEY:VALUE, or whose key is neither known,
    nor carried by an item, nor declared; an attribute an item carries as written passes
    whatever its form (items from before the vocabulary)."""
    allowed = vocabulary(items) | set(declared)
    carried = {a for item in items for a in item.attributes}
    for attribute in leaves(policy):
        if attribute == REQUEST or attribute in carried:
            continue
        problem = form_problem(attribute) or near_miss(attribute, allowed)
        if problem is not None:
            raise BadAttribute(f"policy: {problem}")
        key = attribute.partition(":")[0]
        if key not in allowed:
            raise BadAttribute(f"policy: attribute key {key!r} is in no item of the twin and not a known key "
                               f"({', '.join(sorted(allowed))}); if its data is still to come, declare it "
                               f"(--declare {key})")  # fmt: skip


async def preview(session: Session, twin_ref: str, policy: str, declared: Sequence[str] = ()) -> Coverage:
    """Which of the twin's items a grant with ``policy`` would cover now (nothing is made)."""
    twin = await session.twin(twin_ref)
    items, missing = await twin_items(session, twin)
    if missing:  # the vocabulary and the coverage would both be short: say so rather than guess
        raise TwinledgerError(f"the store did not give the ACL of {missing[0].kind} {missing[0].name} "
                              f"({missing[0].why}){f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; "
                              "what a grant covers cannot be told without it: try again when the store answers",
                              code="store_unavailable")  # fmt: skip
    asked = parse_policy(policy)
    check_policy_attributes(asked, items, declared)
    granted = confined(asked, twin["id"])
    carried = {a for item in items for a in item.attributes} | {twin_attribute(twin["id"]), REQUEST}
    # as store nodes decide (ReadGrant.covers): the granting organisation's items only (others may add documents)
    would_be = ReadGrant(session.organisation, session.organisation, twin["id"], granted, 0)
    covered = [item for item in items if would_be.covers(item.acl, session.organisation, 0)]
    return Coverage(twin["id"], policy_text(granted), covered, [item for item in items if item not in covered],
                    sorted({a for a in leaves(granted) if a not in carried}), twin["generation"] + 1)  # fmt: skip


@dataclass(frozen=True)
class ItemReaders:
    """Who reads one item: the organisations its ACL names, and the grants covering it."""

    item: TwinItem
    readers: list[str]
    """Organisations the current data key is sealed to (the owner among them)."""
    earlier_readers: list[str]
    """Organisations only earlier keys are sealed to: they read the item's older epochs."""
    grants: list[dict[str, Any]]
    """Grants (as the API lists them) whose policy covers the item, active or past their end."""


async def who_reads(session: Session, twin_ref: str) -> tuple[dict[str, Any], list[ItemReaders], list[Unavailable]]:
    """For each current item of the twin: the reader organisations and the covering grants;
    and the items whose ACL the store did not give."""
    twin = await session.twin(twin_ref)
    items, missing = await twin_items(session, twin)
    listing = await session.get("/v1/grants", twin=twin["id"])
    grants = [g for g in listing["grants"] if g["status"] == "active"]
    now = int(time.time() * 1000)
    rows = []
    for item in items:
        readers = sorted({item.acl.owner_organisation, *(r.organisation for r in item.acl.readers)})
        earlier = sorted({r.organisation for epoch in item.acl.retired for r in epoch.readers} - set(readers))
        covering = [g for g in grants  # the end aside: one past it is listed, with its status
                    if ReadGrant.of({**g, "valid_until": 0}).covers(item.acl, g["recipient"], now)]  # fmt: skip
        rows.append(ItemReaders(item, readers, earlier, covering))
    return twin, rows, missing
