"""The GraphQL schema (strawberry) at /graphql: typed views over ``TwinService``; every
resolver only reads through the service, as the REST resources do."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, TypeVar

import strawberry
from graphql import GraphQLError
from strawberry.fastapi import GraphQLRouter
from strawberry.scalars import JSON

from twinledger.abc import RunningNode
from twinledger.api.service import TwinService
from twinledger.errors import TwinledgerError

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
    hash: str
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
    specification: str
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

    @strawberry.field(description="A readable diff between two versions of a twin's specification.")
    async def specification_diff(self, info: strawberry.Info, ref: str, old: int, new: int | None = None) -> str:
        node, service = info.context["node"], info.context["service"]
        return await node.read(service.diff, ref, old, new)

    @strawberry.field(description="Consortium members, administrators and open proposals.")
    async def members(self, info: strawberry.Info, at: int | None = None) -> JSON:
        node, service = info.context["node"], info.context["service"]
        return await node.read(service.members, at)


class TwinSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Known errors reach the client with their code; nothing is logged with a stack trace."""
        for error in errors:
            original = error.original_error
            if isinstance(original, TwinledgerError):
                error.extensions = {**(error.extensions or {}), "code": original.code}
            elif original is not None:
                log.error("GraphQL resolver failed: %s", original)


SCHEMA = TwinSchema(query=Query)


def graphql_router(node: RunningNode, service: TwinService) -> GraphQLRouter:
    async def context() -> dict[str, Any]:
        return {"node": node, "service": service}

    return GraphQLRouter(SCHEMA, context_getter=context, graphql_ide="graphiql")
