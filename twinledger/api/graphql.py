"""The GraphQL schema (strawberry) at /graphql: typed views over ``TwinService`` for
queries, and mutations that run the same service functions as the REST write endpoints,
in the caller's session (a mutation needs the ``write`` scope; queries ``read``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, TypeVar

import strawberry
from fastapi import Request
from graphql import GraphQLError
from strawberry.fastapi import GraphQLRouter
from strawberry.scalars import JSON

from twinledger.abc import RunningNode
from twinledger.api.acting import Acting
from twinledger.api.auth import Forbidden, caller_of
from twinledger.api.service import TwinService
from twinledger.errors import BadRequest, TwinledgerError
from twinledger.services import access, twins
from twinledger.services.session import Outcome, Session

T = TypeVar("T")
log = logging.getLogger("twinledger.api")


def build(cls: type[T], view: dict[str, Any], **extra: Any) -> T:
    """A strawberry type from a service view, taking the fields the type declares."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in {**view, **extra}.items() if k in names})


@strawberry.type(description="Who changed something, when, in which transaction.")
class Change:
    organisation: str
    key: str
    height: int
    timestamp: int
    tx: str


@strawberry.type
class DocumentVersion:
    hash: str
    reference: str
    size: int
    description: str
    organisation: str
    key: str
    height: int
    timestamp: int
    tx: str


@strawberry.type
class Document:
    id: str
    title: str
    media_type: str
    component: str
    owner: str
    removed: Change | None
    versions: list[DocumentVersion]


@strawberry.type
class Source:
    uri: str
    description: str
    owner: str
    added: Change


@strawberry.type
class Feed:
    component: str
    reference: str
    description: str
    owner: str
    added: Change


@strawberry.type
class ProgramCall:
    number: int
    program: str
    interface: str
    component: str
    params: JSON
    status: str
    result: str
    caller: str
    history: JSON


@strawberry.type(description="One version of the specification and how it came about.")
class SpecificationVersion:
    version: int
    change: str
    element: str
    parent: str
    hash: str = strawberry.field(description="SHA-256 of the stored form.")
    manifest: str = strawberry.field(description="The off-chain store's manifest of the encrypted document.")
    reference: str
    size: int
    organisation: str
    key: str
    height: int
    timestamp: int
    tx: str


@strawberry.type(description="A transaction that changed the twin.")
class AuditEntry:
    number: int
    tx: str
    method: str
    key: str
    organisation: str
    height: int
    timestamp: int
    events: list[str]


@strawberry.type
class TwinSummary:
    id: str
    name: str
    device_id: str
    owner: str


def _change(view: dict[str, Any] | None) -> Change | None:
    return build(Change, view) if view else None


@strawberry.type
class Twin:
    id: str
    name: str
    device_id: str
    owner: str
    height: int = strawberry.field(description="The block height this view is taken at.")
    aml_version: int
    aml_hash: str
    specification: JSON = strawberry.field(description="The current version: hashes, size and where the encrypted "
                                                       "document is in the store.")
    roles: JSON
    permissions: JSON
    created: Change
    documents: list[Document]
    sources: list[Source]
    feeds: list[Feed]
    calls: list[ProgramCall]

    @strawberry.field(description="Every version of the specification.")
    async def history(self, info: strawberry.Info) -> list[SpecificationVersion]:
        node, service = info.context["node"], info.context["service"]
        return [build(SpecificationVersion, v) for v in await node.read(service.history, self.id)]

    @strawberry.field(description="Every transaction that changed the twin.")
    async def audit(self, info: strawberry.Info) -> list[AuditEntry]:
        node, service = info.context["node"], info.context["service"]
        return [build(AuditEntry, e) for e in await node.read(service.audit, self.id)]


def twin_from_view(view: dict[str, Any]) -> Twin:
    return build(
        Twin, view, created=_change(view["created"]),
        documents=[build(Document, d, removed=_change(d["removed"]),
                         versions=[build(DocumentVersion, v) for v in d["versions"]]) for d in view["documents"]],
        sources=[build(Source, s, added=_change(s["added"])) for s in view["sources"]],
        feeds=[build(Feed, f, added=_change(f["added"])) for f in view["feeds"]],
        calls=[build(ProgramCall, c) for c in view["calls"]],
    )  # fmt: skip


@strawberry.type
class Query:
    @strawberry.field(description="Every registered twin, at the head or at block height `at`.")
    async def twins(self, info: strawberry.Info, at: int | None = None) -> list[TwinSummary]:
        node, service = info.context["node"], info.context["service"]
        return [build(TwinSummary, t) for t in (await node.read(service.twins, at))["twins"]]

    @strawberry.field(description="A twin by id or device id, at the head or at block height `at`.")
    async def twin(self, info: strawberry.Info, ref: str, at: int | None = None) -> Twin:
        node, service = info.context["node"], info.context["service"]
        return twin_from_view(await node.read(service.twin, ref, at))

    @strawberry.field(description="Consortium members, administrators and open proposals.")
    async def members(self, info: strawberry.Info, at: int | None = None) -> JSON:
        node, service = info.context["node"], info.context["service"]
        return await node.read(service.members, at)


@strawberry.type(description="A committed change: its transaction and block.")
class Written:
    tx: str
    block: int


def _written(outcome: Outcome) -> Written:
    return Written(tx=outcome.tx_hash.hex(), block=outcome.height)


def _session(info: strawberry.Info) -> Session:
    """The caller's session; a mutation needs the write scope (POST /graphql itself only reads)."""
    caller = caller_of(info.context["request"])
    if "write" not in caller.scopes:
        raise Forbidden(f"{caller.principal.name} lacks the 'write' scope a mutation needs")
    return info.context["acting"].session(caller)  # type: ignore[no-any-return]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Register a twin from an AutomationML specification; its id.")
    async def create_twin(self, info: strawberry.Info, name: str, device_id: str, aml: str) -> str:
        return (await twins.create(_session(info), aml.encode(), name, device_id)).twin

    @strawberry.mutation(description="Queue a program call (checked against its safety rules); its number.")
    async def call_program(self, info: strawberry.Info, ref: str, program: str, params: JSON) -> int:
        if not isinstance(params, dict):
            raise BadRequest("params is a map of parameter names to values")
        outcome = await twins.call_program(_session(info), ref, program, params)
        return int(outcome.event("ProgramCalled")["call"])

    @strawberry.mutation(description="Add an external data source to a twin.")
    async def add_source(self, info: strawberry.Info, ref: str, uri: str, description: str = "") -> Written:
        return _written(await twins.add_source(_session(info), ref, uri, description))

    @strawberry.mutation(description="Give a subject (ORG, org:ORG, key:HEX) a role on a twin.")
    async def grant_role(self, info: strawberry.Info, ref: str, subject: str, role: str,
                         scopes: list[str] | None = None) -> Written:  # fmt: skip
        return _written(await twins.grant_role(_session(info), ref, subject, role, scopes or []))

    @strawberry.mutation(description="Grant an organisation read access to a twin's data by a policy; the grant id.")
    async def grant_read(self, info: strawberry.Info, twin: str, to: str, policy: str, valid_until: int = 0,
                         declare: list[str] | None = None) -> str:  # fmt: skip
        return (await access.grant(_session(info), twin, to, policy, valid_until, declare=declare or [])).grant

    @strawberry.mutation(description="Revoke a read grant (the twin's feeds get a new data key); the block.")
    async def revoke_read(self, info: strawberry.Info, grant: str) -> int:
        return (await access.revoke(_session(info), grant)).block


class TwinSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Known errors reach the client with their code; nothing is logged with a stack trace."""
        for error in errors:
            original = error.original_error
            if isinstance(original, TwinledgerError):
                error.extensions = {**(error.extensions or {}), "code": original.code}
            elif original is not None:
                log.error("GraphQL resolver failed: %s", original)


SCHEMA = TwinSchema(query=Query, mutation=Mutation)


def graphql_router(node: RunningNode, service: TwinService, acting: Acting) -> GraphQLRouter:
    async def context(request: Request) -> dict[str, Any]:
        return {"node": node, "service": service, "acting": acting, "request": request}

    return GraphQLRouter(SCHEMA, context_getter=context, graphql_ide="graphiql", subscription_protocols=())
