"""The ``twins`` contract: the twin registry and each twin's specification contract
(Dietz et al., Listings 1.1 and 1.2).

A twin has a name, a device id, an owning organisation and an AutomationML
specification with its full version history; documents with versions; external
sources; sensor feed references by component; and a program-call queue with alerts
(their methods are in ``programs``). Every method is checked by
``authorization.authorize``; state layout is in ``twinstate``, the model the checks read
in ``twinmodel``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twinledger import aml
from twinledger.contracts.arguments import Arguments
from twinledger.contracts.authorization import (
    DATA_METHODS,
    ROLES,
    RoleTable,
    authorize,
    check_scopes_exist,
    parse_role_table,
)
from twinledger.contracts.membership import required_organisation
from twinledger.contracts.modeldelta import ModelError, apply_delta, parse_delta
from twinledger.contracts.programs import (
    call_program,
    parse_call_program,
    parse_dispatch,
    parse_report,
    parse_report_anomaly,
    report_anomaly,
    update_call,
)
from twinledger.contracts.runtime import Call, Contract, Method
from twinledger.contracts.staging import parse_stage, parse_unstage, stage, take_staged, unstage
from twinledger.contracts.twinmodel import element_path, require_element
from twinledger.contracts.twinstate import (
    MAX_REFERENCE,
    TwinError,
    actor,
    aml_key,
    anomaly_key,
    audited,
    checkpoint_key,
    detached_feed_key,
    device_key,
    document_key,
    feed_key,
    history_key,
    load_twin,
    permissions_key,
    registry_key,
    roles_key,
    source_key,
    twin_key,
)
from twinledger.core.types import MAX_TX_BYTES

MAX_DOCUMENT_VERSIONS = 1000
MAX_URI = 1024
MAX_LINKS = 256
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


# -- a version of the specification ---------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """A version of the specification as the chain knows it: the document is in the
    off-chain store, encrypted; the chain holds its hashes, its size and where it is, and
    the delta it makes to the model (inline, or staged in parts by the sender)."""

    hash: bytes
    """SHA-256 of the stored form (aml.stored_form)."""
    manifest: bytes
    """The store manifest's hash: commits to the encrypted chunks and the data key."""
    reference: str
    size: int
    model: bytes | None
    staged: bytes | None
    base: bytes | None
    """The hash of the version an edit was made from: an edit of a version that is no
    longer the current one is refused (the other edit would be lost from the document)."""


VERSION_FIELDS = ("hash", "manifest", "reference", "size", "model", "staged", "base")


def _read_version(read: Arguments) -> Version:
    model, staged = read.blob("model", max_size=MAX_TX_BYTES, default=None), read.digest("staged", default=None)
    if (model is None) == (staged is None):
        raise read.error("give the model delta inline ('model') or staged ('staged'), not both")
    return Version(read.digest("hash"), read.digest("manifest"), read.text("reference", max_length=512),
                   read.integer("size", minimum=1, maximum=aml.MAX_DOCUMENT_BYTES), model, staged,
                   read.digest("base", default=None))  # fmt: skip


def _delta(call: Call, twin: dict[str, Any] | None, version: Version) -> dict[str, Any]:
    """The version's model delta, once its base is the current version (a creation has none)."""
    if twin is not None and version.base != twin["aml_hash"]:
        raise TwinError(f"the specification is at version {twin['aml_version']} now, not the one this edit was made "
                        "from; read it again and redo the edit", code="stale_version")  # fmt: skip
    if twin is None and version.base is not None:
        raise TwinError("a new twin's specification has no base version", code="bad_arguments")
    return parse_delta(version.model if version.model is not None else take_staged(call, version.staged or b""))


def _record_version(call: Call, twin: dict[str, Any], version: Version, change: str, element: str, parent: str) -> None:
    number = twin["aml_version"]
    document = {"hash": version.hash, "manifest": version.manifest, "reference": version.reference,
                "size": version.size}  # fmt: skip
    call.state.set(aml_key(twin["id"], number), document)
    call.state.set(history_key(twin["id"], number), {"version": number, "change": change, "element": element,
                                                     "parent": parent, **document, **actor(call)})  # fmt: skip


def _new_version(call: Call, twin: dict[str, Any], version: Version, change: str, element: str, parent: str) -> None:
    updated = {**twin, "aml_version": twin["aml_version"] + 1, "aml_hash": version.hash}
    call.state.set(twin_key(twin["id"]), updated)
    _record_version(call, updated, version, change, element, parent)


def _place(call: Call, twin: dict[str, Any], ref: str) -> tuple[str, ...]:
    """Where an element the client names sits, for scopes: its IDs from the top if the
    model holds it; () otherwise (a library, an instance hierarchy: unscoped roles only)."""
    return element_path(call.state, twin["id"], ref) or ()


# -- registry: create -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateArgs:
    name: str
    device_id: str
    version: Version
    roles: RoleTable
    permissions: dict[str, list[str]]


def parse_create(args: Mapping[str, Any]) -> CreateArgs:
    read = Arguments("twins.create", args, ("name", "device_id", "roles", "permissions", *VERSION_FIELDS))
    roles = parse_role_table(read, "roles")
    changed = read.mapping("permissions", max_items=len(ROLES), default={})
    for role, methods in changed.items():
        if role not in ROLES or role == "owner" or not isinstance(methods, list) or not set(methods) <= set(DATA_METHODS):
            raise read.error(f"'permissions' must map roles other than owner to methods among {list(DATA_METHODS)}")
    return CreateArgs(read.text("name", max_length=128), read.identifier("device_id"), _read_version(read), roles,
                      {role: sorted(set(methods)) for role, methods in changed.items()})  # fmt: skip


def create(call: Call, args: CreateArgs) -> None:
    """Register a twin owned by the sender's organisation (Dietz et al. §4.5), from a
    specification stored off chain and the model it gives."""
    owner = required_organisation(call.state, call.sender, "create a twin")
    if call.state.get(device_key(args.device_id)) is not None:
        raise TwinError(f"device {args.device_id!r} already has a twin", code="duplicate_device")
    twin_id = call.tx.hash[:8].hex()
    if call.state.get(twin_key(twin_id)) is not None:
        raise TwinError(f"twin id {twin_id} is taken; sign the creation again", code="duplicate_twin")
    roles = {**args.roles, f"org:{owner}": {**args.roles.get(f"org:{owner}", {}), "owner": []}}
    twin = {"id": twin_id, "name": args.name, "device_id": args.device_id, "owner": owner,
            "created": actor(call), "aml_version": 1, "aml_hash": args.version.hash, "calls": 0, "changes": 0}  # fmt: skip
    call.state.set(twin_key(twin_id), twin)
    call.state.set(registry_key(twin_id), {"id": twin_id, "name": args.name, "device_id": args.device_id,
                                           "owner": owner})  # fmt: skip
    call.state.set(device_key(args.device_id), twin_id)
    delta = _delta(call, None, args.version)
    if any(value is None for value in delta.values()):
        raise ModelError("a new twin's model deletes nothing")
    apply_delta(call, twin, delta, None)
    check_scopes_exist(call.state, twin_id, args.roles)
    call.state.set(roles_key(twin_id), roles)
    if args.permissions:
        call.state.set(permissions_key(twin_id), args.permissions)
    _record_version(call, twin, args.version, "create", "", "")
    call.emit("TwinCreated", twin=twin_id, name=args.name, device_id=args.device_id, owner=owner)


# -- the specification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InsertArgs:
    twin: str
    parent: str
    after: str | None
    element: str
    """What was inserted: its ID, else its name path."""
    version: Version


def parse_insert(args: Mapping[str, Any]) -> InsertArgs:
    read = Arguments("twins.insert_aml", args, ("twin", "parent", "after", "element", *VERSION_FIELDS))
    return InsertArgs(read.identifier("twin"), read.reference("parent", max_length=MAX_REFERENCE),
                      read.reference("after", max_length=MAX_REFERENCE, default=None),
                      read.reference("element", max_length=MAX_REFERENCE), _read_version(read))  # fmt: skip


def insert_aml(call: Call, args: InsertArgs) -> None:
    """A new version with an element inserted under ``parent``: the sender may insert
    there, and every model entry the insert sets is where the sender may insert."""
    twin = load_twin(call.state, args.twin)
    anchor = _place(call, twin, args.parent)
    authorize(call, twin, "aml.insert", path=anchor)
    apply_delta(call, twin, _delta(call, twin, args.version), "aml.insert", anchor)
    _new_version(call, twin, args.version, "insert", args.element, args.parent)
    call.emit("AmlInserted", twin=args.twin, element=args.element, parent=args.parent, version=twin["aml_version"] + 1)


@dataclass(frozen=True)
class ElementArgs:
    twin: str
    element: str


@dataclass(frozen=True)
class RemoveArgs:
    twin: str
    element: str
    links: tuple[tuple[str, tuple[str, ...]], ...]
    """InternalLinks elsewhere removed with the element: description, and the IDs from the
    top of the element holding the link (a change there too)."""
    version: Version


def parse_remove(args: Mapping[str, Any]) -> RemoveArgs:
    read = Arguments("twins.remove_aml", args, ("twin", "element", "links", *VERSION_FIELDS))
    links = read.items("links", max_items=MAX_LINKS, default=[])
    if not all(isinstance(link, list) and len(link) == 2 and isinstance(link[0], str) and len(link[0]) <= 1024
               and isinstance(link[1], list) and all(isinstance(i, str) and 0 < len(i) <= 128 for i in link[1])
               for link in links):  # fmt: skip
        raise read.error("'links' must list [description, [IDs of the element holding the link]] pairs")
    return RemoveArgs(read.identifier("twin"), read.reference("element", max_length=MAX_REFERENCE),
                      tuple((text, tuple(ids)) for text, ids in links), _read_version(read))  # fmt: skip


def remove_aml(call: Call, args: RemoveArgs) -> None:
    """A new version without an element; sensor feeds and alerts of the components that
    left the model go with it, and links removed elsewhere are authorized where they were."""
    twin = load_twin(call.state, args.twin)
    anchor = _place(call, twin, args.element)
    authorize(call, twin, "aml.remove", path=anchor)
    for _, holder in dict.fromkeys(args.links):
        authorize(call, twin, "aml.remove", path=holder)
    gone = apply_delta(call, twin, _delta(call, twin, args.version), "aml.remove", anchor)
    _new_version(call, twin, args.version, "remove", args.element, "")
    call.emit("AmlRemoved", twin=args.twin, element=args.element, version=twin["aml_version"] + 1,
              links=[text for text, _ in args.links])  # fmt: skip
    _detach(call, args.twin, gone)


@dataclass(frozen=True)
class ReplaceArgs:
    twin: str
    version: Version


def parse_replace(args: Mapping[str, Any]) -> ReplaceArgs:
    read = Arguments("twins.replace_aml", args, ("twin", *VERSION_FIELDS))
    return ReplaceArgs(read.identifier("twin"), _read_version(read))


def replace_aml(call: Call, args: ReplaceArgs) -> None:
    """A new version that may change anything (an engineering tool's new export, or a
    version whose document did not match the model): for whoever may insert and remove
    over the whole twin."""
    twin = load_twin(call.state, args.twin)
    authorize(call, twin, "aml.insert")
    authorize(call, twin, "aml.remove")
    gone = apply_delta(call, twin, _delta(call, twin, args.version), None)
    _new_version(call, twin, args.version, "replace", "", "")
    call.emit("AmlReplaced", twin=args.twin, version=twin["aml_version"] + 1)
    _detach(call, args.twin, gone)


def _detach(call: Call, twin_id: str, gone: list[str]) -> None:
    """Feeds and alerts of components that left the model go with them."""
    for component in gone:
        feed = call.state.get(feed_key(twin_id, component))
        if feed is not None:
            _detach_feed(call, twin_id, component, feed)
            call.emit("FeedRemoved", twin=twin_id, component=component, reference=feed["reference"],
                      reason="component removed")  # fmt: skip
        if call.state.get(anomaly_key(twin_id, component)) is not None:
            call.state.set(anomaly_key(twin_id, component), None)
            call.emit("AnomalyCleared", twin=twin_id, signal=component, reason="component removed")


# -- documents ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentArgs:
    twin: str
    hash: bytes
    title: str
    description: str
    reference: str
    media_type: str
    size: int
    component: str | None


def parse_add_document(args: Mapping[str, Any]) -> DocumentArgs:
    read = Arguments("twins.add_document", args, ("twin", "hash", "title", "description", "reference",
                                                  "media_type", "size", "component"))  # fmt: skip
    return DocumentArgs(
        read.identifier("twin"), read.digest("hash"), read.text("title"),
        read.text("description", max_length=1024, empty=True, default=""), read.text("reference", max_length=512),
        read.text("media_type", default="application/octet-stream"), read.integer("size", default=0),
        read.reference("component", max_length=128, default=None),
    )  # fmt: skip


def _version(call: Call, digest: bytes, reference: str, size: int, description: str) -> dict[str, Any]:
    return {"hash": digest, "reference": reference, "size": size, "description": description, **actor(call)}


def add_document(call: Call, args: DocumentArgs) -> None:
    """Register a document; its first content hash is its id (Listing 1.1)."""
    twin = load_twin(call.state, args.twin)
    authorize(call, twin, "document.add", args.component)
    if args.component is not None:
        require_element(call.state, twin["id"], args.component)
    document_id = args.hash.hex()
    if call.state.get(document_key(args.twin, document_id)) is not None:
        raise TwinError(f"document {document_id[:16]}… is already registered; add a version instead",
                        code="duplicate_document")  # fmt: skip
    call.state.set(document_key(args.twin, document_id), {
        "id": document_id, "title": args.title, "media_type": args.media_type, "component": args.component or "",
        "owner": call.sender, "removed": None,
        "versions": [_version(call, args.hash, args.reference, args.size, args.description)],
    })  # fmt: skip
    call.emit("DocumentAdded", twin=args.twin, document=document_id, title=args.title, component=args.component or "")


@dataclass(frozen=True)
class VersionArgs:
    twin: str
    document: str
    hash: bytes
    reference: str
    size: int
    description: str


def parse_add_version(args: Mapping[str, Any]) -> VersionArgs:
    read = Arguments("twins.add_document_version", args, ("twin", "document", "hash", "reference", "size",
                                                          "description"))  # fmt: skip
    return VersionArgs(read.identifier("twin"), read.identifier("document"), read.digest("hash"),
                       read.text("reference", max_length=512), read.integer("size", default=0),
                       read.text("description", max_length=1024, empty=True, default=""))  # fmt: skip


def _live_document(call: Call, twin: dict[str, Any], document_id: str) -> dict[str, Any]:
    document = call.state.get(document_key(twin["id"], document_id))
    if document is None:
        raise TwinError(f"twin {twin['id']} has no document {document_id[:16]}…", code="unknown_document")
    if document["removed"] is not None:
        raise TwinError(f"document {document_id[:16]}… was removed at height {document['removed']['height']}",
                        code="document_removed")  # fmt: skip
    return document


def add_document_version(call: Call, args: VersionArgs) -> None:
    twin = load_twin(call.state, args.twin)
    document = _live_document(call, twin, args.document)
    authorize(call, twin, "document.version", document["component"] or None)
    if any(v["hash"] == args.hash for v in document["versions"]):
        raise TwinError("this content is already a version of the document", code="duplicate_version")
    if len(document["versions"]) >= MAX_DOCUMENT_VERSIONS:
        raise TwinError(f"a document keeps at most {MAX_DOCUMENT_VERSIONS} versions", code="too_many_versions")
    version = _version(call, args.hash, args.reference, args.size, args.description)
    call.state.set(document_key(args.twin, args.document), {**document, "versions": [*document["versions"], version]})
    call.emit("DocumentVersionAdded", twin=args.twin, document=args.document, hash=args.hash,
              version=len(document["versions"]) + 1)  # fmt: skip


@dataclass(frozen=True)
class DocumentRef:
    twin: str
    document: str


def parse_remove_document(args: Mapping[str, Any]) -> DocumentRef:
    read = Arguments("twins.remove_document", args, ("twin", "document"))
    return DocumentRef(read.identifier("twin"), read.identifier("document"))


def remove_document(call: Call, args: DocumentRef) -> None:
    """Mark a document removed; its versions stay in the history for audits."""
    twin = load_twin(call.state, args.twin)
    document = _live_document(call, twin, args.document)
    authorize(call, twin, "document.remove", document["component"] or None)
    call.state.set(document_key(args.twin, args.document), {**document, "removed": actor(call)})
    call.emit("DocumentRemoved", twin=args.twin, document=args.document)


# -- external sources and sensor feeds ------------------------------------------------------------


def source_id(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SourceArgs:
    twin: str
    uri: str
    description: str


def parse_source(method: str) -> Callable[[Mapping[str, Any]], SourceArgs]:
    def parse(args: Mapping[str, Any]) -> SourceArgs:
        read = Arguments(f"twins.{method}", args, ("twin", "uri", "description") if method == "add_source"
                         else ("twin", "uri"))  # fmt: skip
        uri = read.text("uri", max_length=MAX_URI)
        if not URI.match(uri):
            raise read.error(f"'uri' must be an absolute URI such as https://… (got {uri[:40]!r})")
        return SourceArgs(read.identifier("twin"), uri, read.text("description", max_length=1024, empty=True,
                                                                  default=""))  # fmt: skip

    return parse


def add_source(call: Call, args: SourceArgs) -> None:
    twin = load_twin(call.state, args.twin)
    authorize(call, twin, "source.add")
    key = source_key(args.twin, source_id(args.uri))
    if call.state.get(key) is not None:
        raise TwinError(f"twin {args.twin} already lists source {args.uri!r}", code="duplicate_source")
    call.state.set(key, {"uri": args.uri, "description": args.description, "owner": call.sender,
                         "added": actor(call)})  # fmt: skip
    call.emit("SourceAdded", twin=args.twin, uri=args.uri)


def remove_source(call: Call, args: SourceArgs) -> None:
    twin = load_twin(call.state, args.twin)
    authorize(call, twin, "source.remove")
    key = source_key(args.twin, source_id(args.uri))
    if call.state.get(key) is None:
        raise TwinError(f"twin {args.twin} lists no source {args.uri!r}", code="unknown_source")
    call.state.set(key, None)
    call.emit("SourceRemoved", twin=args.twin, uri=args.uri)


@dataclass(frozen=True)
class FeedArgs:
    twin: str
    component: str
    reference: str
    description: str


def parse_add_feed(args: Mapping[str, Any]) -> FeedArgs:
    read = Arguments("twins.add_feed", args, ("twin", "component", "reference", "description"))
    return FeedArgs(read.identifier("twin"), read.reference("component", max_length=128),
                    read.text("reference", max_length=512),
                    read.text("description", max_length=1024, empty=True, default=""))  # fmt: skip


def add_feed(call: Call, args: FeedArgs) -> None:
    """Attach a sensor feed to a component of the specification (Listing 1.1 sensorFeeds)."""
    twin = load_twin(call.state, args.twin)
    authorize(call, twin, "feed.add", args.component)
    require_element(call.state, twin["id"], args.component)
    if call.state.get(feed_key(args.twin, args.component)) is not None:
        raise TwinError(f"component {args.component!r} already has a feed; remove it first", code="duplicate_feed")
    call.state.set(feed_key(args.twin, args.component), {"component": args.component, "reference": args.reference,
                                                         "description": args.description, "owner": call.sender,
                                                         "added": actor(call)})  # fmt: skip
    call.emit("FeedAdded", twin=args.twin, component=args.component, reference=args.reference)


def _detach_feed(call: Call, twin_id: str, component: str, feed: dict[str, Any]) -> None:
    call.state.set(feed_key(twin_id, component), None)
    call.state.set(detached_feed_key(twin_id, component), {**feed, "removed": actor(call)})


def parse_remove_feed(args: Mapping[str, Any]) -> ElementArgs:
    read = Arguments("twins.remove_feed", args, ("twin", "component"))
    return ElementArgs(read.identifier("twin"), read.reference("component", max_length=128))


def remove_feed(call: Call, args: ElementArgs) -> None:
    twin = load_twin(call.state, args.twin)
    feed = call.state.get(feed_key(args.twin, args.element))
    if feed is None:
        raise TwinError(f"component {args.element!r} of twin {args.twin} has no feed", code="unknown_feed")
    authorize(call, twin, "feed.remove", args.element)
    _detach_feed(call, args.twin, args.element, feed)
    call.emit("FeedRemoved", twin=args.twin, component=args.element, reference=feed["reference"], reason="removed")


@dataclass(frozen=True)
class CheckpointArgs:
    twin: str
    component: str
    sequence: int
    head: bytes


def parse_checkpoint_feed(args: Mapping[str, Any]) -> CheckpointArgs:
    read = Arguments("twins.checkpoint_feed", args, ("twin", "component", "sequence", "head"))
    return CheckpointArgs(read.identifier("twin"), read.reference("component", max_length=128), read.integer("sequence"),
                          read.digest("head"))  # fmt: skip


def checkpoint_feed(call: Call, args: CheckpointArgs) -> None:
    """Record a feed's head (sequence and update hash) so that the history up to it can no
    longer be rewritten unnoticed, not even by the feed's owner. Only the key that
    attached the feed signs its updates, so only it checkpoints."""
    twin = load_twin(call.state, args.twin)
    feed = call.state.get(feed_key(args.twin, args.component))
    if feed is None:
        raise TwinError(f"component {args.component!r} of twin {args.twin} has no feed", code="unknown_feed")
    authorize(call, twin, "feed.add", args.component)
    if call.sender != feed["owner"]:
        raise TwinError("only the key that attached a feed records its checkpoints", code="not_feed_owner")
    latest = call.state.get(checkpoint_key(args.twin, feed["reference"])) or {"count": 0, "sequence": -1}
    if args.sequence <= latest["sequence"]:
        raise TwinError(f"the feed's last checkpoint is at update {latest['sequence']}; a new one must be later",
                        code="stale_checkpoint")  # fmt: skip
    number = latest["count"] + 1
    entry = {"number": number, "reference": feed["reference"], "sequence": args.sequence, "head": args.head,
             "height": call.header.height, "timestamp": call.header.timestamp}  # fmt: skip
    call.state.set(checkpoint_key(args.twin, feed["reference"], number), entry)
    call.state.set(checkpoint_key(args.twin, feed["reference"]), {**entry, "count": number})
    call.emit("FeedCheckpointed", twin=args.twin, component=args.component, reference=feed["reference"],
              sequence=args.sequence, head=args.head)  # fmt: skip


SPECIFICATION = Contract(
    "twins",
    {
        "create": Method(parse_create, audited(create)),
        "stage": Method(parse_stage, stage),
        "unstage": Method(parse_unstage, unstage),
        "replace_aml": Method(parse_replace, audited(replace_aml)),
        "insert_aml": Method(parse_insert, audited(insert_aml)),
        "remove_aml": Method(parse_remove, audited(remove_aml)),
        "add_document": Method(parse_add_document, audited(add_document)),
        "add_document_version": Method(parse_add_version, audited(add_document_version)),
        "remove_document": Method(parse_remove_document, audited(remove_document)),
        "add_source": Method(parse_source("add_source"), audited(add_source)),
        "remove_source": Method(parse_source("remove_source"), audited(remove_source)),
        "add_feed": Method(parse_add_feed, audited(add_feed)),
        "remove_feed": Method(parse_remove_feed, audited(remove_feed)),
        "checkpoint_feed": Method(parse_checkpoint_feed, audited(checkpoint_feed)),
        "call_program": Method(parse_call_program, audited(call_program)),
        "dispatch_call": Method(parse_dispatch, audited(update_call)),
        "report_call": Method(parse_report, audited(update_call)),
        "report_anomaly": Method(parse_report_anomaly, audited(report_anomaly)),
    },
)
