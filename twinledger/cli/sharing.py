"""``twinledger grant``, ``revoke``, ``grants`` and ``token``: fine-grained read access
through proxies, and write tokens.

The owner's CLI makes the re-encryption key from the organisation's sharing key (it
never leaves this machine otherwise), records the grant on chain, then hands the key to
the proxy nodes; a recipient's ``twin doc get`` reads through them (docs/sharing.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from twinledger.cli.common import Home, Json, KeyFile, client, command, out, parse_time, print_json, signer, transact
from twinledger.cli.storage import with_store
from twinledger.client import DeviceKeys, device_keys, organisation_key, sharing_key, sharing_public
from twinledger.config import NodeConfig, passphrase
from twinledger.contracts.authorization import WriteToken
from twinledger.contracts.sharing import DEVICE_RECIPIENT
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey, write_secret_file
from twinledger.crypto.policy import parse_policy, policy_text
from twinledger.crypto.policy import to_obj as policy_to_obj
from twinledger.errors import TwinledgerError
from twinledger.sharing.grants import covering_grant, hand_over, make_grant_key, through_proxy
from twinledger.sharing.requests import (
    collect_response,
    make_request,
    request_attributes,
    respond,
    routes,
    send_request,
    take_requests,
)
from twinledger.store.client import StoreClient
from twinledger.store.documents import Unlock, as_reader
from twinledger.store.feeds import parse_feed_reference, rotate_feed
from twinledger.store.records import AccessDenied, ItemAcl

Proxies = Annotated[list[str], typer.Option("--proxy", help="Proxy node ORG/NODE to hold the key (repeatable; default: "
                                                            "every proxy node of the granting organisation).")]


DeviceDir = Annotated[Path | None, typer.Option("--device", help="Read as this device of the twin (the directory "
                                                                  "device add wrote), through its grants.",
                                                  file_okay=False)]  # fmt: skip


def unlock_for(home: Path, config: NodeConfig, store: StoreClient, device: Path | None = None) -> Unlock:
    """How this home (or one of its twin's devices) gets an item's data key: as a reader
    the ACL names, else through a proxy under an active grant that covers the item."""
    as_named_reader = as_reader(config.organisation, organisation_key(config))
    keys = device_keys(device) if device is not None else None
    recipient = keys.recipient if keys is not None else config.organisation

    async def unlock(acl: ItemAcl, commitment: bytes | None) -> bytes:
        if keys is None and acl.allows(config.organisation):
            return await as_named_reader(acl, commitment)
        listing = client(home).request("GET", "/v1/grants", params={"recipient": recipient,
                                                                     "owner": acl.owner_organisation})  # fmt: skip
        chosen = covering_grant(listing["grants"], acl, recipient, int(time.time() * 1000))
        if chosen is None:
            who = "this device" if keys is not None else f"{config.organisation} is no reader of it and"
            raise AccessDenied(f"item {acl.item.hex()[:16]}…: {who} holds no active grant of {acl.owner_organisation} "
                               "that covers it")  # fmt: skip
        secret = keys.sharing if keys is not None else sharing_key(config)
        return await through_proxy(store, chosen, secret, listing["height"], keys.signing if keys else None)(acl, commitment)

    return unlock


def _organisation(members: dict[str, Any], name: str) -> dict[str, Any]:
    for org in members["organisations"]:
        if org["name"] == name:
            return org
    raise TwinledgerError(f"no member organisation is named {name}", code="unknown_organisation")


def _default_proxies(members: dict[str, Any], organisation: str) -> list[str]:
    org = _organisation(members, organisation)
    proxies = [f"{organisation}/{name}" for name, node in sorted(org["nodes"].items()) if "proxy" in node["roles"]]
    if not proxies:
        raise TwinledgerError(f"{organisation} has no proxy node; name one with --proxy ORG/NODE", code="no_proxy")
    return proxies


@command
def grant(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    to: Annotated[str, typer.Option("--to", help="Organisation that may read, or device:NAME of the twin.")],
    policy: Annotated[str, typer.Option("--policy", help='Which data, e.g. "kind:document and type:report".')],
    until: Annotated[str | None, typer.Option("--until", help="End of the grant, ISO 8601 (default: none).")] = None,
    proxy: Proxies = [],  # noqa: B006
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Let another organisation read the twin's data that satisfies a policy.

    The policy is confined to the twin (twin:ID is added if it does not require it); the
    re-encryption key is made here, its hash recorded on chain, and the key handed to
    the proxies, which re-encrypt only while the grant is active."""
    asked = parse_policy(policy)
    valid_until = parse_time(until) // 1000 if until else 0
    if valid_until and valid_until <= time.time() * 1000:
        raise TwinledgerError(f"--until {until} lies in the past", code="bad_time")
    twin_view = client(home).request("GET", f"/v1/twins/{twin}")

    async def work(config: NodeConfig, store: StoreClient, members: dict[str, Any]) -> dict[str, Any]:
        if to.startswith(DEVICE_RECIPIENT):
            device = _device(home, twin_view["id"], to.removeprefix(DEVICE_RECIPIENT))
            recipient, public = f"{DEVICE_RECIPIENT}{device['key']}", device["sharing_key"]
        else:
            recipient, public = to, _organisation(members, to).get("kpcpre_key")
            if not public:
                raise TwinledgerError(f"{to} has no sharing (KP-CPRE) key on chain", code="no_sharing_key")
        proxies = sorted(proxy) or _default_proxies(members, config.organisation)
        made = make_grant_key(sharing_key(config), twin_view["id"], asked,
                              kpcpre.PublicKey.from_bytes(bytes.fromhex(public)))  # fmt: skip
        committed = transact(home, key, "sharing", "grant", {
            "twin": twin_view["id"], "recipient": recipient, "policy": policy_to_obj(made.policy),
            "key_hash": made.key_hash, "proxies": proxies, "valid_until": valid_until})  # fmt: skip
        grant_id = bytes.fromhex(committed["transaction"]["hash"])
        held = await hand_over(store, proxies, grant_id, made.key, committed["block"]["height"])
        return {"grant": grant_id.hex(), "twin": twin_view["id"], "recipient": to, "policy": policy_text(made.policy),
                "valid_until": valid_until, "proxies": held, "block": committed["block"]["height"]}  # fmt: skip

    result = with_store(home, work)
    if as_json:
        print_json(result)
        return
    out.print(result["grant"], highlight=False)
    out.print(f"{to} may read data of twin {result['twin']} where: {result['policy']}", highlight=False)
    for label, outcome in result["proxies"].items():
        out.print(f"  proxy {label}: {outcome}", highlight=False)


@command
def revoke(
    grant_id: Annotated[str, typer.Argument(help="Grant id (or a unique prefix of at least 8 digits).")],
    home: Home,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """End a grant: proxies delete its key and refuse, store nodes stop serving its data.
    The twin's feeds this key owns get a new data key (documents have one each), so data
    written from now on is under keys the revoked party never saw."""
    chosen = _grant(home, grant_id)
    committed = transact(home, key, "sharing", "revoke", {"grant": bytes.fromhex(chosen["id"])})
    rotated, failed = _new_epochs(home, key, chosen["twin"])
    if as_json:
        print_json({"grant": chosen["id"], "status": "revoked", "block": committed["block"]["height"],
                    "feeds_rotated": rotated, "feeds_not_rotated": failed})  # fmt: skip
    else:
        out.print(f"revoked grant {chosen['id'][:16]}… of {chosen['recipient']} (block {committed['block']['height']}); "
                  f"{len(rotated)} feed(s) of the twin have a new key", highlight=False)  # fmt: skip
    if failed:
        raise TwinledgerError("the grant is revoked, but feed(s) " + "; ".join(f"{c}: {why}" for c, why in failed.items())
                              + " kept their key: run twin feed rotate", code="rotation_failed")  # fmt: skip


def _new_epochs(home: Path, key: Path | None, twin: str) -> tuple[list[str], dict[str, str]]:
    """Rotate the data key of every store feed of ``twin`` this key owns, so what its
    devices append from now on is unreadable with keys a revoked party may hold.
    Feeds other keys own (a device agent's) rotate when their writer sees the revocation."""
    me = signer(home, key)
    feeds = [f for f in client(home).request("GET", f"/v1/twins/{twin}")["feeds"]
             if f["reference"].startswith("store:") and f["owner"] == me.public.hex()]  # fmt: skip

    async def work(config: NodeConfig, store: StoreClient, members: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        rotated, failed = [], {}
        sharing = sharing_public(members, config.organisation)
        for entry in feeds:
            try:
                await rotate_feed(store, me, config.organisation, organisation_key(config),
                                  parse_feed_reference(entry["reference"]), sharing)  # fmt: skip
                rotated.append(entry["component"])
            except TwinledgerError as exc:
                failed[entry["component"]] = exc.message
        return rotated, failed

    return with_store(home, work) if feeds else ([], {})


def _grant(home: Path, prefix: str) -> dict[str, Any]:
    if len(prefix) < 8:
        raise TwinledgerError("give at least 8 digits of the grant id", code="bad_request")
    matches = [g for g in client(home).request("GET", "/v1/grants")["grants"] if g["id"].startswith(prefix.lower())]
    if len(matches) != 1:
        raise TwinledgerError(f"{'no' if not matches else 'more than one'} grant id starts with {prefix}",
                              code="unknown_grant")  # fmt: skip
    return matches[0]


@command
def grants(
    home: Home,
    twin: Annotated[str | None, typer.Option("--twin", help="Only grants of this twin (id or device id).")] = None,
    as_json: Json = False,
) -> None:
    """Grants of read access, newest first."""
    query = f"?twin={client(home).request('GET', f'/v1/twins/{twin}')['id']}" if twin else ""
    listing = client(home).request("GET", f"/v1/grants{query}")
    if as_json:
        print_json(listing)
        return
    table = Table("grant", "twin", "from", "to", "policy", "until", "status", title=f"grants at block {listing['height']}",
                  title_justify="left")  # fmt: skip
    for entry in listing["grants"]:
        until = "—"
        if entry["valid_until"]:
            until = datetime.fromtimestamp(entry["valid_until"] / 1000, UTC).isoformat(timespec="minutes")
        table.add_row(entry["id"][:16], entry["twin"], entry["owner"], entry["recipient"], entry["policy_text"], until,
                      entry["status"])  # fmt: skip
    out.print(table)


# -- write tokens ---------------------------------------------------------------------------------

token_app = typer.Typer(no_args_is_help=True, help="Write tokens: the owner's signed leave for a key to change a twin.")
TOKEN_FORMAT = "twinledger-write-token/1"


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
    try:
        recipient = bytes.fromhex(to)
        if len(recipient) != 32:
            raise ValueError
    except ValueError:
        raise TwinledgerError("--to must be a 32-byte Ed25519 public key in hex", code="bad_key") from None
    not_after = parse_time(until) // 1000
    if not_after <= time.time() * 1000:
        raise TwinledgerError(f"--until {until} lies in the past", code="bad_time")
    node = client(home)
    twin_id = node.request("GET", f"/v1/twins/{twin}")["id"]
    token = WriteToken(node.health()["chain_id"], twin_id, recipient, tuple(method), tuple(sorted(set(scope))),
                       not_after, b"", os.urandom(16)).signed(signer(home, key))  # fmt: skip
    if output.exists():
        raise TwinledgerError(f"{output} exists; choose another file", code="exists")
    view = {"format": TOKEN_FORMAT, "id": token.id.hex(), "twin": twin_id, "recipient": to, "methods": list(method),
            "scopes": list(token.scopes), "not_after": not_after, "token": token.encoded().hex()}  # fmt: skip
    output.write_text(json.dumps(view, indent=2) + "\n")
    if as_json:
        print_json({k: v for k, v in view.items() if k != "token"} | {"file": str(output)})
    else:
        out.print(f"token {token.id.hex()[:16]}… for {to[:16]}… on twin {twin_id}: {', '.join(method)} until {until}; "
                  f"written to {output}", highlight=False)  # fmt: skip


def _token_file(path: Path) -> dict[str, Any]:
    try:
        view = json.loads(path.read_text())
        if view.get("format") != TOKEN_FORMAT:
            raise ValueError
        bytes.fromhex(view["token"])
        return view
    except (OSError, ValueError, KeyError, TypeError):
        raise TwinledgerError(f"{path} is not a twinledger write token file", code="bad_token") from None


@token_app.command("present")
@command
def token_present(
    file: Annotated[Path, typer.Argument(help="A token file from token issue.", exists=True, dir_okay=False)],
    home: Home,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Put a write token into force on chain (sign with the recipient's --key, or any key)."""
    view = _token_file(file)
    committed = transact(home, key, "authorization", "present_token", {"token": bytes.fromhex(view["token"])})
    if as_json:
        print_json({"token": view["id"], "twin": view["twin"], "block": committed["block"]["height"]})
    else:
        out.print(f"token {view['id'][:16]}… is in force on twin {view['twin']} (block {committed['block']['height']})",
                  highlight=False)  # fmt: skip


@token_app.command("revoke")
@command
def token_revoke(
    file: Annotated[Path, typer.Argument(help="The token file that was issued.", exists=True, dir_okay=False)],
    home: Home,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """End a write token now, presented or not."""
    view = _token_file(file)
    committed = transact(home, key, "authorization", "revoke_token", {"twin": view["twin"], "token": bytes.fromhex(
        view["id"]), "recipient": bytes.fromhex(view["recipient"])})  # fmt: skip
    if as_json:
        print_json({"token": view["id"], "status": "revoked", "block": committed["block"]["height"]})
    else:
        out.print(f"revoked token {view['id'][:16]}… (block {committed['block']['height']})", highlight=False)


# -- devices --------------------------------------------------------------------------------------

device_app = typer.Typer(no_args_is_help=True, help="Devices of a twin: their own keys, the device role, grants (M3).")


def _device(home: Path, twin: str, name: str) -> dict[str, Any]:
    """The active device called ``name`` (or with that key, hex) of the twin."""
    view = client(home).request("GET", f"/v1/twins/{twin}")
    found = [d for d in view["devices"] if d["status"] == "active" and name in (d["name"], d["key"])]
    if not found:
        raise TwinledgerError(f"twin {view['id']} has no active device {name}", code="unknown_device")
    return found[0]


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
    from twinledger.agent.opcua import agent_identity

    if output.exists():
        raise TwinledgerError(f"{output} exists; the device's keys go into a new directory", code="exists")
    twin_id = client(home).request("GET", f"/v1/twins/{twin}")["id"]
    signing, sharing = SigningKey.generate(), kpcpre.keygen()
    committed = transact(home, key, "sharing", "add_device", {"twin": twin_id, "name": name, "key": signing.public,
                                                               "sharing_key": sharing.public.to_bytes()})  # fmt: skip
    write_secret_file(output / "device.key", "ed25519", signing.seed, passphrase())
    write_secret_file(output / "device-sharing.key", "kpcpre", sharing.to_bytes(), passphrase())
    opcua = agent_identity(output, signing.public)
    result = {"twin": twin_id, "name": name, "key": signing.public.hex(), "recipient": f"{DEVICE_RECIPIENT}{name}",
              "keys": str(output), "opcua_certificate": str(opcua.path), "opcua_fingerprint": opcua.fingerprint,
              "block": committed["block"]["height"]}  # fmt: skip
    if as_json:
        print_json(result)
    else:
        out.print(f"device {name} of twin {twin_id}: key {signing.public.hex()[:16]}…, keys in {output}; grant it "
                  f"access with --to device:{name}; the device must trust the agent's OPC UA certificate "
                  f"{opcua.path} ({opcua.fingerprint})", highlight=False)  # fmt: skip


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
    device = _device(home, twin, name)
    committed = transact(home, key, "sharing", "retire_device", {"twin": device["twin"],
                                                                  "key": bytes.fromhex(device["key"])})  # fmt: skip
    if as_json:
        print_json({"twin": device["twin"], "name": device["name"], "status": "retired",
                    "grants_ended": len(device["grants"]), "block": committed["block"]["height"]})  # fmt: skip
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
    devices = client(home).request("GET", f"/v1/twins/{twin}")["devices"]
    if as_json:
        print_json(devices)
        return
    table = Table("name", "key", "status", "grants", title="devices", title_justify="left")
    for device in devices:
        table.add_row(device["name"], device["key"][:16] + "…", device["status"], str(len(device["grants"])))
    out.print(table)


# -- external requests ------------------------------------------------------------------------------

request_app = typer.Typer(no_args_is_help=True, help="External requests to a twin's device, routed through proxies.")
POLL = 0.2
"""Seconds between looks for the device's answer."""


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
    node = client(home)
    view = node.request("GET", f"/v1/twins/{twin}")
    grants = node.request("GET", "/v1/grants", params={"twin": view["id"]})
    proxies = routes(grants["grants"], view["id"], request_attributes(view["id"], attribute), int(time.time() * 1000))
    if not proxies:
        raise TwinledgerError(f"the owner of twin {view['id']} routes no requests with these attributes to a device",
                              code="no_route")  # fmt: skip

    async def work(config: NodeConfig, store: StoreClient, members: dict[str, Any]) -> dict[str, Any]:
        owner = sharing_public(members, view["owner"])
        if owner is None:
            raise TwinledgerError(f"{view['owner']} has no sharing key", code="no_sharing_key")
        request, reply = make_request(owner, view["id"], payload.encode(), attribute)
        proxy = await send_request(store, proxies, view["id"], request, grants["height"])
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            answer = await collect_response(store, proxy, request.id, reply)
            if answer is not None:
                return {"request": request.id.hex(), "proxy": proxy, "answer": answer.decode(errors="replace")}
            await asyncio.sleep(POLL)
        raise TwinledgerError(f"no answer within {wait:g} s; request {request.id.hex()[:16]}… is queued at {proxy}",
                              code="no_answer")  # fmt: skip

    result = with_store(home, work)
    if as_json:
        print_json(result)
    else:
        out.print(result["answer"], highlight=False)


def _device_proxies(home: Path, twin_id: str, keys: DeviceKeys) -> tuple[list[str], int]:
    listing = client(home).request("GET", "/v1/grants", params={"twin": twin_id, "recipient": keys.recipient})
    proxies = sorted({p for g in listing["grants"] if g["status"] == "active" for p in g["proxies"]})
    return proxies, listing["height"]


async def _pending(home: Path, store: StoreClient, twin_id: str, keys: DeviceKeys) -> list[tuple[str, dict[str, Any]]]:
    proxies, height = _device_proxies(home, twin_id, keys)
    found = []
    for proxy in proxies:
        for entry in await take_requests(store, proxy, twin_id, keys.signing, keys.sharing, 0, height):
            found.append((proxy, entry))
    return found


@device_app.command("requests")
@command
def device_requests(
    home: Home,
    twin: Annotated[str, typer.Option("--twin", help="Twin id or device id.")],
    device: Annotated[Path, typer.Option("--device", help="The device's key directory.", file_okay=False)],
    as_json: Json = False,
) -> None:
    """The unanswered requests proxies routed to this device, opened."""
    twin_id = client(home).request("GET", f"/v1/twins/{twin}")["id"]
    keys = device_keys(device)

    async def work(config: NodeConfig, store: StoreClient, members: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        return await _pending(home, store, twin_id, keys)

    pending = with_store(home, work)
    views = [{"id": e["id"].hex(), "proxy": proxy, "requester": e["requester"], "received": e["received"],
              "payload": e["payload"].decode(errors="replace") if e["payload"] is not None else None}
             for proxy, e in pending]  # fmt: skip
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
    twin_id = client(home).request("GET", f"/v1/twins/{twin}")["id"]
    keys = device_keys(device)

    async def work(config: NodeConfig, store: StoreClient, members: dict[str, Any]) -> str:
        matches = [(proxy, e) for proxy, e in await _pending(home, store, twin_id, keys)
                   if e["id"].hex().startswith(request.lower()) and e["reply_key"] is not None]  # fmt: skip
        if len(request) < 8 or len(matches) != 1:
            raise TwinledgerError(f"no single open request starts with {request}", code="unknown_request")
        proxy, entry = matches[0]
        await respond(store, proxy, twin_id, keys.signing, entry["id"], entry["reply_key"], answer.encode())
        return entry["id"].hex()

    answered = with_store(home, work)
    if as_json:
        print_json({"request": answered, "status": "answered"})
    else:
        out.print(f"answered request {answered[:16]}…", highlight=False)
