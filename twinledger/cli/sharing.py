"""``twinledger grant``, ``revoke``, ``grants`` and ``token``: fine-grained read access
through proxies, and write tokens.

The workflows are ``services.access``, ``services.tokens``, ``services.devices`` and
``services.requests``; a recipient's ``twin doc get`` reads through the proxies
(docs/sharing.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from twinledger.cli.common import Home, Json, KeyFile, client, command, out, print_json, run, show_id
from twinledger.core.text import plural
from twinledger.core.times import iso_ms, parse_time
from twinledger.errors import TwinledgerError
from twinledger.services import access, coverage, devices, requests, tokens
from twinledger.services.access import device_keys
from twinledger.services.remote import segment

Proxies = Annotated[list[str], typer.Option("--proxy", help="Proxy node ORG/NODE to hold the key (repeatable; default: "
                                                            "every proxy node of the granting organisation).")]



@command
def grant(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    to: Annotated[str, typer.Option("--to", help="Organisation that may read, or device:NAME of the twin.")],
    policy: Annotated[str, typer.Option("--policy", help='Which data, e.g. "kind:document and type:report".')],
    until: Annotated[str | None, typer.Option("--until", help="End of the grant, ISO 8601 (default: none).")] = None,
    proxy: Proxies = [],  # noqa: B006
    declare: Annotated[list[str], typer.Option("--declare", help="A new attribute key the policy may use, for data "
                                                                 "still to come (repeatable).")] = [],  # noqa: B006  # fmt: skip
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what the grant would cover; make nothing.")] = False,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Let another organisation read the twin's data that satisfies a policy.

    The policy is confined to the twin (twin:ID is added if it does not require it); the
    re-encryption key is made here, its hash recorded on chain, and the key handed to
    the proxies, which re-encrypt only while the grant is active. --dry-run lists the
    documents and feeds it would cover.

    Example: twinledger grant --twin line-7 --to auditor --policy 'kind:document and type:report'
    """
    if dry_run:
        covers = run(home, lambda session: coverage.preview(session, twin, policy, declare), key)
        _print_coverage(covers, to, as_json)
        return
    valid_until = parse_time(until) // 1000 if until else 0
    made = run(home, lambda session: access.grant(session, twin, to, policy, valid_until, proxy, declare), key)
    if as_json:
        print_json({"grant": made.grant, "twin": made.twin, "recipient": made.recipient, "policy": made.policy,
                    "valid_until": made.valid_until, "proxies": made.proxies, "block": made.block,
                    "covered": made.covered, "unmatched": made.unmatched})  # fmt: skip
        return
    out.print(made.grant, highlight=False)
    out.print(f"{to} may read data of twin {made.twin} where: {made.policy}", highlight=False)
    out.print(f"  covers {plural(len(made.covered), 'item')} now" + (f": {', '.join(made.covered)}" if made.covered else ""),
              highlight=False)  # fmt: skip
    if made.unmatched:
        out.print(f"  no item carries {', '.join(made.unmatched)} yet", highlight=False)
    for label, outcome in made.proxies.items():
        out.print(f"  proxy {label}: {outcome}", highlight=False)


def _print_coverage(covers: coverage.Coverage, to: str, as_json: bool) -> None:
    def view(item: coverage.TwinItem) -> dict[str, Any]:
        return {"kind": item.kind, "name": item.name, "item": item.acl.item.hex(), "attributes": list(item.attributes),
                "epochs": len(item.acl.retired) + 1}  # fmt: skip

    if as_json:
        print_json({"twin": covers.twin, "recipient": to, "policy": covers.policy, "generations": covers.generations,
                    "covered": [view(i) for i in covers.covered], "not_covered": [view(i) for i in covers.uncovered],
                    "unmatched": covers.unmatched})  # fmt: skip
        return
    out.print(f"a grant to {to} where {covers.policy} would cover {plural(len(covers.covered), 'item')} of "
              f"{len(covers.covered) + len(covers.uncovered)}, every epoch of them (access generations 0 to "
              f"{covers.generations - 1}) and what is written from now on:", highlight=False)  # fmt: skip
    table = Table("covered", "kind", "name", "epochs", "attributes", title_justify="left")
    for item in covers.covered + covers.uncovered:
        table.add_row("yes" if item in covers.covered else "no", item.kind, item.name,
                      str(len(item.acl.retired) + 1), " ".join(item.attributes))  # fmt: skip
    out.print(table)
    if covers.unmatched:
        out.print(f"no item carries {', '.join(covers.unmatched)} yet: that part covers data still to come",
                  highlight=False)  # fmt: skip


def shown_status(grant: dict[str, Any]) -> str:
    """A grant's status as people mean it: one past its end is expired, even before the
    block that ends it on chain."""
    return "expired" if grant.get("past_end") else str(grant["status"])


@command
def who_reads(
    twin: Annotated[str, typer.Argument(help="Twin id or device id.")],
    home: Home,
    as_json: Json = False,
) -> None:
    """Who reads each document and feed of the twin: the organisations it is sealed to, and
    every grant that covers it (active or expired, with its end)."""
    found, rows, missing = run(home, lambda session: coverage.who_reads(session, twin))
    if as_json:
        print_json({"twin": found["id"], "items": [
            {"kind": r.item.kind, "name": r.item.name, "item": r.item.acl.item.hex(), "attributes": list(r.item.attributes),
             "readers": r.readers, "earlier_readers": r.earlier_readers,
             "grants": [{"grant": g["id"], "recipient": g["recipient"], "status": shown_status(g),
                                               "valid_until": g["valid_until"], "policy": g["policy_text"]}
                                              for g in r.grants]} for r in rows],
                    "unavailable": [{"kind": m.kind, "name": m.name, "why": m.why} for m in missing]})  # fmt: skip
        return
    table = Table("kind", "name", "attributes", "readers (sealed to)", "through grants", title=f"who reads twin {found['id']}",
                  title_justify="left")  # fmt: skip
    for row in rows:
        through = [f"{g['recipient']} ({g['id'][:8]}, {shown_status(g)}"
                   + (f" until {iso_ms(g['valid_until'])}" if g["valid_until"] else "") + ")" for g in row.grants]  # fmt: skip
        earlier = f"\n(earlier epochs: {', '.join(row.earlier_readers)})" if row.earlier_readers else ""
        table.add_row(row.item.kind, row.item.name, " ".join(row.item.attributes), ", ".join(row.readers) + earlier,
                      "\n".join(through) or "—")  # fmt: skip
    for gone in missing:
        table.add_row(gone.kind, gone.name, "?", f"unknown: {gone.why}", "?")
    out.print(table)
    if missing:
        raise TwinledgerError(f"the store did not give the ACL of {plural(len(missing), 'item')}: who reads them is "
                              "not shown", code="store_unavailable")  # fmt: skip


@command
def revoke(
    grant_id: Annotated[str, typer.Argument(help="Grant id (or a unique prefix of at least 8 digits).")],
    home: Home,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """End a grant: proxies delete its keys and refuse, store nodes stop serving its data.

    The twin starts a new access generation: its other active grants get keys for it, its
    feeds this key owns get a new data key at once (a device's feeds get theirs from the
    device before it appends again), and nothing written from now on opens with the
    revoked party's keys, even with a proxy's help."""
    revoked = run(home, lambda session: access.revoke(session, grant_id), key)
    chosen, rotated, failed = revoked.grant, revoked.rotated, revoked.not_rotated
    unkeyed = {g: outcome for g, outcome in revoked.rekeyed.items() if "held" not in outcome.values()}
    if as_json:
        print_json({"grant": chosen["id"], "status": "revoked", "block": revoked.block, "generation": revoked.generation,
                    "rekeyed": revoked.rekeyed, "feeds_rotated": rotated, "feeds_not_rotated": failed,
                    "feeds_left_to_their_writers": revoked.left_to_writers})  # fmt: skip
    else:
        out.print(f"revoked grant {chosen['id'][:16]}… of {chosen['recipient']} (block {revoked.block}); twin "
                  f"{chosen['twin']} is in access generation {revoked.generation}", highlight=False)  # fmt: skip
        out.print(f"  {len(revoked.rekeyed)} other active grant(s) re-keyed; {len(rotated)} feed(s) have a new key"
                  + (f"; {len(revoked.left_to_writers)} device feed(s) get one from their device"
                     if revoked.left_to_writers else ""), highlight=False)  # fmt: skip
    if unkeyed:
        raise TwinledgerError("the grant is revoked, but no proxy took the new key of grant(s) "
                              + ", ".join(g[:16] for g in unkeyed) + ": grant them anew", code="rekey_failed")  # fmt: skip
    if failed:
        raise TwinledgerError("the grant is revoked, but feed(s) " + "; ".join(f"{c}: {why}" for c, why in failed.items())
                              + " kept their key: run twin feed rotate", code="rotation_failed")  # fmt: skip


@command
def rekey(
    twin: Annotated[str, typer.Argument(help="Twin id or device id.")],
    home: Home,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Give the twin's active grants keys for its current access generation (after a grant
    expired; revoke does it by itself)."""
    done = run(home, lambda session: access.rekey(session, twin), key)
    if as_json:
        print_json({"rekeyed": done})
        return
    if not done:
        out.print("every active grant of the twin holds its keys already", highlight=False)
    for grant_id, outcome in done.items():
        out.print(f"grant {grant_id[:16]}…: " + ", ".join(f"{label} {what}" for label, what in outcome.items()),
                  highlight=False)  # fmt: skip


@command
def grants(
    home: Home,
    twin: Annotated[str | None, typer.Option("--twin", help="Only grants of this twin (id or device id).")] = None,
    as_json: Json = False,
) -> None:
    """Grants of read access, newest first."""
    listing = run(home, lambda session: access.grants_of(session, twin))
    if as_json:
        print_json(listing)
        return
    table = Table("grant", "twin", "from", "to", "policy", "until", "generations", "status",
                  title=f"grants at block {listing['height']}", title_justify="left")  # fmt: skip
    for entry in listing["grants"]:
        until = iso_ms(entry["valid_until"]) if entry["valid_until"] else "—"
        held = len(entry["keys"])
        table.add_row(show_id(entry["id"]), entry["twin"], entry["owner"], entry["recipient"], entry["policy_text"], until,
                      "0" if held == 1 else f"0–{held - 1}", shown_status(entry))  # fmt: skip
    out.print(table)


# -- write tokens ---------------------------------------------------------------------------------

token_app = typer.Typer(no_args_is_help=True, help="Write tokens: the owner's signed leave for a key to change a twin.")


@token_app.command("issue")
@command
def token_issue(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    to: Annotated[str, typer.Option("--to", help="The recipient's Ed25519 public key, hex (a processing service).")],
    method: Annotated[list[str], typer.Option("--method", help="A twin method it may use, e.g. document.add "
                                                               "(repeatable).")],  # fmt: skip
    until: Annotated[str, typer.Option("--until", help="When the token ends, ISO 8601.")],
    output: Annotated[Path, typer.Option("--out", help="The token file to write.", dir_okay=False)],
    scope: Annotated[list[str], typer.Option("--scope", help="Only within this AML component (repeatable).")] = [],  # noqa: B006
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Sign a write token for another key; give it the file, it presents it (token present).
    Nothing changes on chain until then; the token is checked again at every use."""
    issued = run(home, lambda session: tokens.issue(session, twin, to, method, parse_time(until) // 1000, scope,
                                                    output), key)  # fmt: skip
    if as_json:
        print_json({k: v for k, v in issued.view().items() if k != "token"} | {"file": str(output)})
    else:
        out.print(f"token {issued.id[:16]}… for {to[:16]}… on twin {issued.twin}: {', '.join(method)} until {until}; "
                  f"written to {output}", highlight=False)  # fmt: skip


@token_app.command("present")
@command
def token_present(
    file: Annotated[Path, typer.Argument(help="A token file from token issue.", exists=True, dir_okay=False)],
    home: Home,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Put a write token into force on chain (sign with the recipient's --key, or any key)."""
    token = tokens.read_token_file(file)
    block = run(home, lambda session: tokens.present(session, token), key)
    if as_json:
        print_json({"token": token.id, "twin": token.twin, "block": block})
    else:
        out.print(f"token {token.id[:16]}… is in force on twin {token.twin} (block {block})", highlight=False)


@token_app.command("revoke")
@command
def token_revoke(
    file: Annotated[Path, typer.Argument(help="The token file that was issued.", exists=True, dir_okay=False)],
    home: Home,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """End a write token now, presented or not."""
    token = tokens.read_token_file(file)
    block = run(home, lambda session: tokens.revoke(session, token), key)
    if as_json:
        print_json({"token": token.id, "status": "revoked", "block": block})
    else:
        out.print(f"revoked token {token.id[:16]}… (block {block})", highlight=False)


# -- devices --------------------------------------------------------------------------------------

device_app = typer.Typer(no_args_is_help=True, help="Devices of a twin: their own keys, the device role, grants.")


@device_app.command("add")
@command
def device_add(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    name: Annotated[str, typer.Option("--name", help="The device's name, e.g. plc-2.")],
    output: Annotated[Path, typer.Option("--out", help="New directory for the device's keys.", file_okay=False)],
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Make a device's keys (Ed25519 to sign, KP-CPRE to read what it is granted, and the
    agent's OPC UA certificate, which the device must trust) in a new directory for the
    device, and register it on the twin with the device-agent role."""
    added = run(home, lambda session: devices.add(session, twin, name, output), key)
    if as_json:
        print_json({"twin": added.twin, "name": added.name, "key": added.key, "recipient": added.recipient,
                    "keys": str(added.keys), "opcua_certificate": str(added.opcua_certificate),
                    "opcua_fingerprint": added.opcua_fingerprint, "block": added.block})  # fmt: skip
    else:
        out.print(f"device {name} of twin {added.twin}: key {added.key[:16]}…, keys in {output}; grant it "
                  f"access with --to device:{name}; the device must trust the agent's OPC UA certificate "
                  f"{added.opcua_certificate} ({added.opcua_fingerprint})", highlight=False)  # fmt: skip


@device_app.command("retire")
@command
def device_retire(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    name: Annotated[str, typer.Argument(help="The device's name or key (hex).")],
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """A device broke or was lost: take its role and end its grants (proxies forget its keys)."""
    device, block = run(home, lambda session: devices.retire(session, twin, name), key)
    if as_json:
        print_json({"twin": device["twin"], "name": device["name"], "status": "retired",
                    "grants_ended": len(device["grants"]), "block": block})  # fmt: skip
    else:
        out.print(f"retired device {device['name']} of twin {device['twin']}; its role and grants ended", highlight=False)


@device_app.command("list")
@command
def device_list(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    as_json: Json = False,
) -> None:
    """The twin's devices, active and retired."""
    devices = client(home).request("GET", f"/v1/twins/{segment(twin)}")["devices"]
    if as_json:
        print_json(devices)
        return
    table = Table("name", "key", "status", "grants", title="devices", title_justify="left")
    for device in devices:
        table.add_row(device["name"], show_id(device["key"]), device["status"], str(len(device["grants"])))
    out.print(table)


# -- external requests ------------------------------------------------------------------------------

request_app = typer.Typer(no_args_is_help=True, help="External requests to a twin's device, routed through proxies.")


@request_app.command("send")
@command
def request_send(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    payload: Annotated[str, typer.Option("--payload", help="What to ask the device (text).")],
    attribute: Annotated[list[str], typer.Option("--attribute", help="More attributes for routing (repeatable; req and "
                                                                     "twin:ID are always set).")] = [],  # noqa: B006
    wait: Annotated[float, typer.Option(help="Seconds to wait for the answer.", min=1)] = 30.0,
    as_json: Json = False,
) -> None:
    """Ask a twin's device something: encrypted for the twin's owner, routed by a proxy to
    the device the owner chose, answered sealed to a key only this command holds."""
    answered = run(home, lambda session: requests.send(session, twin, payload, attribute, wait))
    if as_json:
        print_json({"request": answered.request, "proxy": answered.proxy, "answer": answered.answer})
    else:
        out.print(answered.answer, highlight=False)


@device_app.command("requests")
@command
def device_requests(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    device: Annotated[Path, typer.Option("--device", help="The device's key directory.", file_okay=False)],
    as_json: Json = False,
) -> None:
    """The unanswered requests proxies routed to this device, opened."""
    keys = device_keys(device)
    pending = run(home, lambda session: requests.pending(session, twin, keys))
    views = [requests.request_view(proxy, entry) for proxy, entry in pending]
    if as_json:
        print_json(views)
        return
    for view in views:
        text = view["payload"] if view["payload"] is not None else "(does not decrypt: damaged or forged)"
        out.print(f"{view['id'][:16]}…  from {view['requester']}: {text}", highlight=False)


@device_app.command("respond")
@command
def device_respond(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    device: Annotated[Path, typer.Option("--device", help="The device's key directory.", file_okay=False)],
    request: Annotated[str, typer.Argument(help="Request id (or a unique prefix of at least 8 digits).")],
    answer: Annotated[str, typer.Option("--answer", help="The answer (text), sealed to the requester.")],
    as_json: Json = False,
) -> None:
    """Answer a request routed to this device."""
    keys = device_keys(device)
    answered = run(home, lambda session: requests.answer(session, twin, keys, request, answer))
    if as_json:
        print_json({"request": answered, "status": "answered"})
    else:
        out.print(f"answered request {answered[:16]}…", highlight=False)
