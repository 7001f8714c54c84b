"""The node's REST API (FastAPI; OpenAPI docs at /docs).

Transactions are submitted as their canonical bytes (``application/octet-stream``);
everything else is JSON, with byte strings in hex. Every error is
``{"error": {"code": ..., "message": ...}}`` with a 4xx status (5xx only for our faults,
never with a stack trace).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from twinledger import __version__
from twinledger.abc import RunningNode, TransactionLocation
from twinledger.api.accounts import add_account_resources
from twinledger.api.acting import Acting, precheck_on
from twinledger.api.auth import Caller, Forbidden, Guard, caller_of, still_signed_in
from twinledger.api.graphql import graphql_router
from twinledger.api.service import TwinService, jsonable
from twinledger.api.workflows import add_workflow_resources
from twinledger.contracts.membership import member_key
from twinledger.contracts.records import record_key
from twinledger.core.encoding import decode, to_obj
from twinledger.core.types import (
    MAX_COMMIT_WAIT_SECONDS,
    AnyTransaction,
    BlockHeader,
    CommitCertificate,
    Receipt,
    decode_transaction,
)
from twinledger.errors import BadRequest, DecodeError, NotFound, TwinledgerError, parse_hex
from twinledger.ingest.protocol import STREAM_BYTES
from twinledger.ingest.service import IngestService
from twinledger.ledger.chain import StoreState
from twinledger.services.accounts import OPERATOR, AccountStore
from twinledger.services.session import Session
from twinledger.store.client import StoreClient
from twinledger.store.feeds import update_view
from twinledger.store.items import AccessDenied, ItemAcl, StoreError
from twinledger.store.server import StoreService

log = logging.getLogger("twinledger.api")
MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_BATCH_TXS = 10_000
KEEPALIVE_SECONDS = 15.0
FeedAfter = Query(-1, ge=-1, description="Send the updates after this sequence number.")
Since = Query(None, ge=0, description="First block height whose events to send (default: the next block).")
At = Query(None, ge=0, description="Show the state after this block height (time travel); default: the head.")


def transaction_view(tx: AnyTransaction) -> dict[str, Any]:
    view = jsonable(to_obj(tx))
    view["hash"] = tx.hash.hex()
    view["stripped"] = tx.stripped
    if not tx.stripped:
        view["args_hash"] = tx.args_hash.hex()
    return view


def header_view(header: BlockHeader) -> dict[str, Any]:
    return {"hash": header.hash.hex(), **jsonable(to_obj(header))}


def certificate_view(cert: CommitCertificate) -> dict[str, Any]:
    return jsonable(to_obj(cert))


def receipt_view(receipt: Receipt) -> dict[str, Any]:
    return jsonable(to_obj(receipt))


def location_view(location: TransactionLocation) -> dict[str, Any]:
    return {
        "status": "committed",
        "transaction": transaction_view(location.transaction),
        "block": {"height": location.height, "hash": location.block_hash.hex(), "index": location.index},
        "receipt": receipt_view(location.receipt),
    }


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request body exceeds {limit} bytes", code="too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"request body exceeds {limit} bytes", code="too_large")
    return body


def _block_view(node: RunningNode, block_hash: bytes) -> dict[str, Any] | None:
    block = node.chain_store.block_by_hash(block_hash)
    cert = node.chain_store.certificate(block_hash)
    if block is None or cert is None:
        return None
    return {
        "header": header_view(block.header),
        "certificate": certificate_view(cert),
        "transactions": [{"hash": tx.hash.hex(), "contract": tx.contract, "method": tx.method,
                          "sender": tx.sender.hex(), "stripped": tx.stripped}
                         for tx in block.transactions],
    }  # fmt: skip


def error_response(exc: TwinledgerError) -> JSONResponse:
    return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.http_status)


def create_app(node: RunningNode, accounts: AccountStore) -> FastAPI:
    """The API of ``node``; every request but the health check and the login is
    authenticated against ``accounts`` (docs/api.md)."""
    app = FastAPI(title="twinledger node", version=__version__,
                  description="API of a twinledger node. Authenticate with `Authorization: Bearer <API token>` "
                              "or a login session (docs/api.md).")  # fmt: skip
    def removed(key: bytes) -> bool:
        entry = node.head_state().get(member_key(key))
        return entry is not None and bool(entry.get("removed"))

    app.add_middleware(Guard, accounts=accounts, config=node.config, removed=removed)
    if node.config.api_cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(node.config.api_cors_origins), allow_credentials=True,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type", "x-csrf-token"])  # fmt: skip
    operator: list[Session] = []

    def operator_session() -> Session:
        """The node's own session (the home's operator; a request's session is it signing
        with the caller's key), made on first use, once the run file says where the API is."""
        if not operator:
            operator.append(Session(node.config, precheck=precheck_on(node)))
        return operator[0]

    acting = Acting(node, accounts, operator_session)
    add_account_resources(app, accounts, acting, node.config.api_needs_tls)
    add_workflow_resources(app, acting)

    @app.exception_handler(TwinledgerError)
    async def _known(_: Request, exc: TwinledgerError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(BadRequest(f"{where}: {first.get('msg', 'invalid request')}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, TwinledgerError):  # e.g. a body past its bound, met while FastAPI parsed it
            return error_response(exc.__cause__)
        code = "not_found" if exc.status_code == 404 else "bad_request"
        error = TwinledgerError(str(exc.detail), code=code)
        error.http_status = exc.status_code
        return error_response(error)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving a request")
        error = TwinledgerError("internal error; the node log has details", code="internal_error")
        error.http_status = 500
        return error_response(error)

    @app.get("/v1/health", summary="Liveness and head height")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "chain_id": node.chain_id, "height": node.head.height, "pending": node.pending_count(),
                "organisation": node.config.organisation, "roles": list(node.config.roles)}  # fmt: skip

    @app.get("/v1/network", summary="Peers and consensus progress")
    async def network() -> dict[str, Any]:
        return node.network_status()

    @app.get("/v1/evidence", summary="Stored evidence of equivocation (two conflicting signed votes)")
    async def evidence() -> dict[str, Any]:
        items = await node.read(node.evidence)
        return {"evidence": items}

    @app.get("/v1/head", summary="Header of the canonical head")
    async def head() -> dict[str, Any]:
        return header_view(node.head)

    @app.post("/v1/transactions", summary="Submit one transaction (canonical bytes)")
    async def submit_one(request: Request) -> JSONResponse:
        body = await _body(request, 2 * 65536)
        _may_relay(caller_of(request), [body])
        (result,) = await node.submit([body])
        if result.error is not None:
            return error_response(result.error)
        assert result.tx_hash is not None
        status = "duplicate" if result.duplicate else "accepted"
        return JSONResponse({"hash": result.tx_hash.hex(), "status": status}, status_code=202)

    @app.post("/v1/transactions/batch", summary="Submit a batch (canonical array of transaction bytes)")
    async def submit_batch(request: Request) -> JSONResponse:
        body = await _body(request, MAX_BATCH_BYTES)
        items = decode(body, max_size=MAX_BATCH_BYTES)
        if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
            raise DecodeError("batch must be an array of transaction byte strings")
        if len(items) > MAX_BATCH_TXS:
            raise BadRequest(f"batch holds more than {MAX_BATCH_TXS} transactions", code="too_large")
        _may_relay(caller_of(request), items)
        results = await node.submit(items)
        views = []
        for r in results:
            if r.error is not None:
                views.append({"index": r.index, "error": {"code": r.error.code, "message": r.error.message}})
            else:
                assert r.tx_hash is not None
                views.append({"index": r.index, "hash": r.tx_hash.hex(),
                              "status": "duplicate" if r.duplicate else "accepted"})  # fmt: skip
        accepted = sum(1 for v in views if "hash" in v)
        return JSONResponse({"accepted": accepted, "rejected": len(views) - accepted, "results": views})

    @app.get("/v1/transactions/{tx_hash}", summary="A transaction, its receipt and optionally its proof")
    async def get_transaction(tx_hash: str, proof: bool = False, wait: float = 0.0) -> dict[str, Any]:
        digest = parse_hex(tx_hash, "transaction hash")
        location = await node.wait_committed(digest, min(max(wait, 0.0), MAX_COMMIT_WAIT_SECONDS))
        if location is None:
            if node.is_pending(digest):
                return {"status": "pending", "hash": tx_hash}
            raise NotFound(f"no transaction {tx_hash} on this node")
        view = location_view(location)
        view["signer"] = await node.read(_signer, node, location.transaction.sender, location.height)
        if proof:
            view["proof"] = (await node.proof(digest)).to_json()
        return view

    @app.get("/v1/blocks/{block_id}", summary="A canonical block by height, or any block by hash")
    async def get_block(block_id: str, wait: float = 0.0) -> JSONResponse:
        if block_id.isascii() and block_id.isdigit():
            if len(block_id) > 18:  # past any height a chain reaches (and SQLite's integers)
                raise NotFound(f"no block at height {block_id[:24]} (head is {node.head.height})")
            await node.wait_for_height(int(block_id), min(max(wait, 0.0), MAX_COMMIT_WAIT_SECONDS))
            header = await node.read(node.chain_store.header_by_height, int(block_id))
            if header is None:
                raise NotFound(f"no block at height {block_id} (head is {node.head.height})")
            block_hash = header.hash
        else:
            block_hash = parse_hex(block_id, "block id (height or hash)")
        view = await node.read(_block_view, node, block_hash)
        if view is None:
            raise NotFound(f"no block {block_id}")
        return JSONResponse(view)  # built off the event loop; a large block skips FastAPI's encoder

    @app.get("/v1/records/{record_id}", summary="A record: its payload hash, media type and metadata",
             tags=["records"])  # fmt: skip
    async def get_record(record_id: str) -> dict[str, Any]:
        digest = parse_hex(record_id, "record id")
        record = await node.read(node.head_state().get, record_key(digest))
        if record is None:
            raise NotFound(f"no record {record_id} at height {node.head.height}")
        return {"id": record_id, **jsonable(record)}

    @app.get("/v1/ingest/streams/{stream}", summary="What this node's ingest listener took from a stream",
             tags=["records"])  # fmt: skip
    async def ingest_stream(stream: str, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        ingest: IngestService | None = node.ingest_service
        if ingest is None:
            raise NotFound("this node has no ingest listener ([ingest] in node.toml)")
        stream_id = parse_hex(stream, "stream id", STREAM_BYTES)
        claim = await node.read(ingest.journal.stream, stream_id)
        if claim is None:
            raise NotFound(f"no client opened stream {stream} on this node")
        rows = await node.read(ingest.journal.rows, stream_id, after, min(max(limit, 1), 10_000))
        return {"stream": stream, "source": claim.source, "attributes": list(claim.attributes),
                "records": [{"seq": r.seq, "record": r.tx_hash.hex(), "height": r.height} for r in rows]}  # fmt: skip

    @app.get("/v1/accounts/{key}/nonce", summary="Next nonce for a sender key")
    async def next_nonce(key: str) -> dict[str, Any]:
        sender = parse_hex(key, "sender key")
        return {"sender": key, "next_nonce": await node.next_nonce(sender)}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> str:
        return node.metrics_text()

    service = TwinService(node.chain_store)
    add_twin_resources(app, node, service)
    app.include_router(graphql_router(node, service, acting), prefix="/graphql", tags=["graphql"])
    return app


def add_twin_resources(app: FastAPI, node: RunningNode, service: TwinService) -> None:
    """Twins, membership and the event stream: REST over ``TwinService``, and GraphQL."""

    @app.get("/v1/twins", summary="Registered twins", tags=["twins"])
    async def twins(at: int | None = At) -> dict[str, Any]:
        return await node.read(service.twins, at)

    @app.get("/v1/twins/{ref}", summary="A twin by id or device id, with everything it holds", tags=["twins"])
    async def twin(ref: str, at: int | None = At) -> dict[str, Any]:
        return await node.read(service.twin, ref, at)

    @app.get("/v1/twins/{ref}/specification", summary="A version of the AutomationML specification (where it is)",
             tags=["twins"])  # fmt: skip
    async def specification(ref: str, version: int | None = Query(None, ge=1)) -> dict[str, Any]:
        return await node.read(service.specification, ref, version)

    @app.get("/v1/twins/{ref}/history", summary="Every version of the specification", tags=["twins"])
    async def history(ref: str) -> dict[str, Any]:
        return {"versions": await node.read(service.history, ref)}

    @app.get("/v1/twins/{ref}/model", summary="The model of the specification the contracts enforce", tags=["twins"])
    async def model(ref: str, at: int | None = At) -> dict[str, Any]:
        return await node.read(service.model, ref, at)

    @app.get("/v1/twins/{ref}/programs", summary="The twin's programs with their safety rules", tags=["twins"])
    async def programs(ref: str, at: int | None = At) -> dict[str, Any]:
        return {"programs": await node.read(service.programs, ref, at)}

    @app.get("/v1/twins/{ref}/calls", summary="Program calls, optionally by status", tags=["twins"])
    async def calls(ref: str, status: str | None = None, at: int | None = At) -> dict[str, Any]:
        return {"calls": await node.read(service.calls, ref, status, at)}

    @app.get("/v1/twins/{ref}/audit", summary="Every transaction that changed the twin, with proofs", tags=["twins"])
    async def audit(ref: str, proofs: bool = False) -> dict[str, Any]:
        entries = await node.read(service.audit, ref)
        if proofs:
            for entry in entries:
                entry["proof"] = (await node.proof(bytes.fromhex(entry["tx"]))).to_json()
        return {"entries": entries}

    @app.get("/v1/twins/{ref}/feeds/{component}/checkpoints", summary="A component's feed and its on-chain checkpoints",
             tags=["twins"])  # fmt: skip
    async def checkpoints(ref: str, component: str) -> dict[str, Any]:
        return await node.read(service.checkpoints, ref, component)

    @app.get("/v1/members", summary="Consortium members, administrators and open proposals", tags=["membership"])
    async def members(at: int | None = At) -> dict[str, Any]:
        return await node.read(service.members, at)

    @app.get("/v1/grants", summary="Grants of read access, newest first", tags=["sharing"])
    async def grants(twin: str | None = None, recipient: str | None = None, owner: str | None = None,
                     at: int | None = At) -> dict[str, Any]:  # fmt: skip
        return await node.read(service.grants, twin, recipient, owner, at)

    def _offchain_store() -> StoreService:
        offchain: StoreService | None = node.offchain_store
        if offchain is None:
            raise TwinledgerError("this node is not a store node (it lacks the store role)", code="not_a_store_node")
        return offchain

    @app.get("/v1/store", summary="This store node: its data, the replication, the store nodes", tags=["store"])
    async def store_status() -> dict[str, Any]:
        offchain = _offchain_store()
        disk = await node.read(offchain.disk.status)
        replication = offchain.replication.effective(len(offchain.directory().nodes))
        return {"address": offchain.address, "items": disk.items, "chunks": disk.chunks, "bytes": disk.bytes,
                "replication": {"factor": replication.factor, "write_quorum": replication.quorum},
                "nodes": [{"organisation": n.organisation, "node": n.name, "endpoint": n.endpoint}
                          for n in offchain.directory().nodes]}  # fmt: skip

    @app.post("/v1/store/repair", summary="Run an anti-entropy pass now: push missing replicas", tags=["store"])
    async def store_repair() -> dict[str, Any]:
        report = await _offchain_store().repair()
        return {"acls_pushed": report.acls_pushed, "chunks_checked": report.chunks_checked,
                "chunks_pushed": report.chunks_pushed, "feed_updates_pushed": report.feed_updates_pushed,
                "unreachable": sorted(report.unreachable)}  # fmt: skip

    @app.post("/v1/store/audit", summary="Re-hash every local chunk; repair damaged ones from replicas",
              tags=["store"])  # fmt: skip
    async def store_audit() -> dict[str, Any]:
        report = await _offchain_store().audit()
        return {"checked": report.checked, "corrupt": report.corrupt, "repaired": report.repaired,
                "unrepaired": report.unrepaired}  # fmt: skip

    @app.get("/v1/feeds/{feed}/updates", summary="A feed's signed updates as Server-Sent Events, live",
             tags=["events"], response_class=StreamingResponse)  # fmt: skip
    async def feed_updates(request: Request, feed: str, after: int = FeedAfter) -> StreamingResponse:
        """This node follows the feed as its organisation, which must be a reader. Events
        carry the owner-signed update (``update``, hex) for the client to check; its
        segment stays sealed until the client fetches and decrypts it."""
        if len(feed) != 64 or not all(c in "0123456789abcdef" for c in feed):
            raise BadRequest("the feed id is 64 hex digits")
        resume = request.headers.get("last-event-id")
        if resume is not None and not (resume.isascii() and resume.isdigit()):
            raise BadRequest("Last-Event-ID must be the sequence number sent in an event's id")
        offchain = _offchain_store()
        store = offchain.client()
        acl = await store.get_acl(bytes.fromhex(feed))
        if acl.kind != "feed" or not offchain.directory().may_read(acl, node.config.organisation):
            raise AccessDenied(f"organisation {node.config.organisation} is not a reader of feed {feed[:16]}…")
        start = int(resume) if resume is not None else after
        return StreamingResponse(_feed_stream(node, request, store, acl, start), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})  # fmt: skip

    @app.get("/v1/events", summary="Contract events as Server-Sent Events, optionally of one twin", tags=["events"],
             response_class=StreamingResponse)  # fmt: skip
    async def events(request: Request, twin: str | None = None, since: int | None = Since) -> StreamingResponse:
        resume = _event_position(request.headers.get("last-event-id"))
        start = resume[0] if resume is not None else (node.head.height + 1 if since is None else since)
        return StreamingResponse(_event_stream(node, service, request, twin, start, resume),
                                 media_type="text/event-stream", headers={"cache-control": "no-cache"})  # fmt: skip




def _signer(node: RunningNode, key: bytes, height: int) -> dict[str, str]:
    """Who signed, as the membership had it when the transaction was committed: the
    organisation, and the principal or node if the key was one's ("" where none)."""
    entry = StoreState(node.chain_store, height).get(member_key(key)) or {}
    return {"key": key.hex(), "organisation": entry.get("organisation", ""), "kind": entry.get("kind", ""),
            "principal": entry.get("principal", ""), "node": entry.get("node", "")}  # fmt: skip


def _may_relay(caller: Caller, raw: list[bytes]) -> None:
    """The home's operator relays any signed transaction; another principal only its own."""
    if caller.principal.name == OPERATOR:
        return
    for item in raw:
        try:
            sender = decode_transaction(item).sender
        except (DecodeError, TwinledgerError):
            continue  # refused with its own error by the submission
        if sender != caller.principal.public_key:
            raise Forbidden(f"{caller.principal.name} may submit transactions signed with its own key only")


def _event_position(last_event_id: str | None) -> tuple[int, int, int] | None:
    """Where a reconnecting client stopped: the id of the last event it saw."""
    if last_event_id is None:
        return None
    parts = last_event_id.split(":")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise BadRequest("Last-Event-ID must be HEIGHT:INDEX:NUMBER as sent in an event's id")
    height, index, number = (int(p) for p in parts)
    return height, index, number


async def _event_stream(node: RunningNode, service: TwinService, request: Request, twin: str | None, height: int,
                        after: tuple[int, int, int] | None) -> AsyncIterator[str]:  # fmt: skip
    """Replays committed blocks from ``height`` and then follows the head; every event is
    read from the store, so a client that reconnects with Last-Event-ID misses nothing."""
    yield ": twinledger events\n\n"
    idle = 0.0
    while not await request.is_disconnected() and not node.stopping and still_signed_in(request):
        if height > node.head.height and not await node.wait_for_height(height, 1.0):
            idle += 1.0
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keepalive\n\n"
            continue
        idle = 0.0
        if not still_signed_in(request):  # asked again after the wait: nothing reaches a revoked caller
            return
        for event in await node.read(lambda h=height: list(service.events(h, twin))):
            position = tuple(int(p) for p in event["id"].split(":"))
            if after is not None and position <= after:
                continue
            yield f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event, sort_keys=True)}\n\n"
        height += 1


async def _feed_stream(node: RunningNode, request: Request, store: StoreClient, acl: ItemAcl,
                       after: int) -> AsyncIterator[str]:  # fmt: skip
    """Long polls on the feed's replicas: a store node answers the moment an update lands."""
    yield ": twinledger feed\n\n"
    while not await request.is_disconnected() and not node.stopping and still_signed_in(request):
        try:
            updates = await store.feed_updates(acl, after, wait=KEEPALIVE_SECONDS)
        except StoreError as exc:
            yield f"event: problem\ndata: {json.dumps({'code': exc.code, 'message': exc.message})}\n\n"
            return
        if not still_signed_in(request):
            return
        if not updates:
            yield ": keepalive\n\n"
        for update in updates:
            view = {**update_view(update), "update": update.encoded().hex()}
            yield f"id: {update.sequence}\nevent: update\ndata: {json.dumps(view, sort_keys=True)}\n\n"
            after = update.sequence

