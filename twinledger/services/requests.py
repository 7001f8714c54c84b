"""External requests to a twin's device: encrypted for the twin's owner, routed by a
proxy to the device the owner chose, answered sealed to a key only the requester holds."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from twinledger.core.attributes import request_attributes
from twinledger.errors import TwinledgerError
from twinledger.services.access import DeviceKeys, by_id
from twinledger.services.session import Session
from twinledger.sharing.requests import collect_response, make_request, respond, routes, send_request, take_requests

POLL = 0.2
"""Seconds between looks for the device's answer."""


@dataclass(frozen=True)
class Answered:
    request: str
    proxy: str
    answer: str


async def send(session: Session, twin_ref: str, payload: str, attributes: list[str], wait: float = 30.0) -> Answered:
    """Ask a twin's device something and wait up to ``wait`` seconds for its answer."""
    twin = await session.twin(twin_ref)
    grants = await session.get("/v1/grants", twin=twin["id"])
    proxies = routes(grants["grants"], twin["id"], request_attributes(twin["id"], attributes), int(time.time() * 1000))
    if not proxies:
        raise TwinledgerError(f"the owner of twin {twin['id']} routes no requests with these attributes to a device",
                              code="no_route")  # fmt: skip
    owner = await session.sharing_public(twin["owner"])
    if owner is None:
        raise TwinledgerError(f"{twin['owner']} has no sharing key", code="no_sharing_key")
    request, reply = make_request(owner, twin["id"], twin["generation"], payload.encode(), attributes)
    store = await session.store()
    proxy = await send_request(store, proxies, twin["id"], request, grants["height"])
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        answer = await collect_response(store, proxy, request.id, reply)
        if answer is not None:
            return Answered(request.id.hex(), proxy, answer.decode(errors="replace"))
        await asyncio.sleep(POLL)
    raise TwinledgerError(f"no answer within {wait:g} s; request {request.id.hex()[:16]}… is queued at {proxy}",
                          code="no_answer")  # fmt: skip


async def pending(session: Session, twin_ref: str, device: DeviceKeys) -> list[tuple[str, dict[str, Any]]]:
    """The unanswered requests proxies routed to the device, opened: (proxy, entry)."""
    twin_id = (await session.twin(twin_ref))["id"]
    listing = await session.get("/v1/grants", twin=twin_id, recipient=device.recipient)
    proxies = sorted({p for g in listing["grants"] if g["status"] == "active" for p in g["proxies"]})
    store = await session.store()
    found = []
    for proxy in proxies:
        for entry in await take_requests(store, proxy, twin_id, device.signing, device.sharing, 0, listing["height"]):
            found.append((proxy, entry))
    return found


def request_view(proxy: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"id": entry["id"].hex(), "proxy": proxy, "requester": entry["requester"], "received": entry["received"],
            "payload": entry["payload"].decode(errors="replace") if entry["payload"] is not None else None}  # fmt: skip


async def answer(session: Session, twin_ref: str, device: DeviceKeys, request: str, text: str) -> str:
    """Answer the open request whose id starts with ``request``; its full id."""
    twin_id = (await session.twin(twin_ref))["id"]
    open_requests = [(proxy, e) for proxy, e in await pending(session, twin_id, device) if e["reply_key"] is not None]
    proxy, entry = by_id(open_requests, request, lambda pair: pair[1]["id"].hex(), "open request")
    await respond(await session.store(), proxy, twin_id, device.signing, entry["id"], entry["reply_key"], text.encode())
    return str(entry["id"].hex())
