"""``twinledger twin …`` and ``twinledger member …``: digital twins and consortium
membership. Writes are signed with the home's operator key (or ``--key``) and wait for
the commit, so a refused call exits 1 with the contract's reason."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.tree import Tree

from twinledger.cli.common import (
    Home,
    Json,
    KeyFile,
    client,
    command,
    error_line,
    kv_table,
    out,
    print_json,
    signer,
    transact,
)
from twinledger.cli.sharing import DeviceDir, unlock_for
from twinledger.cli.storage import transfer_progress, with_store
from twinledger.client import organisation_key, sharing_public
from twinledger.config import NodeConfig, load_config
from twinledger.errors import InvalidProof, TwinledgerError
from twinledger.store.client import StoreClient
from twinledger.store.documents import StoredDocument, download_document, parse_reference, upload_document
from twinledger.store.documents import change_readers as store_change_readers
from twinledger.store.records import ItemAcl

twin_app = typer.Typer(no_args_is_help=True, help="Digital twins: specification, documents, feeds, programs, roles.")
aml_app = typer.Typer(no_args_is_help=True, help="The twin's AutomationML specification and its versions.")
doc_app = typer.Typer(no_args_is_help=True, help="Documents registered on the twin.")
source_app = typer.Typer(no_args_is_help=True, help="External data sources of the twin.")
feed_app = typer.Typer(no_args_is_help=True, help="Encrypted sensor feeds of components: add, push, read, follow, verify.")
role_app = typer.Typer(no_args_is_help=True, help="Who may do what on the twin.")
member_app = typer.Typer(no_args_is_help=True, help="Consortium membership.")
for sub, name in ((aml_app, "aml"), (doc_app, "doc"), (source_app, "source"), (feed_app, "feed"), (role_app, "role")):
    twin_app.add_typer(sub, name=name)

Ref = Annotated[str, typer.Argument(help="Twin id or device id.")]
At = Annotated[int | None, typer.Option("--at", help="Show the state after this block height.", min=0)]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the commit and report the outcome.")]
SUBJECT = re.compile(r"^(org:|key:)")


def _twin(home: Path, ref: str) -> dict[str, Any]:
    return client(home).request("GET", f"/v1/twins/{ref}")


def _twin_id(home: Path, ref: str) -> str:
    return str(_twin(home, ref)["id"])


def _write(home: Path, key: KeyFile, method: str, args: dict[str, Any], wait: bool, as_json: bool,
           done: str, contract: str = "twins") -> dict[str, Any]:  # fmt: skip
    view = transact(home, key, contract, method, args, wait)
    if as_json:
        print_json(view)
    elif wait:
        out.print(f"{done} (block {view['block']['height']}, tx {view['transaction']['hash'][:16]}…)", highlight=False)
    else:
        out.print(f"submitted {view['hash']}", highlight=False)
    return view


def _subject(value: str) -> str:
    """``ORG`` means the organisation; ``org:ORG`` and ``key:HEX`` are taken as written."""
    return value if SUBJECT.match(value) else f"org:{value}"


# -- registry -------------------------------------------------------------------------------------


@twin_app.command("create")
@command
def twin_create(
    home: Home,
    aml: Annotated[Path, typer.Option("--aml", help="AutomationML (CAEX) file.", exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="Twin name (default: the file name).")] = None,
    device_id: Annotated[str | None, typer.Option("--device-id", help="Device id (default: the file's stem).")] = None,
    role: Annotated[list[str], typer.Option("--role", help="SUBJECT=ROLE or SUBJECT=ROLE@ID,ID (repeatable).")] = [],  # noqa: B006
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Register a twin from an AutomationML file; prints its id."""
    roles: dict[str, dict[str, list[str]]] = {}
    for item in role:
        subject, sep, granted = item.partition("=")
        role_name, _, scopes = granted.partition("@")
        if not sep or not subject or not role_name:
            raise TwinledgerError(f"--role {item!r} is not SUBJECT=ROLE or SUBJECT=ROLE@ID,ID")
        roles.setdefault(_subject(subject), {})[role_name] = [s for s in scopes.split(",") if s]
    args = {"name": name or aml.name, "device_id": device_id or aml.stem, "aml": aml.read_bytes(), "roles": roles}
    view = transact(home, key, "twins", "create", args)
    twin_id = next(e["data"]["twin"] for e in view["receipt"]["events"] if e["type"] == "TwinCreated")
    if as_json:
        print_json({"id": twin_id, "tx": view["transaction"]["hash"], "height": view["block"]["height"]})
    else:
        out.print(twin_id, highlight=False)


@twin_app.command("list")
@command
def twin_list(home: Home, at: At = None, as_json: Json = False) -> None:
    """Registered twins."""
    view = client(home).request("GET", "/v1/twins", params={"at": at} if at is not None else {})
    if as_json:
        print_json(view)
        return
    table = Table("id", "name", "device id", "owner", title=f"twins at height {view['height']}", title_justify="left")
    for twin in view["twins"]:
        table.add_row(twin["id"], twin["name"], twin["device_id"], twin["owner"])
    out.print(table)


@twin_app.command("show")
@command
def twin_show(
    ref: Ref,
    home: Home,
    at: At = None,
    spec: Annotated[bool, typer.Option("--spec", help="Print the AutomationML specification too.")] = False,
    as_json: Json = False,
) -> None:
    """A twin as it is now, or as it was at block height --at."""
    view = client(home).request("GET", f"/v1/twins/{ref}", params={"at": at} if at is not None else {})
    if as_json:
        print_json(view)
        return
    out.print(kv_table(f"twin {view['id']} at height {view['height']}", [
        ("name", view["name"]), ("device id", view["device_id"]), ("owner", view["owner"]),
        ("specification", f"version {view['aml_version']}, sha256 {view['aml_hash'][:16]}…"),
        ("created", f"height {view['created']['height']} by {view['created']['organisation'] or view['created']['key'][:16]}"),
    ]))  # fmt: skip
    out.print(_component_tree(view["specification"]))
    roles = Table("subject", "role", "scope", title="roles", title_justify="left")
    for subject, held in sorted(view["roles"].items()):
        for role, scopes in sorted(held.items()):
            roles.add_row(subject, role, ", ".join(scopes) or "whole twin")
    out.print(roles)
    _print_documents(view["documents"], include_removed=False)
    if view["feeds"]:
        feeds = Table("component", "reference", "description", title="sensor feeds", title_justify="left")
        for feed in view["feeds"]:
            feeds.add_row(feed["component"], feed["reference"], feed["description"])
        out.print(feeds)
    if view["sources"]:
        sources = Table("uri", "description", "added by", title="external sources", title_justify="left")
        for source in view["sources"]:
            sources.add_row(source["uri"], source["description"], source["added"]["organisation"])
        out.print(sources)
    if view["calls"]:
        _print_calls(view["calls"][-10:], "program calls (latest 10)")
    if spec:
        out.print(view["specification"], highlight=False, markup=False)


def _component_tree(specification: str) -> Tree:
    """The InternalElement hierarchy with its program interfaces, for a quick look."""
    from lxml import etree

    root = etree.fromstring(specification.encode())
    tree = Tree("specification")

    def walk(element: Any, branch: Tree) -> None:
        for child in element:
            kind = etree.QName(child).localname
            if kind in ("InstanceHierarchy", "InternalElement"):
                walk(child, branch.add(f"{child.get('Name')} [dim]{child.get('ID') or ''}[/dim]"))
            elif kind == "ExternalInterface" and (child.get("RefBaseClassPath") or "").endswith("/Program"):
                branch.add(f"[cyan]program[/cyan] {child.get('Name')}")

    walk(root, tree)
    return tree


def _print_documents(documents: list[dict[str, Any]], include_removed: bool) -> None:
    shown = [d for d in documents if include_removed or d["removed"] is None]
    if not shown:
        return
    table = Table("document", "title", "component", "versions", "latest reference", "status", title="documents",
                  title_justify="left")  # fmt: skip
    for document in shown:
        status = "removed" if document["removed"] else "current"
        table.add_row(document["id"][:16] + "…", document["title"], document["component"] or "-",
                      str(len(document["versions"])), document["versions"][-1]["reference"], status)  # fmt: skip
    out.print(table)


def _print_calls(calls: list[dict[str, Any]], title: str) -> None:
    table = Table("#", "program", "parameters", "status", "result", title=title, title_justify="left")
    for entry in calls:
        table.add_row(str(entry["number"]), entry["program"], json.dumps(entry["params"], sort_keys=True),
                      entry["status"], entry["result"])  # fmt: skip
    out.print(table)


# -- specification --------------------------------------------------------------------------------


@aml_app.command("insert")
@command
def aml_insert(
    ref: Ref,
    home: Home,
    fragment: Annotated[Path, typer.Option("--fragment", help="File holding one AML element.", exists=True,
                                           dir_okay=False)],  # fmt: skip
    parent: Annotated[str, typer.Option("--parent", help="ID of the element to insert under.")],
    after: Annotated[str | None, typer.Option("--after", help="ID of the sibling to insert after.")] = None,
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Insert an element into the specification."""
    args: dict[str, Any] = {"twin": _twin_id(home, ref), "fragment": fragment.read_bytes(), "parent": parent}
    if after is not None:
        args["after"] = after
    _write(home, key, "insert_aml", args, wait, as_json, f"inserted under {parent}")


@aml_app.command("remove")
@command
def aml_remove(ref: Ref, element: Annotated[str, typer.Argument(help="ID of the element to remove.")], home: Home,
               key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Remove an element (and everything in it) from the specification."""
    _write(home, key, "remove_aml", {"twin": _twin_id(home, ref), "element": element}, wait, as_json,
           f"removed {element}")  # fmt: skip


@aml_app.command("history")
@command
def aml_history(ref: Ref, home: Home, as_json: Json = False) -> None:
    """Every version of the specification: who changed what, when."""
    versions = client(home).request("GET", f"/v1/twins/{ref}/history")["versions"]
    if as_json:
        print_json(versions)
        return
    table = Table("version", "change", "element", "by", "height", "tx", title="specification history",
                  title_justify="left")  # fmt: skip
    for v in versions:
        target = v["element"] + (f" under {v['parent']}" if v["parent"] else "")
        table.add_row(str(v["version"]), v["change"], target or "-", v["organisation"] or v["key"][:16] + "…",
                      str(v["height"]), v["tx"][:16] + "…")  # fmt: skip
    out.print(table)


@aml_app.command("diff")
@command
def aml_diff(
    ref: Ref,
    home: Home,
    old: Annotated[int, typer.Argument(help="Earlier version.")],
    new: Annotated[int | None, typer.Argument(help="Later version (default: the current one).")] = None,
    as_json: Json = False,
) -> None:
    """A readable diff between two versions of the specification."""
    params: dict[str, Any] = {"from": old} | ({"to": new} if new is not None else {})
    text = client(home).request("GET", f"/v1/twins/{ref}/diff", params=params)["diff"]
    if as_json:
        print_json({"diff": text})
        return
    for line in text.splitlines():
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
        out.print(line, style=style, highlight=False, markup=False)
    if not text:
        out.print("the versions are identical")


@aml_app.command("show")
@command
def aml_show(ref: Ref, home: Home,
             version: Annotated[int | None, typer.Option(help="Version (default: current).")] = None) -> None:  # fmt: skip
    """Print a version of the specification as XML."""
    params = {"xml": "true"} | ({"version": str(version)} if version is not None else {})
    out.print(client(home).text(f"/v1/twins/{ref}/specification", params=params), highlight=False, markup=False)


# -- documents, sources, feeds --------------------------------------------------------------------


FileArg = Annotated[Path, typer.Argument(help="The document's file.", exists=True, dir_okay=False)]
Readers = Annotated[list[str], typer.Option("--reader", help="Organisation that may read it (repeatable; default: "
                                                           "every organisation with a role on the twin).")]
Attributes = Annotated[list[str], typer.Option("--attribute", help="Attribute for grants' policies, e.g. type:report "
                                                                   "(repeatable; twin:ID and the kind are always set).")]


def document_attributes(twin_id: str, component: str | None, extra: list[str]) -> list[str]:
    """What a document's grants are checked against: its twin, its kind, its component, and more."""
    return [f"twin:{twin_id}", "kind:document", *([f"component:{component}"] if component else []), *extra]


def _recipients(view: dict[str, Any], members: dict[str, Any], chosen: list[str], own: str) -> dict[str, bytes]:
    """Reader organisations and their X25519 keys; the uploader's organisation always reads."""
    organisations = {org["name"]: org for org in members["organisations"]}
    names = set(chosen) if chosen else {s.removeprefix("org:") for s in view["roles"] if s.startswith("org:")}
    names.add(own)
    unknown = sorted(names - set(organisations))
    if unknown:
        raise TwinledgerError(f"no member organisation is named {', '.join(unknown)}", code="unknown_organisation")
    keyless = sorted(name for name in names if not organisations[name].get("encryption_key"))
    if keyless:
        raise TwinledgerError(f"organisation(s) {', '.join(keyless)} have no encryption key", code="no_encryption_key")
    return {name: bytes.fromhex(organisations[name]["encryption_key"]) for name in sorted(names)}


def _store_document(home: Path, key: Path | None, view: dict[str, Any], file: Path, readers: list[str],
                    quiet: bool, attributes: list[str]) -> StoredDocument:  # fmt: skip
    owner = signer(home, key)

    async def work(config: NodeConfig, store: StoreClient, members: dict[str, Any]) -> StoredDocument:
        recipients = _recipients(view, members, readers, config.organisation)
        sharing = sharing_public(members, config.organisation)
        with transfer_progress(f"encrypting {file.name}", file.stat().st_size, quiet) as advance:
            return await upload_document(store, file, owner, config.organisation, recipients, advance,
                                         attributes=attributes, sharing=sharing)  # fmt: skip

    return with_store(home, work)


@doc_app.command("add")
@command
def doc_add(
    ref: Ref,
    file: FileArg,
    home: Home,
    title: Annotated[str | None, typer.Option(help="Title (default: the file name).")] = None,
    description: Annotated[str, typer.Option(help="What the document is.")] = "",
    component: Annotated[str | None, typer.Option(help="AML component the document is about.")] = None,
    media_type: Annotated[str, typer.Option(help="Media type.")] = "application/octet-stream",
    reader: Readers = [],  # noqa: B006
    attribute: Attributes = [],  # noqa: B006
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Encrypt the file into the off-chain store and register it on the twin; prints its id.

    The chain records the hash of the document's manifest, which commits to every
    encrypted chunk and to the data key; the data key is sealed to each reader, and
    KP-CPRE-encrypted for the owner under the document's attributes, so the owner can
    grant others access later (twinledger grant)."""
    view = _twin(home, ref)
    stored = _store_document(home, key, view, file, reader, as_json,
                             document_attributes(view["id"], component, attribute))  # fmt: skip
    args: dict[str, Any] = {"twin": view["id"], "hash": stored.manifest, "title": title or file.name,
                            "description": description, "reference": stored.reference, "media_type": media_type,
                            "size": stored.size}  # fmt: skip
    if component is not None:
        args["component"] = component
    committed = transact(home, key, "twins", "add_document", args)
    if as_json:
        print_json({"document": stored.manifest.hex(), "reference": stored.reference, "size": stored.size,
                    "readers": list(stored.readers), "tx": committed["transaction"]["hash"]})  # fmt: skip
    else:
        out.print(stored.manifest.hex(), highlight=False)


@doc_app.command("version")
@command
def doc_version(
    ref: Ref,
    document: Annotated[str, typer.Argument(help="Document id.")],
    file: FileArg,
    home: Home,
    description: Annotated[str, typer.Option(help="What changed.")] = "",
    reader: Readers = [],  # noqa: B006
    attribute: Attributes = [],  # noqa: B006
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Store a new version of a document and register it."""
    view = _twin(home, ref)
    entry = _document(view, document)
    stored = _store_document(home, key, view, file, reader, as_json,
                             document_attributes(view["id"], entry.get("component") or None, attribute))  # fmt: skip
    args = {"twin": view["id"], "document": entry["id"], "hash": stored.manifest,
            "size": stored.size, "reference": stored.reference, "description": description}  # fmt: skip
    _write(home, key, "add_document_version", args, True, as_json, f"added version {stored.manifest.hex()[:16]}…")


@doc_app.command("get")
@command
def doc_get(
    ref: Ref,
    document: Annotated[str, typer.Argument(help="Document id (or a unique prefix of at least 8 digits).")],
    home: Home,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the document.", dir_okay=False)],
    version: Annotated[int | None, typer.Option(help="Version number (default: the latest).", min=1)] = None,
    device: DeviceDir = None,
    as_json: Json = False,
) -> None:
    """Fetch a document from the store, check it against the chain and decrypt it."""
    entry = _document(_twin(home, ref), document)
    versions = entry["versions"]
    if version is not None and version > len(versions):
        raise TwinledgerError(f"document {entry['id'][:16]}… has {len(versions)} version(s), not {version}",
                              code="unknown_version")  # fmt: skip
    chosen = versions[(version or len(versions)) - 1]

    async def work(config: NodeConfig, store: StoreClient, _: dict[str, Any]) -> None:
        with transfer_progress(f"fetching {entry['title']}", chosen["size"], as_json) as advance:
            await download_document(store, chosen["reference"], bytes.fromhex(chosen["hash"]),
                                    unlock_for(home, config, store, device), output, advance)  # fmt: skip

    with_store(home, work)
    number = version or len(versions)
    if as_json:
        print_json({"document": entry["id"], "version": number, "path": str(output), "size": chosen["size"],
                    "hash": chosen["hash"]})  # fmt: skip
    else:
        out.print(f"wrote {output} ({chosen['size']:,} bytes, version {number}, verified against the chain)",
                  highlight=False)  # fmt: skip


Organisations = Annotated[list[str], typer.Argument(help="Member organisation names.")]


def change_readers(home: Path, key: KeyFile, items: list[bytes], add: list[str], remove: list[str], what: str,
                   as_json: bool) -> None:  # fmt: skip
    """Publish new owner-signed ACL versions of ``items`` and report the readers now."""
    owner = signer(home, key)

    async def work(config: NodeConfig, store: StoreClient, members: dict[str, Any]) -> list[ItemAcl]:
        keys = _recipients({"roles": {}}, members, add, config.organisation) if add else {}
        added = {name: public for name, public in keys.items() if name in add}
        return [await store_change_readers(store, owner, config.organisation, organisation_key(config), item, added,
                                           remove) for item in items]  # fmt: skip

    acls = with_store(home, work)
    readers = sorted({r.organisation for acl in acls for r in acl.readers})
    if as_json:
        print_json({"items": [acl.item.hex() for acl in acls], "versions": [acl.version for acl in acls],
                    "readers": readers})  # fmt: skip
        return
    out.print(f"{what}: readers now {', '.join(readers)} ({len(acls)} item(s))", highlight=False)
    if remove:
        out.print(f"store nodes refuse {', '.join(remove)} from now on; a copy taken before stays readable to it, "
                  "so store a new version for data it must no longer read", highlight=False)  # fmt: skip


def _version_items(entry: dict[str, Any], version: int | None) -> list[bytes]:
    versions = entry["versions"] if version is None else entry["versions"][version - 1 : version]
    if not versions:
        raise TwinledgerError(f"document {entry['id'][:16]}… has {len(entry['versions'])} version(s), not {version}",
                              code="unknown_version")  # fmt: skip
    return [parse_reference(v["reference"])[0] for v in versions]


@doc_app.command("share")
@command
def doc_share(ref: Ref, document: Annotated[str, typer.Argument(help="Document id (or a unique prefix).")],
              organisations: Organisations, home: Home,
              version: Annotated[int | None, typer.Option(help="Only this version (default: all).", min=1)] = None,
              key: KeyFile = None, as_json: Json = False) -> None:  # fmt: skip
    """Let more organisations read a document: its data key is sealed to each of them."""
    entry = _document(_twin(home, ref), document)
    change_readers(home, key, _version_items(entry, version), organisations, [], f"shared {entry['title']}", as_json)


@doc_app.command("unshare")
@command
def doc_unshare(ref: Ref, document: Annotated[str, typer.Argument(help="Document id (or a unique prefix).")],
                organisations: Organisations, home: Home,
                version: Annotated[int | None, typer.Option(help="Only this version (default: all).", min=1)] = None,
                key: KeyFile = None, as_json: Json = False) -> None:  # fmt: skip
    """Take organisations off a document's readers; store nodes refuse their reads from then on."""
    entry = _document(_twin(home, ref), document)
    change_readers(home, key, _version_items(entry, version), [], organisations, f"unshared {entry['title']}",
                   as_json)  # fmt: skip


def _document(view: dict[str, Any], document: str) -> dict[str, Any]:
    """A document of the twin by id or by a unique prefix of at least 8 hex digits."""
    matches = [d for d in view["documents"] if d["id"] == document or (len(document) >= 8 and d["id"].startswith(document))]
    if len(matches) != 1:
        problem = "names several documents" if matches else "is no document"
        raise TwinledgerError(f"{document[:64]!r} {problem} of twin {view['id']}", code="unknown_document")
    return matches[0]


@doc_app.command("remove")
@command
def doc_remove(ref: Ref, document: Annotated[str, typer.Argument(help="Document id.")], home: Home,
               key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Mark a document removed (its versions stay in the history)."""
    _write(home, key, "remove_document", {"twin": _twin_id(home, ref), "document": document}, wait, as_json,
           f"removed document {document[:16]}…")  # fmt: skip


@doc_app.command("list")
@command
def doc_list(
    ref: Ref,
    home: Home,
    include_removed: Annotated[bool, typer.Option("--all", help="Include removed documents.")] = False,
    at: At = None,
    as_json: Json = False,
) -> None:
    """Documents of the twin with their versions."""
    view = client(home).request("GET", f"/v1/twins/{ref}", params={"at": at} if at is not None else {})
    documents = [d for d in view["documents"] if include_removed or d["removed"] is None]
    if as_json:
        print_json(documents)
    elif documents:
        _print_documents(documents, include_removed)
    else:
        out.print("no documents")


@source_app.command("add")
@command
def source_add(ref: Ref, uri: Annotated[str, typer.Argument(help="URI of the source.")], home: Home,
               description: Annotated[str, typer.Option(help="What the source provides.")] = "",
               key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Add an external data source."""
    _write(home, key, "add_source", {"twin": _twin_id(home, ref), "uri": uri, "description": description}, wait,
           as_json, f"added source {uri}")  # fmt: skip


@source_app.command("remove")
@command
def source_remove(ref: Ref, uri: Annotated[str, typer.Argument(help="URI of the source.")], home: Home,
                  key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Remove an external data source."""
    _write(home, key, "remove_source", {"twin": _twin_id(home, ref), "uri": uri}, wait, as_json,
           f"removed source {uri}")  # fmt: skip


# -- programs -------------------------------------------------------------------------------------


def parse_param(item: str) -> tuple[str, bool | int | str]:
    """``name=value``: true/false are booleans, whole numbers integers, anything else a
    string (decimal numbers travel as strings; the ledger has no floats)."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise TwinledgerError(f"parameter {item!r} is not NAME=VALUE")
    if value in ("true", "false"):
        return name, value == "true"
    if re.fullmatch(r"-?\d+", value):
        return name, int(value)
    return name, value


@twin_app.command("call")
@command
def twin_call(
    ref: Ref,
    program: Annotated[str, typer.Argument(help="Program name as in the specification.")],
    home: Home,
    params: Annotated[list[str] | None, typer.Argument(help="Parameters NAME=VALUE.")] = None,
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Queue a program call for the device, checked against the specification's safety rules."""
    args = {"twin": _twin_id(home, ref), "program": program, "params": dict(parse_param(p) for p in params or [])}
    view = transact(home, key, "twins", "call_program", args, wait)
    if as_json:
        print_json(view)
        return
    if wait:
        (event,) = [e for e in view["receipt"]["events"] if e["type"] == "ProgramCalled"]
        out.print(f"queued call {event['data']['call']}: {program} {json.dumps(event['data']['params'], sort_keys=True)}",
                  highlight=False)  # fmt: skip
    else:
        out.print(f"submitted {view['hash']}", highlight=False)


@twin_app.command("calls")
@command
def twin_calls(
    ref: Ref,
    home: Home,
    status: Annotated[str | None, typer.Option(help="Only calls with this status.")] = None,
    as_json: Json = False,
) -> None:
    """Program calls and their status."""
    calls = client(home).request("GET", f"/v1/twins/{ref}/calls", params={"status": status} if status else {})["calls"]
    if as_json:
        print_json(calls)
    elif calls:
        _print_calls(calls, "program calls")
    else:
        out.print("no program calls")


@twin_app.command("report")
@command
def twin_report(
    ref: Ref,
    call: Annotated[int, typer.Argument(help="Call number.")],
    status: Annotated[str, typer.Argument(help="dispatched, executed, failed or rejected.")],
    home: Home,
    result: Annotated[str, typer.Option(help="What happened.")] = "",
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Move a program call along its life-cycle (as the device agent does)."""
    twin_id = _twin_id(home, ref)
    if status == "dispatched":
        _write(home, key, "dispatch_call", {"twin": twin_id, "call": call}, wait, as_json, f"call {call} dispatched")
    else:
        _write(home, key, "report_call", {"twin": twin_id, "call": call, "status": status, "result": result}, wait,
               as_json, f"call {call} {status}")  # fmt: skip


# -- roles and audit ------------------------------------------------------------------------------


@role_app.command("grant")
@command
def role_grant(
    ref: Ref,
    subject: Annotated[str, typer.Argument(help="ORG, org:ORG or key:HEX.")],
    role: Annotated[str, typer.Argument(help="owner, manufacturer, maintainer, auditor, device-agent, distributor "
                                             "or processing-service.")],  # fmt: skip
    home: Home,
    scope: Annotated[list[str], typer.Option("--scope", help="Limit to this AML component subtree (repeatable).")] = [],  # noqa: B006
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Give a subject a role on the twin (owner only)."""
    args = {"twin": _twin_id(home, ref), "subject": _subject(subject), "role": role, "scopes": scope}
    _write(home, key, "grant_role", args, wait, as_json, f"{_subject(subject)} is {role}", "authorization")


@role_app.command("revoke")
@command
def role_revoke(ref: Ref, subject: Annotated[str, typer.Argument(help="ORG, org:ORG or key:HEX.")],
                role: Annotated[str, typer.Argument(help="The role to take away.")], home: Home,
                key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Take a role away (owner only)."""
    args = {"twin": _twin_id(home, ref), "subject": _subject(subject), "role": role}
    _write(home, key, "revoke_role", args, wait, as_json, f"{_subject(subject)} is no longer {role}", "authorization")


@role_app.command("permissions")
@command
def role_permissions(ref: Ref, role: Annotated[str, typer.Argument(help="Role (not owner).")], home: Home,
                     methods: Annotated[list[str] | None, typer.Argument(help="Methods the role may call, e.g. "
                                                                                "document.add feed.add.")] = None,
                     key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Set the methods a role permits on this twin (owner only)."""
    args = {"twin": _twin_id(home, ref), "role": role, "methods": methods or []}
    _write(home, key, "set_permissions", args, wait, as_json, f"{role} may now: {', '.join(methods or []) or 'nothing'}",
           "authorization")  # fmt: skip


@twin_app.command("audit")
@command
def twin_audit(
    ref: Ref,
    home: Home,
    output: Annotated[Path | None, typer.Option("--out", help="Write the audit with its proofs to this file.")] = None,
    as_json: Json = False,
) -> None:
    """Every transaction that changed the twin, with inclusion proofs checked offline.

    Proofs are checked against the validators in this home's genesis."""
    from twinledger.core.proof import parse_proof, validators_hash, verify_proof
    from twinledger.ledger.genesis import Genesis

    entries = client(home).request("GET", f"/v1/twins/{ref}/audit", params={"proofs": "true"})["entries"]
    trusted = validators_hash(list(Genesis.read(load_config(home).genesis_path).validator_keys))
    for entry in entries:
        try:
            verified = verify_proof(parse_proof(json.dumps(entry["proof"]).encode()), trusted)
            entry["verified"] = verified.tx_hash.hex() == entry["tx"]
        except InvalidProof:
            entry["verified"] = False
    if output is not None:
        output.write_text(json.dumps({"twin": ref, "entries": entries}, indent=2, sort_keys=True) + "\n")
    if as_json:
        print_json({"twin": ref, "entries": entries})
    else:
        table = Table("#", "height", "time (ms)", "who", "what", "events", "proof", title=f"audit of twin {ref}",
                      title_justify="left")  # fmt: skip
        for entry in entries:
            table.add_row(str(entry["number"]), str(entry["height"]), str(entry["timestamp"]),
                          entry["organisation"] or entry["key"][:16] + "…", entry["method"], ", ".join(entry["events"]),
                          "[green]valid[/green]" if entry["verified"] else "[red]INVALID[/red]")  # fmt: skip
        out.print(table)
    if not all(entry["verified"] for entry in entries):
        error_line("error: some proofs do not verify")
        raise typer.Exit(1)


# -- membership -----------------------------------------------------------------------------------


@member_app.command("list")
@command
def member_list(home: Home, at: At = None, as_json: Json = False) -> None:
    """Organisations, their operator keys and nodes, administrators and open proposals."""
    view = client(home).request("GET", "/v1/members", params={"at": at} if at is not None else {})
    if as_json:
        print_json(view)
        return
    table = Table("organisation", "operators", "nodes", "KP-CPRE key", title=f"members at height {view['height']}",
                  title_justify="left")  # fmt: skip
    for org in view["organisations"]:
        nodes = ", ".join(f"{name} ({'/'.join(n['roles'])})" for name, n in sorted(org["nodes"].items()))
        table.add_row(org["name"], "\n".join(k[:16] + "…" for k in org["operators"]), nodes or "-",
                      "set" if org["kpcpre_key"] else "-")  # fmt: skip
    out.print(table)
    out.print(f"quorum: {view['quorum'] or 'majority'}; administrators: {len(view['admins'])}; "
              f"open proposals: {len(view['proposals'])}")  # fmt: skip


def _hex_key(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise TwinledgerError(f"{what} must be 64 hex digits (a 32-byte public key)")
    return raw


@member_app.command("add")
@command
def member_add(
    organisation: Annotated[str, typer.Argument(help="Organisation name.")],
    home: Home,
    operator: Annotated[list[str], typer.Option("--operator", help="Operator public key, hex (repeatable).")],
    encryption_key: Annotated[str, typer.Option("--encryption-key", help="Organisation X25519 public key, hex.")],
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Propose a new organisation (applies at once when signed by an administrator)."""
    change = {"op": "add_organisation", "name": organisation, "operators": [_hex_key(k, "--operator") for k in operator],
              "encryption_key": _hex_key(encryption_key, "--encryption-key")}  # fmt: skip
    _propose(home, key, change, as_json)


@member_app.command("remove")
@command
def member_remove(organisation: Annotated[str, typer.Argument(help="Organisation name.")], home: Home,
                  key: KeyFile = None, as_json: Json = False) -> None:  # fmt: skip
    """Propose removing an organisation and all its keys."""
    _propose(home, key, {"op": "remove_organisation", "name": organisation}, as_json)


def _propose(home: Path, key: Path | None, change: dict[str, Any], as_json: bool) -> None:
    view = transact(home, key, "membership", "propose", {"change": change})
    events = {e["type"]: e["data"] for e in view["receipt"]["events"]}
    applied = "MembershipChanged" in events
    result = {"applied": applied, "proposal": events.get("MembershipProposed", {}).get("proposal"),
              "tx": view["transaction"]["hash"]}  # fmt: skip
    if as_json:
        print_json(result)
    elif applied:
        out.print(f"{change['op']} applied")
    else:
        out.print(f"proposed {change['op']}; other organisations approve with: twinledger member approve {result['proposal']}")


@member_app.command("approve")
@command
def member_approve(proposal: Annotated[str, typer.Argument(help="Proposal id (hex).")], home: Home,
                   key: KeyFile = None, as_json: Json = False) -> None:  # fmt: skip
    """Approve another organisation's membership proposal."""
    view = transact(home, key, "membership", "approve", {"proposal": _hex_key(proposal, "the proposal id")})
    applied = any(e["type"] == "MembershipChanged" for e in view["receipt"]["events"])
    if as_json:
        print_json({"applied": applied, "tx": view["transaction"]["hash"]})
    else:
        out.print("approved; the change is applied" if applied else "approved; more approvals are needed")
