"""``twinledger twin aml``: a twin's AutomationML specification — edits, versions, diffs,
and export back to the engineering tool as ``.aml`` or ``.amlx``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from twinledger import aml
from twinledger.aml.package import MAX_PACKAGE_BYTES
from twinledger.cli.common import (
    Home,
    Json,
    KeyFile,
    Ref,
    Wait,
    client,
    command,
    err,
    out,
    print_json,
    render_outcome,
    run,
    show_id,
)
from twinledger.core.files import read_regular, replace_durably
from twinledger.errors import TwinledgerError
from twinledger.services import twins
from twinledger.services.remote import segment

aml_app = typer.Typer(no_args_is_help=True, help="The twin's AutomationML specification and its versions.")


@aml_app.command("insert")
@command
def aml_insert(
    ref: Ref,
    home: Home,
    fragment: Annotated[Path, typer.Option("--fragment", help="File holding one AML element.", exists=True,
                                           dir_okay=False)],  # fmt: skip
    parent: Annotated[str, typer.Option("--parent", help="ID (or name path) of the element to insert under.")],
    after: Annotated[str | None, typer.Option("--after", help="ID (or name path) of the sibling to insert after "
                                              "(default: first of its kind).")] = None,  # fmt: skip
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Insert an element into the specification."""
    outcome = run(home, lambda session: twins.insert_aml(session, ref, fragment.read_bytes(), parent, after, wait), key)
    render_outcome(outcome, as_json, f"inserted under {parent}")


@aml_app.command("remove")
@command
def aml_remove(
    ref: Ref,
    element: Annotated[str, typer.Argument(help="ID (or name path) of the element to remove.")],
    home: Home,
    with_links: Annotated[bool, typer.Option("--with-links", help="Also remove InternalLinks elsewhere that point "
                                             "into the element (refused otherwise).")] = False,  # fmt: skip
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Remove an element (and everything in it) from the specification."""
    links = "remove" if with_links else "refuse"
    outcome = run(home, lambda session: twins.remove_aml(session, ref, element, wait, links), key)
    removed = outcome.event("AmlRemoved").get("links") or [] if outcome.committed else []
    render_outcome(outcome, as_json, f"removed {element}" + (f" and {len(removed)} link(s) into it" if removed else ""))


@aml_app.command("replace")
@command
def aml_replace(
    ref: Ref,
    file: Annotated[Path, typer.Argument(help="The new AutomationML file (.aml) or container (.amlx).", exists=True,
                                         dir_okay=False)],  # fmt: skip
    home: Home,
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Put a whole new specification in place: the engineering tool's new export, or a good
    version in place of one that does not give the model on chain (needs the right to
    insert and remove over the whole twin)."""
    data = read_regular(file, MAX_PACKAGE_BYTES)[0]
    root = aml.read_package(data).specification if aml.is_package(data) else data
    outcome = run(home, lambda session: twins.replace(session, ref, root, wait), key)
    render_outcome(outcome, as_json, f"replaced the specification of {ref} with {file.name}")


@aml_app.command("export")
@command
def aml_export(
    ref: Ref,
    home: Home,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write: .aml, or .amlx for a container with "
                                         "the twin's documents named like parts (/files/…).", dir_okay=False)],  # fmt: skip
    version: Annotated[int | None, typer.Option(help="Version (default: current).", min=1)] = None,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Write a version of the specification as AutomationML, for engineering tools."""
    package = output.suffix.lower() == ".amlx"
    exported = run(home, lambda session: twins.export(session, ref, version, package), key)
    replace_durably(output, exported.data)
    if as_json:
        print_json({"path": str(output), "version": exported.version, "size": len(exported.data),
                    "parts": list(exported.parts), "skipped": list(exported.skipped)})  # fmt: skip
    else:
        parts = f" with {len(exported.parts)} document(s)" if package else ""
        out.print(f"version {exported.version} written to {output}{parts}", highlight=False)
        for reason in exported.skipped:
            err.print(f"not packed: {reason}", highlight=False)


@aml_app.command("history")
@command
def aml_history(ref: Ref, home: Home, as_json: Json = False) -> None:
    """Every version of the specification: who changed what, when."""
    versions = client(home).request("GET", f"/v1/twins/{segment(ref)}/history")["versions"]
    if as_json:
        print_json(versions)
        return
    table = Table("version", "change", "element", "by", "height", "tx", title="specification history",
                  title_justify="left")  # fmt: skip
    for v in versions:
        target = v["element"] + (f" under {v['parent']}" if v["parent"] else "")
        table.add_row(str(v["version"]), v["change"], target or "-", v["organisation"] or show_id(v["key"]),
                      str(v["height"]), show_id(v["tx"]))  # fmt: skip
    out.print(table)


@aml_app.command("verify")
@command
def aml_verify(ref: Ref, home: Home, as_json: Json = False) -> None:
    """Read every version of the specification back from the store and check it against
    the chain: hashes, sizes, each library, and the current model. Exits 1 if any fails."""
    total = int(client(home).request("GET", f"/v1/twins/{segment(ref)}")["aml_version"])
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                        transient=True, disable=as_json or not err.is_terminal)  # fmt: skip
    with progress:
        task = progress.add_task("reading versions", total=total)
        checks = run(home, lambda session: twins.verify_specification(session, ref, lambda n: progress.advance(task, n)))
    failed = [c for c in checks if c.problem is not None]
    if as_json:
        print_json([{"version": c.version, "writer": c.writer, "size": c.size, "libraries": c.libraries,
                     "intact": c.problem is None, "problem": c.problem} for c in checks])  # fmt: skip
    else:
        table = Table("version", "by", "size", "libraries", "state", title="specification in the store",
                      title_justify="left")  # fmt: skip
        for c in checks:
            state = "[green]intact[/]" if c.problem is None else f"[red]{escape(c.problem)}[/]"
            table.add_row(str(c.version), escape(c.writer), f"{c.size:,}", str(c.libraries), state)
        out.print(table)
    if failed:
        raise TwinledgerError(f"{len(failed)} of {len(checks)} versions are not what the chain records: "
                              f"version {failed[0].version}: {failed[0].problem}", code="specification_mismatch")  # fmt: skip
    if not as_json:
        out.print(f"all {len(checks)} versions intact", highlight=False)


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
    text = run(home, lambda session: twins.diff(session, ref, old, new))
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
    """Print a version of the specification as XML: its stored form, byte for byte (so
    ``> plant.aml`` keeps it), read from the store and checked against the chain."""
    data = run(home, lambda session: twins.specification(session, ref, version))
    sys.stdout.buffer.write(data + (b"\n" if sys.stdout.isatty() else b""))
    sys.stdout.flush()
