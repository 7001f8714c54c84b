"""The store client: one hop to an object's replicas, quorum writes, verified reads.

Used by the CLI (uploading and fetching documents with the home's node certificate),
and by store nodes themselves when they repair.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from twinledger.store.items import (
    AccessDenied,
    FeedUpdate,
    ItemAcl,
    StoreError,
    chunk_hash,
    decode_acl,
    decode_feed_update,
)
from twinledger.store.placement import Replication, StoreNode, rank, replicas
from twinledger.store.protocol import Connection, StoreTls, StoreUnavailable

REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class WriteResult:
    digest: bytes
    acknowledged: tuple[str, ...]
    """Labels of the store nodes that hold the object durably."""


class StoreClient:
    def __init__(self, nodes: Sequence[StoreNode], tls: StoreTls, replication: Replication,
                 timeout: float = REQUEST_TIMEOUT) -> None:  # fmt: skip
        self.nodes = tuple(nodes)
        self.tls = tls
        self.replication = replication.effective(len(self.nodes))
        self.timeout = timeout
        self._connections: dict[bytes, Connection] = {}
        self._opening: dict[bytes, asyncio.Task[Connection]] = {}

    async def close(self) -> None:
        for connection in self._connections.values():
            await connection.close()
        self._connections.clear()

    async def __aenter__(self) -> StoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connection(self, node: StoreNode) -> Connection:
        """An open connection to ``node``, checked to be the node the membership names."""
        existing = self._connections.get(node.signing_key)
        if existing is not None and not existing.closed:
            return existing
        task = self._opening.get(node.signing_key)
        if task is None:
            task = asyncio.ensure_future(self._open(node))
            self._opening[node.signing_key] = task
        try:
            connection = await asyncio.shield(task)
        finally:
            if task.done():
                self._opening.pop(node.signing_key, None)
        self._connections[node.signing_key] = connection
        return connection

    async def _open(self, node: StoreNode) -> Connection:
        try:
            connection = await Connection.open(node.endpoint, self.tls)
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"store node {node.label} at {node.endpoint} is unreachable: {exc}") from None
        if connection.identity.signing_key != node.signing_key or connection.identity.organisation != node.organisation:
            await connection.close()
            raise StoreError(f"the node at {node.endpoint} is not {node.label} as the membership names it",
                             code="wrong_store_node")  # fmt: skip
        return connection

    async def request(self, node: StoreNode, op: str, body: dict[str, object]) -> dict[str, object]:
        connection = await self.connection(node)
        return await connection.request(op, body, self.timeout)

    def _known_nodes(self) -> tuple[StoreNode, ...]:
        if not self.nodes:
            raise StoreError("the consortium has no store nodes (no member node has the store role)",
                             code="no_store_nodes")  # fmt: skip
        return self.nodes

    def ranked(self, key: bytes) -> list[StoreNode]:
        """Every store node, the best home for ``key`` first."""
        return rank(key, self._known_nodes())

    def replicas(self, key: bytes) -> list[StoreNode]:
        return replicas(key, self._known_nodes(), self.replication)

    # -- writes ----------------------------------------------------------------------------
    async def _write(self, key: bytes, op: str, body: dict[str, object], what: str,
                     held: str | None = None) -> WriteResult:  # fmt: skip
        """Send to the r best nodes for ``key``; each that fails is replaced by the next
        in rendezvous order (repair moves the copy home later). Succeeds once a quorum
        acknowledged, after every attempt ended. A refusal with code ``held`` says the
        node holds the object already, and counts as an acknowledgement."""
        candidates = self.ranked(key)
        wanted = self.replication.factor
        acknowledged: list[str] = []
        failures: list[StoreError] = []

        async def attempt(node: StoreNode) -> None:
            try:
                answer = await self.request(node, op, body)
            except StoreError as exc:
                if held is None or exc.code != held:
                    failures.append(exc)
                    return
                answer = {}
            if op == "put" and answer.get("hash") != key:
                failures.append(StoreError(f"{node.label} stored another hash", code="store_mismatch"))
                return
            acknowledged.append(node.label)

        queue = list(candidates)
        refused: StoreError | None = None  # a node refused the request itself: other nodes will too
        while queue and len(acknowledged) < wanted and refused is None:
            batch, queue = queue[: wanted - len(acknowledged)], queue[wanted - len(acknowledged) :]
            await asyncio.gather(*(attempt(node) for node in batch))
            refused = next((f for f in failures if not isinstance(f, StoreUnavailable)), None)
        if len(acknowledged) < self.replication.quorum:
            if refused is not None:
                raise refused
            reason = failures[-1].message if failures else "no store node answered"
            raise StoreError(f"{what}: {len(acknowledged)} of the {self.replication.quorum} acknowledgements a "
                             f"write needs ({reason})", code="no_write_quorum")  # fmt: skip
        return WriteResult(key, tuple(acknowledged))

    async def put_chunk(self, item: bytes, data: bytes, acl: ItemAcl) -> WriteResult:
        digest = chunk_hash(data)
        return await self._write(digest, "put", {"item": item, "acl": acl.encoded(), "data": data},
                                 f"chunk {digest.hex()[:16]}…")  # fmt: skip

    async def put_acl(self, acl: ItemAcl) -> WriteResult:
        """An ACL goes to every store node: it is small, and every node holding a chunk of
        the item checks it. It counts as written once a quorum of nodes took it; repair
        brings it to the others."""
        results = await asyncio.gather(*(self._acl_to(node, acl) for node in self.ranked(acl.item)))
        acknowledged = tuple(label for label in results if label is not None)
        if len(acknowledged) < self.replication.quorum:
            raise StoreError(f"ACL of item {acl.item.hex()[:16]}…: {len(acknowledged)} of the "
                             f"{self.replication.quorum} acknowledgements a write needs", code="no_write_quorum")
        return WriteResult(acl.item, acknowledged)

    async def put_feed_update(self, acl: ItemAcl, update: FeedUpdate) -> WriteResult:
        """Append ``update`` on the feed's replicas; a node that holds it already (a retry
        after a lost acknowledgement) counts as acknowledging."""
        return await self._write(acl.item, "feed_put", {"feed": acl.item, "acl": acl.encoded(),
                                                        "update": update.encoded()},
                                 f"update {update.sequence} of feed {acl.item.hex()[:16]}…", held="replayed_update")  # fmt: skip

    async def _acl_to(self, node: StoreNode, acl: ItemAcl) -> str | None:
        try:
            await self.request(node, "acl_put", {"acl": acl.encoded()})
        except StoreUnavailable:
            return None
        return node.label

    # -- reads -------------------------------------------------------------------------------
    async def get_chunk(self, item: bytes, digest: bytes) -> bytes:
        """The chunk from the first replica whose answer matches its hash."""
        errors: list[StoreError] = []
        for node in self.ranked(digest):
            try:
                answer = await self.request(node, "get", {"item": item, "hash": digest})
            except StoreError as exc:
                errors.append(exc)
                continue
            data = answer.get("data")
            if isinstance(data, bytes) and chunk_hash(data) == digest:
                return data
            errors.append(StoreError(f"{node.label} returned a chunk that does not match its hash"))
        raise _read_error(f"chunk {digest.hex()[:16]}…", errors)

    async def feed_updates(self, acl: ItemAcl, after: int = -1, *, since: int | None = None, until: int | None = None,
                           wait: float = 0, limit: int | None = None) -> list[FeedUpdate]:  # fmt: skip
        """A page of the feed's updates after sequence ``after`` (optionally overlapping a
        time range, or waiting up to ``wait`` seconds for one), each checked against the
        owner's signature and linked to the one before. The feed's best replica answers;
        the next one only if it fails."""
        body: dict[str, object] = {"feed": acl.item, "after": after, "since": since, "until": until,
                                   "wait_ms": round(wait * 1000)}  # fmt: skip
        if limit is not None:
            body["limit"] = limit
        errors: list[StoreError] = []
        for node in self.replicas(acl.item):
            try:
                answer = await self.request(node, "feed_get", body)
                return linked_updates(answer.get("updates"), acl, after if since is None else None)
            except StoreError as exc:
                errors.append(exc)
        raise _read_error(f"feed {acl.item.hex()[:16]}…", errors)

    async def feed_head(self, acl: ItemAcl) -> FeedUpdate | None:
        """The newest update any replica of the feed holds (None: the feed is empty)."""
        heads = await asyncio.gather(*(self._head_at(node, acl) for node in self.replicas(acl.item)))
        found = [h for h in heads if isinstance(h, FeedUpdate)]
        if not found and all(isinstance(h, StoreError) for h in heads):
            raise _read_error(f"feed {acl.item.hex()[:16]}…", [h for h in heads if isinstance(h, StoreError)])
        return max(found, key=lambda update: update.sequence, default=None)

    async def _head_at(self, node: StoreNode, acl: ItemAcl) -> FeedUpdate | StoreError | None:
        try:
            answer = await self.request(node, "feed_get", {"feed": acl.item, "after": -1, "latest": True})
            updates = linked_updates(answer.get("updates"), acl, None)
        except StoreError as exc:
            return exc
        return updates[-1] if updates else None

    async def get_acl(self, item: bytes) -> ItemAcl:
        """The newest validly signed ACL the item's replicas hold."""
        errors: list[StoreError] = []
        found: list[ItemAcl] = []
        for node in self.ranked(item):
            try:
                answer = await self.request(node, "acl_get", {"item": item})
                raw = answer.get("acl")
                acl = decode_acl(raw if isinstance(raw, bytes) else b"")
            except StoreError as exc:
                errors.append(exc)
                continue
            if acl.item == item and (not found or acl.owner == found[0].owner):
                found.append(acl)
            if len(found) >= self.replication.quorum:
                break
        if not found:
            raise _read_error(f"ACL of item {item.hex()[:16]}…", errors)
        return max(found, key=lambda acl: acl.version)


def linked_updates(raws: object, acl: ItemAcl, after: int | None) -> list[FeedUpdate]:
    """Decode a page of a feed's updates: each signed by the owner, in sequence order, each
    linked to the update before it; with ``after`` the page must continue from there."""
    if not isinstance(raws, list):
        raise StoreError("a store node answered feed_get without a list of updates", code="bad_update")
    updates = [decode_feed_update(raw, acl.owner) for raw in raws]
    if any(update.feed != acl.item for update in updates):
        raise StoreError("a store node answered with an update of another feed", code="bad_update")
    if updates and after is not None and updates[0].sequence != after + 1:
        raise StoreError(f"a store node answered with update {updates[0].sequence} after {after}", code="bad_update")
    for before, update in itertools.pairwise(updates):
        if update.sequence <= before.sequence or (update.sequence == before.sequence + 1
                                                  and update.previous != before.hash):  # fmt: skip
            raise StoreError(f"update {update.sequence} does not follow update {before.sequence}", code="bad_update")
        if after is not None and update.sequence != before.sequence + 1:
            raise StoreError(f"a store node left out updates after {before.sequence}", code="bad_update")
    return updates


def _read_error(what: str, errors: list[StoreError]) -> StoreError:
    """Access denied wins (it is the answer); otherwise the failures, summarised."""
    for exc in errors:
        if exc.code == "access_denied":
            return AccessDenied(f"{what}: {exc.message}")
    if errors and all(exc.code == "not_found" for exc in errors):
        return StoreError(f"{what} is on no store node", code="not_found")
    reasons = "; ".join(sorted({exc.message for exc in errors})) or "no store node answered"
    return StoreError(f"{what} could not be read from any replica ({reasons})", code="store_read_failed")

