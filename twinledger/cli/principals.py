"""``twinledger principal …`` and ``twinledger api-token …``: the people and programs of
the organisation who use its node's API, and programs' API tokens."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from twinledger.cli.common import Home, Json, command, out, print_json, run, show_id
from twinledger.contracts.principals import PRINCIPAL_ROLES
from twinledger.core.files import create_new
from twinledger.core.times import parse_time
from twinledger.errors import BadRequest, TwinledgerError
from twinledger.services import principals
from twinledger.services.session import read_signing_key

principal_app = typer.Typer(no_args_is_help=True, help="People and programs of the organisation, with their roles.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens of programs (not write tokens: see token).")
Scopes = Annotated[list[str], typer.Option("--scope", help="API scope: read, write or admin (repeatable).")]


def _password(path: Path | None) -> str:
    if path is not None:
        return path.read_text().rstrip("\n")
    if not os.isatty(0):
        raise BadRequest("give the person's password with --password-file (no terminal to ask on)")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


@principal_app.command("add")
@command
def principal_add(
    name: Annotated[str, typer.Argument(help="Unique within the organisation, e.g. alice or mes.")],
    home: Home,
    kind: Annotated[str, typer.Option("--kind", help="person or program.")] = "program",
    scope: Scopes = ["read"],  # noqa: B006
    role: Annotated[list[str], typer.Option("--role", help=f"Principal role on chain: {', '.join(PRINCIPAL_ROLES)} "
                                                           "(repeatable).")] = [],  # noqa: B006
    password_file: Annotated[Path | None, typer.Option("--password-file", help="A person's password (first line); "
                                                                               "default: asked.", dir_okay=False,
                                                       exists=True)] = None,  # fmt: skip
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Its own Ed25519 key file: it signs its consent "
                                                                     "here and stays here (default: the node makes a "
                                                                     "key and keeps it sealed).", dir_okay=False,
                                                  exists=True)] = None,  # fmt: skip
    as_json: Json = False,
) -> None:
    """Add a person or a program: registered on chain with its roles, able to use the API
    with its scopes (a person logs in; a program needs an API token: api-token issue)."""
    password = _password(password_file) if kind == "person" else None
    own = read_signing_key(key_file) if key_file is not None else None
    made = run(home, lambda session: principals.add(session, name, kind, scope, role, password, own))
    if as_json:
        print_json(made)
    else:
        out.print(f"{kind} {name}: key {made['key'][:16]}…, scopes {', '.join(made['scopes'])}, roles "
                  f"{', '.join(made['roles']) or 'none'} (block {made['block']})", highlight=False)  # fmt: skip


@principal_app.command("list")
@command
def principal_list(home: Home, as_json: Json = False) -> None:
    """The node's principals."""
    listed = run(home, principals.listing)
    if as_json:
        print_json(listed)
        return
    table = Table("name", "kind", "key", "scopes", "key held by node", "status", title="principals",
                  title_justify="left")  # fmt: skip
    for p in listed:
        table.add_row(p["name"], p["kind"], show_id(p["key"]), ", ".join(p["scopes"]),
                      "yes" if p["key_held_by_node"] else "no", "disabled" if p["disabled"] else "active")  # fmt: skip
    out.print(table)


@principal_app.command("remove")
@command
def principal_remove(name: Annotated[str, typer.Argument(help="The principal.")], home: Home,
                     as_json: Json = False) -> None:  # fmt: skip
    """End a principal: its tokens and sessions stop at once, its key stops acting on chain."""
    done = run(home, lambda session: principals.remove(session, name))
    if as_json:
        print_json(done)
    else:
        out.print(f"{name} is disabled; its key no longer acts for the organisation (block {done['block']})",
                  highlight=False)  # fmt: skip


@token_app.command("issue")
@command
def token_issue(
    home: Home,
    principal: Annotated[str, typer.Option("--principal", help="The program (or person) the token acts as.")],
    scope: Scopes = [],  # noqa: B006
    until: Annotated[str | None, typer.Option("--until", help="When it expires, ISO 8601 (default: never).")] = None,
    label: Annotated[str, typer.Option("--label", help="What it is for.")] = "",
    output: Annotated[Path | None, typer.Option("--out", help="Write the token to this file (mode 0600) instead of "
                                                              "printing it.", dir_okay=False)] = None,  # fmt: skip
    as_json: Json = False,
) -> None:
    """Issue an API token; its secret is shown (or written) once and kept nowhere else."""
    if output is not None and output.exists():
        raise TwinledgerError(f"{output} exists; choose another file", code="exists")
    expires = parse_time(until) // 1000 if until else 0
    issued = run(home, lambda session: principals.issue_token(session, principal, scope, expires, label))
    if output is not None:
        with create_new(output) as handle:
            handle.write((issued["token"] + "\n").encode())
        issued = {k: v for k, v in issued.items() if k != "token"} | {"file": str(output)}
    if as_json:
        print_json(issued)
    elif output is not None:
        out.print(f"token {issued['id']} for {principal} ({', '.join(issued['scopes'])}) written to {output}",
                  highlight=False)  # fmt: skip
    else:
        out.print(issued["token"], highlight=False, soft_wrap=True)


@token_app.command("list")
@command
def token_list(home: Home, principal: Annotated[str | None, typer.Option("--principal")] = None,
               as_json: Json = False) -> None:  # fmt: skip
    """API tokens (never their secrets)."""
    listed = run(home, lambda session: principals.tokens(session, principal))
    if as_json:
        print_json(listed)
        return
    table = Table("id", "principal", "scopes", "expires", "status", "label", title="API tokens", title_justify="left")
    for t in listed:
        table.add_row(t["id"], t["principal"], ", ".join(t["scopes"]), str(t["expires"] or "never"),
                      "revoked" if t["revoked"] else "active", t["label"])  # fmt: skip
    out.print(table)


@token_app.command("revoke")
@command
def token_revoke(token_id: Annotated[str, typer.Argument(help="The token's id (api-token list).")], home: Home,
                 as_json: Json = False) -> None:  # fmt: skip
    """Revoke an API token at once."""
    done = run(home, lambda session: principals.revoke_token(session, token_id))
    if as_json:
        print_json(done)
    else:
        out.print(f"revoked API token {token_id}", highlight=False)
