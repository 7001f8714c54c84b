"""Every workflow through the API: the same functions of ``twinledger.services`` the CLI
runs, in the node, signed with the calling principal's key.

The node signs as the caller — the home's operator key for the home's token, a program's
key it keeps sealed, a person's key opened at login — and dry-runs every transaction on
the head state before it submits it: a call the contracts would refuse (a role without
the permission, another organisation's twin) is refused with the contract's reason and
nothing reaches the chain. Data is encrypted and decrypted here, in the node, for the
organisation; uploads and downloads stream.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from twinledger.api.acting import Acting
from twinledger.api.auth import caller_of
from twinledger.contracts.membership import parse_change
from twinledger.errors import BadRequest, parse_hex
from twinledger.services import access, devices, documents, feeds, membership, records, requests, tokens, twins
from twinledger.services.session import Outcome, Session
from twinledger.store.feeds import update_view

T = TypeVar("T")
REFUSALS = frozenset({"forbidden", "not_permitted", "not_a_member"})
"""Contract errors that mean "not yours to do": answered 403."""
MAX_UPLOAD = 1 << 34
CHUNK = 1 << 20


class Written(BaseModel):
    tx: str
    block: int
    events: list[dict[str, Any]]


def written(outcome: Outcome) -> dict[str, Any]:
    return {"tx": outcome.tx_hash.hex(), "block": outcome.height, "events": outcome.events}


class TwinIn(BaseModel):
    name: str = Field(max_length=200)
    device_id: str = Field(max_length=128)
    aml: str = Field(description="The AutomationML (CAEX) document.")
    roles: dict[str, dict[str, list[str]]] = Field(default_factory=dict,
                                                   description="SUBJECT → role → scopes, e.g. {\"org:maint\": "
                                                               "{\"maintainer\": []}}.")  # fmt: skip


class AmlInsert(BaseModel):
    fragment: str = Field(description="One AML element.")
    parent: str
    after: str | None = None


class SourceIn(BaseModel):
    uri: str = Field(max_length=2048)
    description: str = ""


class FeedIn(BaseModel):
    component: str
    topic: str | None = None
    reference: str | None = Field(None, description="Attach a feed kept elsewhere instead of creating one.")
    readers: list[str] = Field(default_factory=list)
    attributes: list[str] = Field(default_factory=list)
    description: str = ""


class SamplesIn(BaseModel):
    samples: list[tuple[int, float]] = Field(min_length=1, max_length=1_000_000,
                                             description="[time in µs since the epoch, value], in time order.")
    segment_seconds: float | None = Field(None, gt=0, description="Sample time per segment (default: from the "
                                          "samples' rate, about 4,096 a segment).")  # fmt: skip


class ReadersIn(BaseModel):
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)
    version: int | None = Field(None, ge=1, description="Documents: only this version (default: all).")


class CallIn(BaseModel):
    program: str
    params: dict[str, bool | int | str] = Field(default_factory=dict)


class ReportIn(BaseModel):
    status: Literal["dispatched", "executed", "failed", "rejected"]
    result: str = ""


class RoleIn(BaseModel):
    subject: str = Field(description="ORG, org:ORG or key:HEX.")
    role: str
    scopes: list[str] = Field(default_factory=list)


class PermissionsIn(BaseModel):
    methods: list[str]


class GrantIn(BaseModel):
    twin: str
    to: str = Field(description="An organisation, or device:NAME of the twin.")
    policy: str = Field(description='e.g. "kind:document and type:report"')
    valid_until: int = Field(0, ge=0, lt=1 << 43, description="Milliseconds since the epoch; 0: no end.")
    proxies: list[str] = Field(default_factory=list)
    declare: list[str] = Field(default_factory=list, description="New attribute keys the policy may use, for data "
                                                                 "still to come.")  # fmt: skip


class WriteTokenIn(BaseModel):
    twin: str
    recipient: str = Field(description="The recipient's Ed25519 public key, hex.")
    methods: list[str] = Field(min_length=1)
    scopes: list[str] = Field(default_factory=list)
    not_after: int = Field(description="Milliseconds since the epoch.")


class RequestIn(BaseModel):
    twin: str
    payload: str = Field(max_length=16_000)
    attributes: list[str] = Field(default_factory=list)
    wait: float = Field(30.0, gt=0, le=120)


class DeviceIn(BaseModel):
    name: str = Field(max_length=64)
    key: str = Field(description="The device's Ed25519 public key, hex.")
    sharing_key: str = Field(description="The device's KP-CPRE public key, hex.")


class RecordIn(BaseModel):
    payload: str | None = Field(None, description="Text to record on chain.")
    payload_hash: str | None = Field(None, description="Or only a SHA-256, hex.")
    media_type: str = "text/plain"
    metadata: dict[str, str] = Field(default_factory=dict)


class ProposalIn(BaseModel):
    change: dict[str, Any]


Runner = Callable[[Request, Callable[[Session], Awaitable[Any]]], Awaitable[Any]]


def add_workflow_resources(app: FastAPI, acting: Acting) -> None:
    """The write endpoints; each runs a service function in the caller's session."""

    async def run(request: Request, work: Callable[[Session], Awaitable[T]]) -> T:
        return await work(acting.session(caller_of(request)))

    _twin_workflows(app, acting, run)
    _document_workflows(app, acting, run)
    _feed_workflows(app, acting, run)
    _sharing_workflows(app, acting, run)
    _record_and_membership_workflows(app, acting, run)


def _twin_workflows(app: FastAPI, acting: Acting, run: Runner) -> None:
    """Twins: creation, specification edits, sources, program calls, roles."""
    @app.post("/v1/twins", summary="Register a twin from an AutomationML specification", tags=["twins"],
              status_code=201)  # fmt: skip
    async def create_twin(body: TwinIn, request: Request) -> dict[str, Any]:
        made = await run(request, lambda s: twins.create(s, body.aml.encode(), body.name, body.device_id, body.roles))
        return {"id": made.twin, **written(made.outcome)}

    @app.post("/v1/twins/{ref}/aml/insert", summary="Insert an element into the specification", tags=["twins"])
    async def insert_aml(ref: str, body: AmlInsert, request: Request) -> Written:
        outcome = await run(request, lambda s: twins.insert_aml(s, ref, body.fragment.encode(), body.parent, body.after))
        return Written(**written(outcome))

    @app.delete("/v1/twins/{ref}/aml/{element:path}", summary="Remove an element from the specification",
                tags=["twins"])  # fmt: skip
    async def remove_aml(ref: str, element: str, request: Request,
                         links: Literal["refuse", "remove"] = Query("refuse")) -> Written:  # fmt: skip
        """``element`` is an ID or a name path; ``links=remove`` also removes the
        InternalLinks elsewhere that point into it (refused otherwise)."""
        return Written(**written(await run(request, lambda s: twins.remove_aml(s, ref, element, links=links))))

    @app.post("/v1/twins/{ref}/sources", summary="Add an external data source", tags=["twins"])
    async def add_source(ref: str, body: SourceIn, request: Request) -> Written:
        return Written(**written(await run(request, lambda s: twins.add_source(s, ref, body.uri, body.description))))

    @app.delete("/v1/twins/{ref}/sources", summary="Remove an external data source", tags=["twins"])
    async def remove_source(ref: str, request: Request, uri: str = Query(max_length=2048)) -> Written:
        return Written(**written(await run(request, lambda s: twins.remove_source(s, ref, uri))))

    @app.post("/v1/twins/{ref}/calls", summary="Queue a program call (checked against its safety rules)",
              tags=["twins"])  # fmt: skip
    async def call_program(ref: str, body: CallIn, request: Request) -> dict[str, Any]:
        outcome = await run(request, lambda s: twins.call_program(s, ref, body.program, body.params))
        return {"call": outcome.event("ProgramCalled")["call"], **written(outcome)}

    @app.post("/v1/twins/{ref}/calls/{number}/report", summary="Move a program call along its life-cycle",
              tags=["twins"])  # fmt: skip
    async def report_call(ref: str, number: int, body: ReportIn, request: Request) -> Written:
        outcome = await run(request, lambda s: twins.report_call(s, ref, number, body.status, body.result))
        return Written(**written(outcome))

    @app.post("/v1/twins/{ref}/roles", summary="Give a subject a role on the twin (owner only)", tags=["twins"])
    async def grant_role(ref: str, body: RoleIn, request: Request) -> Written:
        outcome = await run(request, lambda s: twins.grant_role(s, ref, body.subject, body.role, body.scopes))
        return Written(**written(outcome))

    @app.delete("/v1/twins/{ref}/roles", summary="Take a role away (owner only)", tags=["twins"])
    async def revoke_role(ref: str, request: Request, subject: str = Query(), role: str = Query()) -> Written:
        return Written(**written(await run(request, lambda s: twins.revoke_role(s, ref, subject, role))))

    @app.put("/v1/twins/{ref}/permissions/{role}", summary="The methods a role permits on the twin", tags=["twins"])
    async def set_permissions(ref: str, role: str, body: PermissionsIn, request: Request) -> Written:
        return Written(**written(await run(request, lambda s: twins.set_permissions(s, ref, role, body.methods))))


def _document_workflows(app: FastAPI, acting: Acting, run: Runner) -> None:
    """Documents: streamed uploads and downloads, versions, readers."""
    @app.post("/v1/twins/{ref}/documents", summary="Upload a document (the request body, streamed), encrypted in "
              "the node and registered on the twin", tags=["documents"], status_code=201)  # fmt: skip
    async def add_document(ref: str, request: Request, title: str = Query(max_length=200), description: str = "",
                           component: str | None = None, media_type: str = "application/octet-stream",
                           reader: list[str] = Query(default_factory=list),
                           attribute: list[str] = Query(default_factory=list)) -> dict[str, Any]:  # fmt: skip
        if reader:  # choosing who reads is a sharing decision; the default is the twin's organisations
            acting.require(caller_of(request), "sharing", "grant")
        await run(request, lambda s: documents.check_add(s, ref, title, description=description, component=component,
                                                         media_type=media_type))  # before a byte is taken  # fmt: skip
        async with _upload(request) as path:
            added = await run(request, lambda s: documents.add(s, ref, path, title, description=description,
                                                               component=component, media_type=media_type,
                                                               readers=reader, attributes=attribute))  # fmt: skip
        return {"document": added.document, "reference": added.stored.reference, "size": added.stored.size,
                "readers": list(added.stored.readers), **written(added.outcome)}  # fmt: skip

    @app.post("/v1/twins/{ref}/documents/{document}/versions", summary="Upload a new version of a document",
              tags=["documents"], status_code=201)  # fmt: skip
    async def add_version(ref: str, document: str, request: Request, description: str = "",
                          reader: list[str] = Query(default_factory=list),
                          attribute: list[str] = Query(default_factory=list)) -> dict[str, Any]:  # fmt: skip
        if reader:
            acting.require(caller_of(request), "sharing", "grant")
        await run(request, lambda s: documents.check_version(s, ref, document, description))  # before a byte is taken
        async with _upload(request) as path:
            added = await run(request, lambda s: documents.add_version(s, ref, document, path, description=description,
                                                                       readers=reader, attributes=attribute))  # fmt: skip
        return {"document": added.document, "manifest": added.stored.manifest.hex(), **written(added.outcome)}

    @app.get("/v1/twins/{ref}/documents/{document}/content", summary="Download a document, checked against the "
             "chain and decrypted in the node", tags=["documents"], response_class=StreamingResponse)  # fmt: skip
    async def get_document(ref: str, document: str, request: Request,
                           version: int | None = Query(None, ge=1)) -> StreamingResponse:  # fmt: skip
        directory = tempfile.mkdtemp(prefix="twinledger-download-")
        path = Path(directory) / "document"
        try:
            read = await run(request, lambda s: documents.get(s, ref, document, path, version))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return StreamingResponse(_stream_file(path, directory), media_type="application/octet-stream",
                                 headers={"x-document-version": str(read.version), "x-document-hash": read.hash,
                                          "content-length": str(read.size)})  # fmt: skip

    @app.post("/v1/twins/{ref}/documents/{document}/readers", summary="Add and remove reader organisations",
              tags=["documents"])  # fmt: skip
    async def document_readers(ref: str, document: str, body: ReadersIn, request: Request) -> dict[str, Any]:
        acting.require(caller_of(request), "sharing", "grant")  # who reads is a sharing decision
        acls = await run(request, lambda s: documents.change_readers(s, ref, document, body.version, body.add,
                                                                     body.remove))  # fmt: skip
        return {"readers": sorted({r.organisation for acl in acls for r in acl.readers}), "items": len(acls)}

    @app.delete("/v1/twins/{ref}/documents/{document}", summary="Mark a document removed", tags=["documents"])
    async def remove_document(ref: str, document: str, request: Request) -> Written:
        return Written(**written(await run(request, lambda s: documents.remove(s, ref, document))))


def _feed_workflows(app: FastAPI, acting: Acting, run: Runner) -> None:
    """Feeds: creation, samples in and out, verification, new keys, readers."""
    @app.post("/v1/twins/{ref}/feeds", summary="Create an encrypted feed and attach it to a component (or attach "
              "one kept elsewhere)", tags=["feeds"], status_code=201)  # fmt: skip
    async def add_feed(ref: str, body: FeedIn, request: Request) -> dict[str, Any]:
        if body.readers:
            acting.require(caller_of(request), "sharing", "grant")
        if body.reference is not None:
            made = await run(request, lambda s: feeds.attach(s, ref, body.component, body.reference or "",
                                                             body.description))  # fmt: skip
        else:
            made = await run(request, lambda s: feeds.create_and_attach(s, ref, body.component, topic=body.topic,
                                                                        readers=body.readers,
                                                                        attributes=body.attributes,
                                                                        description=body.description))  # fmt: skip
        return {"reference": made.reference, **written(made.outcome)}

    @app.delete("/v1/twins/{ref}/feeds/{component}", summary="Detach a component's feed", tags=["feeds"])
    async def remove_feed(ref: str, component: str, request: Request) -> Written:
        return Written(**written(await run(request, lambda s: feeds.remove(s, ref, component))))

    @app.post("/v1/twins/{ref}/feeds/{component}/samples", summary="Append samples, encrypted in the node",
              tags=["feeds"])  # fmt: skip
    async def push_samples(ref: str, component: str, body: SamplesIn, request: Request) -> dict[str, Any]:
        acting.require(caller_of(request), "twins", "checkpoint_feed")  # before a sample is stored
        pushed = await run(request, lambda s: feeds.push(s, ref, component, list(body.samples), body.segment_seconds))
        return {"feed": pushed.feed.hex(), "samples": pushed.samples, "updates": len(pushed.updates),
                "last_sequence": pushed.updates[-1].sequence if pushed.updates else None}  # fmt: skip

    @app.get("/v1/twins/{ref}/feeds/{component}/samples", summary="A feed's samples, verified and decrypted in the "
             "node (as a reader, or through a grant)", tags=["feeds"])  # fmt: skip
    async def read_samples(ref: str, component: str, request: Request, after: int = Query(-1, ge=-1),
                           since: int | None = Query(None, ge=0), until: int | None = Query(None, ge=0),
                           latest: bool = False) -> dict[str, Any]:  # fmt: skip
        read = await run(request, lambda s: feeds.read(s, ref, component, after, since, until, latest))
        return {"feed": read.feed.hex(), "updates": [update_view(seg.update) for seg in read.segments],
                "samples": [[t, v] for t, v in read.samples]}  # fmt: skip

    @app.post("/v1/twins/{ref}/feeds/{component}/rotate", summary="A new data key for what is appended from now on",
              tags=["feeds"])  # fmt: skip
    async def rotate_feed(ref: str, component: str, request: Request) -> dict[str, Any]:
        acting.require(caller_of(request), "twins", "checkpoint_feed")
        feed, acl = await run(request, lambda s: feeds.rotate(s, ref, component))
        return {"feed": feed.hex(), "epoch": len(acl.retired) + 1, "acl_version": acl.version}

    @app.get("/v1/twins/{ref}/feeds/{component}/verify", summary="Check the feed's history on every replica "
             "against its checkpoints", tags=["feeds"])  # fmt: skip
    async def verify_feed(ref: str, component: str, request: Request) -> dict[str, Any]:
        report = await run(request, lambda s: feeds.verify(s, ref, component))
        return {"feed": report.feed.hex(), "intact": report.intact, "updates": report.updates,
                "checkpoints": report.checkpoints, "replicas": report.replicas,
                "problems": [{"kind": p.kind, "sequence": p.sequence, "node": p.node, "detail": p.detail}
                             for p in report.problems]}  # fmt: skip

    @app.post("/v1/twins/{ref}/feeds/{component}/readers", summary="Add and remove reader organisations of a feed",
              tags=["feeds"])  # fmt: skip
    async def feed_readers(ref: str, component: str, body: ReadersIn, request: Request) -> dict[str, Any]:
        acting.require(caller_of(request), "sharing", "grant")
        acls = await run(request, lambda s: feeds.change_readers(s, ref, component, body.add, body.remove))
        return {"readers": sorted({r.organisation for acl in acls for r in acl.readers})}


def _sharing_workflows(app: FastAPI, acting: Acting, run: Runner) -> None:
    """Read grants, write tokens, devices and requests to them."""
    @app.post("/v1/grants", summary="Grant read access through proxies (KP-CPRE)", tags=["sharing"], status_code=201)
    async def grant(body: GrantIn, request: Request) -> dict[str, Any]:
        made = await run(request, lambda s: access.grant(s, body.twin, body.to, body.policy, body.valid_until,
                                                         body.proxies, body.declare))  # fmt: skip
        return {"grant": made.grant, "twin": made.twin, "recipient": made.recipient, "policy": made.policy,
                "valid_until": made.valid_until, "proxies": made.proxies, "block": made.block,
                "covered": made.covered, "unmatched": made.unmatched}  # fmt: skip

    @app.delete("/v1/grants/{grant_id}", summary="Revoke a grant; the twin's feeds get a new data key",
                tags=["sharing"])  # fmt: skip
    async def revoke(grant_id: str, request: Request) -> dict[str, Any]:
        done = await run(request, lambda s: access.revoke(s, grant_id, acting.held_keys()))
        return {"grant": done.grant["id"], "status": "revoked", "block": done.block, "generation": done.generation,
                "rekeyed": done.rekeyed, "feeds_rotated": done.rotated, "feeds_not_rotated": done.not_rotated,
                "feeds_left_to_their_writers": done.left_to_writers}  # fmt: skip

    @app.post("/v1/twins/{ref}/rekey", summary="Give the twin's active grants keys for its current access generation",
              tags=["sharing"])  # fmt: skip
    async def rekey(ref: str, request: Request) -> dict[str, Any]:
        return {"rekeyed": await run(request, lambda s: access.rekey(s, ref))}

    @app.post("/v1/write-tokens", summary="Sign a write token for another key (not an API token)", tags=["sharing"],
              status_code=201)  # fmt: skip
    async def issue_write_token(body: WriteTokenIn, request: Request) -> tokens.TokenFile:
        acting.require(caller_of(request), "authorization", "grant_role")  # a token acts as a role its issuer grants
        issued = await run(request, lambda s: tokens.issue(s, body.twin, body.recipient, body.methods, body.not_after,
                                                           body.scopes))  # fmt: skip
        return issued

    @app.post("/v1/write-tokens/present", summary="Put a write token into force on chain", tags=["sharing"])
    async def present_write_token(body: tokens.TokenFile, request: Request) -> dict[str, Any]:
        block = await run(request, lambda s: tokens.present(s, body))
        return {"token": body.id, "block": block}

    @app.post("/v1/write-tokens/revoke", summary="End a write token, presented or not", tags=["sharing"])
    async def revoke_write_token(body: tokens.TokenFile, request: Request) -> dict[str, Any]:
        block = await run(request, lambda s: tokens.revoke(s, body))
        return {"token": body.id, "status": "revoked", "block": block}

    @app.post("/v1/requests", summary="Ask a twin's device something, routed by a proxy; waits for the answer",
              tags=["sharing"])  # fmt: skip
    async def send_request(body: RequestIn, request: Request) -> dict[str, Any]:
        answered = await run(request, lambda s: requests.send(s, body.twin, body.payload, body.attributes, body.wait))
        return {"request": answered.request, "proxy": answered.proxy, "answer": answered.answer}

    @app.post("/v1/twins/{ref}/devices", summary="Register a device by its public keys (made where it runs), with "
              "the device-agent role", tags=["sharing"], status_code=201)  # fmt: skip
    async def add_device(ref: str, body: DeviceIn, request: Request) -> dict[str, Any]:
        key, sharing = parse_hex(body.key, "key"), parse_hex(body.sharing_key, "sharing_key", size=None)
        twin_id, block = await run(request, lambda s: devices.register(s, ref, body.name, key, sharing))
        return {"twin": twin_id, "name": body.name, "key": body.key, "block": block}

    @app.delete("/v1/twins/{ref}/devices/{name}", summary="Retire a device: its role and grants end",
                tags=["sharing"])  # fmt: skip
    async def retire_device(ref: str, name: str, request: Request) -> dict[str, Any]:
        device, block = await run(request, lambda s: devices.retire(s, ref, name))
        return {"twin": device["twin"], "name": device["name"], "status": "retired", "block": block}


def _record_and_membership_workflows(app: FastAPI, acting: Acting, run: Runner) -> None:
    """Records, and membership proposals."""
    @app.post("/v1/records", summary="Record a payload (or only its hash) on chain", tags=["records"], status_code=201)
    async def put_record(body: RecordIn, request: Request) -> dict[str, Any]:
        if (body.payload is None) == (body.payload_hash is None):
            raise BadRequest("give exactly one of payload and payload_hash")
        if body.payload_hash is not None:
            digest = parse_hex(body.payload_hash, "payload_hash")
            outcome = await run(request, lambda s: records.put_hash(s, digest, body.metadata, body.media_type, True))
        else:
            data = (body.payload or "").encode()
            outcome = await run(request, lambda s: records.put(s, data, body.metadata, body.media_type, wait=True))
        return {"record": outcome.tx_hash.hex(), **written(outcome)}

    @app.post("/v1/membership/proposals", summary="Propose a membership change", tags=["membership"])
    async def propose(body: ProposalIn, request: Request) -> dict[str, Any]:
        change = parse_change(_keys_from_hex(body.change))
        done = await run(request, lambda s: membership.propose(s, {"op": change.op, **change.args}))
        return {"applied": done.applied, "proposal": done.proposal, "tx": done.tx}

    @app.post("/v1/membership/proposals/{proposal}/approve", summary="Approve a membership proposal",
              tags=["membership"])  # fmt: skip
    async def approve(proposal: str, request: Request) -> dict[str, Any]:
        done = await run(request, lambda s: membership.approve(s, parse_hex(proposal, "the proposal id")))
        return {"applied": done.applied, "tx": done.tx}


KEY_FIELDS = ("key", "operators", "admins", "encryption_key", "signing_key", "kpcpre_key")


def _keys_from_hex(change: dict[str, Any]) -> dict[str, Any]:
    """JSON carries no bytes: a membership change's keys come as hex strings."""

    def raw(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                return value  # the contract's parser names what is wrong
        return [raw(v) for v in value] if isinstance(value, list) else value

    return {name: raw(value) if name in KEY_FIELDS else value for name, value in change.items()}


@asynccontextmanager
async def _upload(request: Request) -> AsyncIterator[Path]:
    """The request body, streamed to a private temporary file (removed afterwards)."""
    directory = tempfile.mkdtemp(prefix="twinledger-upload-")
    try:
        path = Path(directory) / "upload"
        size = 0
        with path.open("wb") as sink:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD:
                    raise BadRequest(f"an upload holds at most {MAX_UPLOAD} bytes", code="too_large")
                await asyncio.to_thread(sink.write, chunk)
        if size == 0:
            raise BadRequest("the request body (the document) is empty")
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _stream_file(path: Path, directory: str) -> AsyncIterator[bytes]:
    try:
        with path.open("rb") as source:
            while chunk := await asyncio.to_thread(source.read, CHUNK):
                yield chunk
    finally:
        shutil.rmtree(directory, ignore_errors=True)
