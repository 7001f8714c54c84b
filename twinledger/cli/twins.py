"""``twinledger twin …``: digital twins — specification, documents, sources, feeds,
program calls, roles and the audit. Writes are signed with the home's operator key (or
``--key``) and wait for the commit, so a refused call exits 1 with the contract's reason."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.tree import Tree

from twinledger.aml import model as specification_model
from twinledger.aml.package import MAX_PACKAGE_BYTES
from twinledger.cli.common import (
    STDIN,
    At,
    Attributes,
    DeviceDir,
    Home,
    Json,
    KeyFile,
    Organisations,
    Readers,
    Ref,
    Wait,
    client,
    command,
    err,
    error_line,
    input_file,
    kv_table,
    named,
    out,
    print_json,
    render_outcome,
    run,
    show_id,
)
from twinledger.cli.specification import aml_app
from twinledger.cli.storage import transfer_progress
from twinledger.core.files import read_regular, replace_durably
from twinledger.core.times import iso_ms
from twinledger.errors import TwinledgerError
from twinledger.services import documents, proofs, twins
from twinledger.services.access import device_keys
from twinledger.services.remote import segment
from twinledger.store.items import ItemAcl

twin_app = typer.Typer(no_args_is_help=True, help="Digital twins: specification, documents, feeds, programs, roles.")
doc_app = typer.Typer(no_args_is_help=True, help="Documents registered on the twin.")
source_app = typer.Typer(no_args_is_help=True, help="External data sources of the twin.")
feed_app = typer.Typer(no_args_is_help=True, help="Encrypted sensor feeds of components: add, push, read, follow, verify.")
role_app = typer.Typer(no_args_is_help=True, help="Who may do what on the twin.")
for sub, name in ((aml_app, "aml"), (doc_app, "doc"), (source_app, "source"), (feed_app, "feed"), (role_app, "role")):
    twin_app.add_typer(sub, name=name)

def _twin(home: Path, ref: str) -> dict[str, Any]:
    return client(home).request("GET", f"/v1/twins/{segment(ref)}")


# -- registry -------------------------------------------------------------------------------------


@twin_app.command("create")
@command
def twin_create(
    home: Home,
    aml: Annotated[Path, typer.Option("--aml", help="AutomationML file (CAEX 2.15 or 3.0), or an .amlx container "
                                      "whose other parts become the twin's documents; - for stdin.",
                                      allow_dash=True)],  # fmt: skip
    name: Annotated[str | None, typer.Option(help="Twin name (default: the file name).")] = None,
    device_id: Annotated[str | None, typer.Option("--device-id", help="Device id (default: the file's stem).")] = None,
    role: Annotated[list[str], typer.Option("--role", help="SUBJECT=ROLE or SUBJECT=ROLE@ID,ID (repeatable).")] = [],  # noqa: B006
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Register a twin from an AutomationML file; prints its id."""
    roles = twins.parse_roles(role)
    twin_name = named(aml, name, "--name")
    device = device_id or (aml.stem if aml != STDIN else named(aml, None, "--device-id"))
    with input_file(aml) as source:
        data = read_regular(source, MAX_PACKAGE_BYTES)[0]
    if len(data) > MAX_PACKAGE_BYTES:
        raise TwinledgerError(f"{twin_name} is larger than {MAX_PACKAGE_BYTES} bytes")
    created = run(home, lambda session: twins.create(session, data, twin_name, device, roles), key)
    if as_json:
        print_json({"id": created.twin, "tx": created.outcome.tx_hash.hex(), "height": created.outcome.height,
                    "documents": list(created.documents)})  # fmt: skip
    else:
        out.print(created.twin, highlight=False)
        if created.documents:
            err.print(f"{len(created.documents)} document(s) from the container", highlight=False)


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
    view = client(home).request("GET", f"/v1/twins/{segment(ref)}", params={"at": at} if at is not None else {})
    if as_json:
        print_json(view)
        return
    try:  # the document is off chain, readable by the twin's organisations
        specification: str | None = run(home, lambda s: twins.specification(s, view["id"], view["aml_version"])).decode()
    except TwinledgerError as exc:
        specification, unreadable = None, exc.message
    out.print(kv_table(f"twin {view['id']} at height {view['height']}", [
        ("name", view["name"]), ("device id", view["device_id"]), ("owner", view["owner"]),
        ("specification", f"version {view['aml_version']}, sha256 {view['aml_hash'][:16]}…"),
        ("created", f"height {view['created']['height']} by {view['created']['organisation'] or view['created']['key'][:16]}"),
    ]))  # fmt: skip
    if specification is not None:
        out.print(_component_tree(specification))
    else:
        err.print(f"the specification is not readable here: {unreadable}", highlight=False)
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
    if spec and specification is not None:
        out.print(specification, highlight=False, markup=False)


TREE_LIMIT = 200
"""Components a quick look shows; a plant model has thousands (``twin aml show`` has all)."""


def _component_tree(specification: str) -> Tree:
    """The components with their programs (their own and their classes'), for a quick look."""
    from lxml import etree

    data = specification.encode()
    root = etree.fromstring(data)
    programs: dict[str, list[str]] = {}
    for program in specification_model(data).programs:
        programs.setdefault(program.component_id or "", []).append(program.name)
    tree = Tree("specification")
    shown = [0]

    def walk(element: Any, branch: Tree) -> None:
        for child in element:
            if etree.QName(child).localname not in ("InstanceHierarchy", "InternalElement"):
                continue
            shown[0] += 1
            if shown[0] > TREE_LIMIT:
                continue
            node = branch.add(f"{child.get('Name')} [dim]{child.get('ID') or ''}[/dim]")
            for name in programs.get(child.get("ID") or "", []):
                node.add(f"[cyan]program[/cyan] {name}")
            walk(child, node)

    walk(root, tree)
    if shown[0] > TREE_LIMIT:
        tree.add(f"[dim]… {shown[0] - TREE_LIMIT} more (twin aml show prints the whole specification)[/dim]")
    return tree


def _print_documents(documents: list[dict[str, Any]], include_removed: bool) -> None:
    shown = [d for d in documents if include_removed or d["removed"] is None]
    if not shown:
        return
    with_attributes = any("attributes" in d for d in shown)
    table = Table("document", "title", "component", "versions", *(["attributes"] if with_attributes else []), "status",
                  title="documents", title_justify="left")  # fmt: skip
    for document in shown:
        status = "removed" if document["removed"] else "current"
        tags = [" ".join(a for a in document["attributes"] or ["?"] if not a.startswith("twin:"))] if with_attributes else []
        table.add_row(show_id(document["id"]), document["title"], document["component"] or "-",
                      str(len(document["versions"])), *tags, status)  # fmt: skip
    out.print(table)


def _print_calls(calls: list[dict[str, Any]], title: str) -> None:
    table = Table("#", "program", "parameters", "status", "result", title=title, title_justify="left")
    for entry in calls:
        table.add_row(str(entry["number"]), entry["program"], json.dumps(entry["params"], sort_keys=True),
                      entry["status"], entry["result"])  # fmt: skip
    out.print(table)


# -- documents, sources, feeds --------------------------------------------------------------------


FileArg = Annotated[Path, typer.Argument(metavar="FILE", help="The document's file; - for stdin.", allow_dash=True)]


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
    chosen_title = named(file, title, "--title")
    with input_file(file) as source, transfer_progress(f"encrypting {chosen_title}", source.stat().st_size,
                                                       as_json) as advance:  # fmt: skip
        added = run(home, lambda session: documents.add(session, ref, source, chosen_title,
                                                        description=description, component=component,
                                                        media_type=media_type, readers=reader, attributes=attribute,
                                                        progress=advance), key)  # fmt: skip
    stored = added.stored
    if as_json:
        print_json({"document": added.document, "reference": stored.reference, "size": stored.size,
                    "readers": list(stored.readers), "tx": added.outcome.tx_hash.hex()})  # fmt: skip
    else:
        out.print(added.document, highlight=False)


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
    with input_file(file) as source, transfer_progress(f"encrypting {source.name}", source.stat().st_size,
                                                       as_json) as advance:  # fmt: skip
        added = run(home, lambda session: documents.add_version(session, ref, document, source, description=description,
                                                                readers=reader, attributes=attribute,
                                                                progress=advance), key)  # fmt: skip
    render_outcome(added.outcome, as_json, f"added version {added.stored.manifest.hex()[:16]}…")


@doc_app.command("get")
@command
def doc_get(
    ref: Ref,
    document: Annotated[str, typer.Argument(help="Document id (or a unique prefix of at least 8 digits).")],
    home: Home,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the document; - for stdout.",
                                         dir_okay=False, allow_dash=True)],  # fmt: skip
    version: Annotated[int | None, typer.Option(help="Version number (default: the latest).", min=1)] = None,
    device: DeviceDir = None,
    as_json: Json = False,
) -> None:
    """Fetch a document from the store, check it against the chain and decrypt it."""
    to_stdout = str(output) == "-"
    if to_stdout and as_json:
        raise TwinledgerError("-o - and --json would both write to stdout; choose one", code="bad_request")
    number, chosen = documents.version_of(documents.find(_twin(home, ref), document), version)
    keys = device_keys(device) if device is not None else None
    with tempfile.TemporaryDirectory(prefix="twinledger-doc-") as scratch:
        target = Path(scratch) / "document" if to_stdout else output
        with transfer_progress(f"fetching {document[:16]}", chosen["size"], as_json) as advance:
            read = run(home, lambda session: documents.get(session, ref, document, target, number, keys, advance))
        if to_stdout:  # verified whole before a byte goes out
            with target.open("rb") as source:
                shutil.copyfileobj(source, sys.stdout.buffer)
            sys.stdout.flush()
    if as_json:
        print_json({"document": read.document, "version": read.version, "path": str(output), "size": read.size,
                    "hash": read.hash})  # fmt: skip
    else:
        (err if to_stdout else out).print(f"wrote {'stdout' if to_stdout else output} ({read.size:,} bytes, version "
                                          f"{read.version}, verified against the chain)", highlight=False)  # fmt: skip


def print_readers(acls: list[ItemAcl], removed: list[str], what: str, as_json: bool) -> None:
    """Report the readers of items after a change of their ACLs."""
    readers = sorted({r.organisation for acl in acls for r in acl.readers})
    if as_json:
        print_json({"items": [acl.item.hex() for acl in acls], "versions": [acl.version for acl in acls],
                    "readers": readers})  # fmt: skip
        return
    out.print(f"{what}: readers now {', '.join(readers)} ({len(acls)} item(s))", highlight=False)
    if removed:
        out.print(f"store nodes refuse {', '.join(removed)} from now on; a copy taken before stays readable to it, "
                  "so store a new version for data it must no longer read", highlight=False)  # fmt: skip


@doc_app.command("share")
@command
def doc_share(ref: Ref, document: Annotated[str, typer.Argument(help="Document id (or a unique prefix).")],
              organisations: Organisations, home: Home,
              version: Annotated[int | None, typer.Option(help="Only this version (default: all).", min=1)] = None,
              key: KeyFile = None, as_json: Json = False) -> None:  # fmt: skip
    """Let more organisations read a document: its data key is sealed to each of them."""
    title = documents.find(_twin(home, ref), document)["title"]
    acls = run(home, lambda session: documents.change_readers(session, ref, document, version, organisations, []), key)
    print_readers(acls, [], f"shared {title}", as_json)


@doc_app.command("unshare")
@command
def doc_unshare(ref: Ref, document: Annotated[str, typer.Argument(help="Document id (or a unique prefix).")],
                organisations: Organisations, home: Home,
                version: Annotated[int | None, typer.Option(help="Only this version (default: all).", min=1)] = None,
                key: KeyFile = None, as_json: Json = False) -> None:  # fmt: skip
    """Take organisations off a document's readers; store nodes refuse their reads from then on."""
    title = documents.find(_twin(home, ref), document)["title"]
    acls = run(home, lambda session: documents.change_readers(session, ref, document, version, [], organisations), key)
    print_readers(acls, organisations, f"unshared {title}", as_json)


@doc_app.command("remove")
@command
def doc_remove(ref: Ref, document: Annotated[str, typer.Argument(help="Document id.")], home: Home,
               key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Mark a document removed (its versions stay in the history)."""
    render_outcome(run(home, lambda session: documents.remove(session, ref, document, wait), key), as_json,
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
    listing = run(home, lambda session: documents.listed(session, ref, include_removed, at))
    if as_json:
        print_json(listing)
    elif listing:
        _print_documents(listing, include_removed)
    else:
        out.print("no documents")


@source_app.command("add")
@command
def source_add(ref: Ref, uri: Annotated[str, typer.Argument(help="URI of the source.")], home: Home,
               description: Annotated[str, typer.Option(help="What the source provides.")] = "",
               key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Add an external data source."""
    render_outcome(run(home, lambda session: twins.add_source(session, ref, uri, description, wait), key), as_json,
                   f"added source {uri}")  # fmt: skip


@source_app.command("remove")
@command
def source_remove(ref: Ref, uri: Annotated[str, typer.Argument(help="URI of the source.")], home: Home,
                  key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Remove an external data source."""
    render_outcome(run(home, lambda session: twins.remove_source(session, ref, uri, wait), key), as_json,
                   f"removed source {uri}")  # fmt: skip


# -- programs -------------------------------------------------------------------------------------


@twin_app.command("call")
@command
def twin_call(
    ref: Ref,
    program: Annotated[str, typer.Argument(help="Program path (Plant/Line1/Conveyor/SetVelocity) or a unique tail "
                                           "of it (SetVelocity); `twin programs` lists them.")],  # fmt: skip
    home: Home,
    params: Annotated[list[str] | None, typer.Argument(help="Parameters NAME=VALUE.")] = None,
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Queue a program call for the device, checked against the specification's safety rules."""
    arguments = dict(twins.parse_param(p) for p in params or [])
    outcome = run(home, lambda session: twins.call_program(session, ref, program, arguments, wait), key)
    if as_json or not outcome.committed:
        render_outcome(outcome, as_json, "")
        return
    event = outcome.event("ProgramCalled")
    out.print(f"queued call {event['call']}: {event['program']} {json.dumps(event['params'], sort_keys=True)}",
              highlight=False)  # fmt: skip


def _rule(parameter: dict[str, Any]) -> str:
    """``0 … 2.5 m/s``, ``one of forward, stop``: a parameter's safety rule as people write it."""
    low, high = parameter["minimum"], parameter["maximum"]
    span = f"{'' if low is None else format(float(low), 'g')} … {'' if high is None else format(float(high), 'g')}"
    parts = [span.strip() if low is not None or high is not None else "",
             f"one of {', '.join(parameter['allowed'])}" if parameter["allowed"] else "", parameter["unit"] or ""]
    return " ".join(p for p in parts if p) or "any"


@twin_app.command("programs")
@command
def twin_programs(ref: Ref, home: Home, as_json: Json = False) -> None:
    """The twin's programs with their parameters and safety rules, by full path."""
    found = run(home, lambda session: twins.programs(session, ref))
    if as_json:
        print_json({"programs": found})
        return
    table = Table("program", "parameter", "type", "safe values", "from class", title="programs", title_justify="left")
    none = {"name": "-", "type": "", "minimum": None, "maximum": None, "allowed": [], "unit": None}
    for program in found:
        for number, parameter in enumerate(program["parameters"] or [none]):
            table.add_row(program["path"] if number == 0 else "", parameter["name"], parameter["type"], _rule(parameter),
                          program["declared_in"] if number == 0 else "")  # fmt: skip
    out.print(table)


@twin_app.command("calls")
@command
def twin_calls(
    ref: Ref,
    home: Home,
    status: Annotated[str | None, typer.Option(help="Only calls with this status.")] = None,
    as_json: Json = False,
) -> None:
    """Program calls and their status."""
    calls = client(home).request("GET", f"/v1/twins/{segment(ref)}/calls", params={"status": status} if status else {})["calls"]
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
    outcome = run(home, lambda session: twins.report_call(session, ref, call, status, result, wait), key)
    render_outcome(outcome, as_json, f"call {call} {status}")


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
    outcome = run(home, lambda session: twins.grant_role(session, ref, subject, role, scope, wait), key)
    render_outcome(outcome, as_json, f"{twins.subject(subject)} is {role}")


@role_app.command("revoke")
@command
def role_revoke(ref: Ref, subject: Annotated[str, typer.Argument(help="ORG, org:ORG or key:HEX.")],
                role: Annotated[str, typer.Argument(help="The role to take away.")], home: Home,
                key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Take a role away (owner only)."""
    outcome = run(home, lambda session: twins.revoke_role(session, ref, subject, role, wait), key)
    render_outcome(outcome, as_json, f"{twins.subject(subject)} is no longer {role}")


@role_app.command("permissions")
@command
def role_permissions(ref: Ref, role: Annotated[str, typer.Argument(help="Role (not owner).")], home: Home,
                     methods: Annotated[list[str] | None, typer.Argument(help="Methods the role may call, e.g. "
                                                                                "document.add feed.add.")] = None,
                     key: KeyFile = None, wait: Wait = True, as_json: Json = False) -> None:  # fmt: skip
    """Set the methods a role permits on this twin (owner only)."""
    outcome = run(home, lambda session: twins.set_permissions(session, ref, role, methods or [], wait), key)
    render_outcome(outcome, as_json, f"{role} may now: {', '.join(methods or []) or 'nothing'}")


@twin_app.command("audit")
@command
def twin_audit(
    ref: Ref,
    home: Home,
    output: Annotated[Path | None, typer.Option("--out", help="Write the audit with its proofs to this file (for verify "
                                                "proof); - for stdout.", allow_dash=True)] = None,  # fmt: skip
    as_json: Json = False,
) -> None:
    """Every transaction that changed the twin, with inclusion proofs checked offline.

    Proofs are checked against the validators in this home's genesis."""
    audit = run(home, lambda session: twins.audit(session, ref))
    entries = audit.entries
    document = proofs.audit_document(audit.twin, entries)
    if output == STDIN and as_json:
        raise TwinledgerError("--out - and --json would both write to stdout; choose one", code="bad_request")
    if output == STDIN:  # the document alone: a table would break it
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    elif output is not None:
        replace_durably(output, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    if as_json:
        print_json(document)
    elif output != STDIN:
        table = Table("#", "height", "time (UTC)", "who", "what", "events", "proof", title=f"audit of twin {ref}",
                      title_justify="left")  # fmt: skip
        for entry in entries:
            table.add_row(str(entry["number"]), str(entry["height"]), iso_ms(entry["timestamp"]),
                          _who(entry), entry["method"], ", ".join(entry["events"]),
                          "[green]valid[/green]" if entry["verified"] else "[red]INVALID[/red]")  # fmt: skip
        out.print(table)
    if not all(entry["verified"] for entry in entries):
        error_line("error: some proofs do not verify")
        raise typer.Exit(1)


def _who(entry: dict[str, Any]) -> str:
    """Who made an audited change: organisation/principal, the organisation, or the key."""
    if entry.get("principal"):
        return f"{entry['organisation']}/{entry['principal']}"
    if entry.get("device"):
        return f"device {entry['device']}"
    return str(entry["organisation"] or show_id(entry["key"]))
