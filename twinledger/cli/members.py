"""``twinledger member …``: consortium membership — the organisations, their keys and
nodes, and proposals to change them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from twinledger.cli.common import At, Home, Json, KeyFile, client, command, out, print_json, run, show_id
from twinledger.errors import parse_hex
from twinledger.services import membership

member_app = typer.Typer(no_args_is_help=True, help="Consortium membership.")


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
        table.add_row(org["name"], "\n".join(show_id(k) for k in org["operators"]), nodes or "-",
                      "set" if org["kpcpre_key"] else "-")  # fmt: skip
    out.print(table)
    out.print(f"quorum: {view['quorum'] or 'majority'}; administrators: {len(view['admins'])}; "
              f"open proposals: {len(view['proposals'])}")  # fmt: skip


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
    change = membership.add_organisation(organisation, [parse_hex(k, "--operator") for k in operator],
                                         parse_hex(encryption_key, "--encryption-key"))  # fmt: skip
    _propose(home, key, change, as_json)


@member_app.command("remove")
@command
def member_remove(organisation: Annotated[str, typer.Argument(help="Organisation name.")], home: Home,
                  key: KeyFile = None, as_json: Json = False) -> None:  # fmt: skip
    """Propose removing an organisation and all its keys."""
    _propose(home, key, membership.remove_organisation(organisation), as_json)


def _propose(home: Path, key: Path | None, change: dict[str, Any], as_json: bool) -> None:
    proposed = run(home, lambda session: membership.propose(session, change), key)
    if as_json:
        print_json({"applied": proposed.applied, "proposal": proposed.proposal, "tx": proposed.tx})
    elif proposed.applied:
        out.print(f"{change['op']} applied")
    else:
        out.print(f"proposed {change['op']}; other organisations approve with: twinledger member approve "
                  f"{proposed.proposal}")  # fmt: skip


@member_app.command("approve")
@command
def member_approve(proposal: Annotated[str, typer.Argument(help="Proposal id (hex).")], home: Home,
                   key: KeyFile = None, as_json: Json = False) -> None:  # fmt: skip
    """Approve another organisation's membership proposal."""
    approved = run(home, lambda session: membership.approve(session, parse_hex(proposal, "the proposal id")), key)
    if as_json:
        print_json({"applied": approved.applied, "tx": approved.tx})
    else:
        out.print("approved; the change is applied" if approved.applied else "approved; more approvals are needed")
