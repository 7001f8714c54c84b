"""A store node: serves its chunks to the consortium and keeps them replicated.

Every request comes from a node whose certificate chain and current membership were
checked. Writers must belong to the item's owner organisation; readers must be on its
ACL or hold an active grant of the owner whose policy the item's attributes satisfy.
Store nodes also push and fetch replicas, but only of chunks the receiving or
fetching node is a replica of: an organisation gets no ciphertext beyond what its own
store node holds anyway, and without a sealed data key that ciphertext reveals nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from twinledger.core.tasks import Tasks
from twinledger.crypto.certs import NodeIdentity
from twinledger.errors import DecodeError, TwinledgerError
from twinledger.store.client import StoreClient
from twinledger.store.disk import MAX_FEED_PAGE, ChunkStore, CorruptChunk
from twinledger.store.items import (
    CHUNK_SIZE,
    MAX_FEED_UPDATE_BYTES,
    AccessDenied,
    FeedUpdate,
    ItemAcl,
    ReadGrant,
    StoreError,
    chunk_hash,
    decode_acl,
    decode_feed_update,
)
from twinledger.store.placement import Replication, StoreNode, rank, replicas
from twinledger.store.protocol import (
    HANDSHAKE_TIMEOUT,
    OPS,
    PROXY_OPS,
    StoreTls,
    StoreUnavailable,
    frame,
    hello,
    peer_identity,
    read_message,
    write_frame,
)

log = logging.getLogger("twinledger.store")
T = TypeVar("T")
Handler = Callable[[NodeIdentity, dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_CHUNK_BYTES = CHUNK_SIZE + 64
MAX_BATCH = 4096
CONCURRENT_REQUESTS = 32
"""Per connection: requests handled at once before the server stops reading more."""
VERIFIED_ACLS = 4096
MAX_FEED_WAIT_MS = 20_000
"""Longest a feed_get waits for a new update (below the client's request timeout)."""
MAX_CLOCK_SKEW = 300_000_000
"""Microseconds an update's time may lie ahead of this node's clock."""


@dataclass(frozen=True)
class Directory:
    """Who the store serves, from the membership and sharing contracts at the node's head."""

    nodes: tuple[StoreNode, ...]
    members: Mapping[bytes, str]
    """Every current member node's signing key, with its organisation."""
    grants: tuple[ReadGrant, ...] = ()
    """Active grants."""

    def may_read(self, acl: ItemAcl, organisation: str) -> bool:
        now = int(time.time() * 1000)
        return acl.allows(organisation) or any(grant.covers(acl, organisation, now) for grant in self.grants)


@dataclass
class RepairReport:
    acls_pushed: int = 0
    chunks_checked: int = 0
    chunks_pushed: int = 0
    feed_updates_pushed: int = 0
    unreachable: set[str] = field(default_factory=set)


@dataclass
class AuditReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    repaired: int = 0
    unrepaired: list[str] = field(default_factory=list)


def _field(message: Mapping[str, Any], name: str, size: int | None = None, limit: int = MAX_CHUNK_BYTES) -> bytes:
    value = message.get(name)
    if not isinstance(value, bytes) or (size is not None and len(value) != size) or len(value) > limit:
        expected = f"{size} bytes" if size is not None else f"at most {limit} bytes"
        raise StoreError(f"'{name}' must be a byte string of {expected}", code="bad_request")
    return value


def _integer(message: Mapping[str, Any], name: str, default: int, minimum: int) -> int:
    value = message.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value < 1 << 62:
        raise StoreError(f"'{name}' must be an integer from {minimum}", code="bad_request")
    return value


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StoreService:
    def __init__(self, disk: ChunkStore, tls: StoreTls, me: NodeIdentity, directory: Callable[[], Directory],
                 replication: Replication, repair_interval: float = 30.0,
                 extensions: Mapping[str, Handler] | None = None) -> None:  # fmt: skip
        self.disk = disk
        self.extensions = dict(extensions or {})
        """Handlers of operations other layers serve on this listener (the proxy's)."""
        self.tls = tls
        self.me = me
        self.directory = directory
        self.replication = replication
        self.repair_interval = repair_interval
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="store-disk")
        self._server: asyncio.Server | None = None
        self._tasks = Tasks()
        self._client: StoreClient | None = None
        self._acls: OrderedDict[bytes, ItemAcl] = OrderedDict()
        self._repairing = asyncio.Lock()
        self._feed_changes: dict[bytes, asyncio.Event] = {}
        self.address = ""

    # -- life-cycle --------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> str:
        self._server = await asyncio.start_server(self._tasks.connections(self._serve), host, port,
                                                  ssl=self.tls.server,
                                                  ssl_handshake_timeout=HANDSHAKE_TIMEOUT, limit=1 << 20)  # fmt: skip
        bound = self._server.sockets[0].getsockname()
        self.address = f"{host}:{bound[1]}"
        if self.repair_interval > 0:
            self._tasks.spawn(self._repair_loop())
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._tasks.stop()
        if self._client is not None:
            await self._client.close()
        self._pool.shutdown(wait=True)
        self.disk.close()

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def client(self) -> StoreClient:
        """This node's client of the store, as its organisation (the API's feed streams use it)."""
        return self._peers()[0]

    def _peers(self) -> tuple[StoreClient, list[StoreNode]]:
        """A client for the other store nodes (rebuilt when the membership changes them)."""
        nodes = tuple(replace(node, endpoint=self.address) if node.signing_key == self.me.signing_key else node
                      for node in self.directory().nodes)  # fmt: skip
        if self._client is None or self._client.nodes != nodes:
            if self._client is not None:
                self._tasks.spawn(self._client.close())
            self._client = StoreClient(nodes, self.tls, self.replication)
        return self._client, [n for n in nodes if n.signing_key != self.me.signing_key]

    # -- serving -----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(read_message(reader), HANDSHAKE_TIMEOUT)
            try:
                identity = peer_identity(writer, first, self.tls)
                self._check_member(identity)
            except TwinledgerError as exc:
                writer.write(frame({"id": 0, "ok": False, "code": exc.code, "message": exc.message}))
                await writer.drain()
                return
            writer.write(frame({**hello(self.tls), "ok": True}))
            slots = asyncio.Semaphore(CONCURRENT_REQUESTS)
            while True:
                message = await read_message(reader)
                await slots.acquire()
                self._tasks.spawn(self._answer(identity, message, writer, slots))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, DecodeError):
            pass
        finally:
            writer.close()

    async def _answer(self, identity: NodeIdentity, message: dict[str, Any], writer: asyncio.StreamWriter,
                      slots: asyncio.Semaphore) -> None:  # fmt: skip
        try:
            response = await self.handle(identity, message)
            with contextlib.suppress(OSError, ssl.SSLError):  # the caller went away
                write_frame(writer, frame(response))
                await writer.drain()
        finally:
            slots.release()

    async def handle(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """One request's response; every refusal names its reason."""
        number = message["id"]
        op = message.get("op")
        try:
            if op not in OPS | PROXY_OPS:
                raise StoreError(f"unknown store operation {str(op)[:40]!r}", code="bad_request")
            self._check_member(identity)
            if op in PROXY_OPS:
                if op not in self.extensions:
                    raise StoreError(f"{self.me.organisation}/{self.me.node} is not a proxy node", code="not_a_proxy")
                result = await self.extensions[op](identity, message)
            else:
                result = await getattr(self, f"_{op}")(identity, message)
        except TwinledgerError as exc:
            return {"id": number, "ok": False, "code": exc.code, "message": exc.message}
        return {**result, "id": number, "ok": True}

    def _check_member(self, identity: NodeIdentity) -> None:
        if self.directory().members.get(identity.signing_key) != identity.organisation:
            raise AccessDenied(f"node {identity.node} of {identity.organisation} is not a current member node")

    def _is_store_node(self, identity: NodeIdentity) -> bool:
        return any(n.signing_key == identity.signing_key for n in self.directory().nodes)

    def _require_store_node(self, identity: NodeIdentity, op: str) -> None:
        if not self._is_store_node(identity):
            raise AccessDenied(f"only store nodes may {op}; {identity.organisation}/{identity.node} is none")

    def _replica_of(self, key: bytes, digest: bytes) -> bool:
        """Whether the node with signing key ``key`` is one of ``digest``'s r replicas."""
        return any(node.signing_key == key for node in replicas(digest, self.directory().nodes, self.replication))

    async def _verified_acl(self, raw: bytes) -> ItemAcl:
        """Decode and check an ACL, remembering ones already checked (one arrives per chunk)."""
        digest = hashlib.sha256(raw).digest()
        acl = self._acls.get(digest)
        if acl is None:
            acl = decode_acl(raw)
            await self._disk(self.disk.put_acl, acl)
            self._acls[digest] = acl
            if len(self._acls) > VERIFIED_ACLS:
                self._acls.popitem(last=False)
        return acl

    async def _known_acl(self, item: bytes) -> ItemAcl:
        acl = await self._disk(self.disk.acl, item)
        if acl is None:
            raise StoreError(f"item {item.hex()[:16]}… is not on this store node", code="not_found")
        return acl

    async def _readable_acl(self, identity: NodeIdentity, item: bytes) -> ItemAcl:
        acl = await self._known_acl(item)
        if not self.directory().may_read(acl, identity.organisation):
            raise AccessDenied(f"organisation {identity.organisation} is not a reader of item {item.hex()[:16]}… "
                               "and holds no active grant that covers it")  # fmt: skip
        return acl

    # -- operations --------------------------------------------------------------------------
    async def _put(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        item, data = _field(message, "item", 32), _field(message, "data")
        if message.get("acl") is not None:
            acl = await self._verified_acl(_field(message, "acl", limit=1 << 16))
            if acl.item != item:
                raise StoreError("the ACL sent with a chunk is for another item", code="bad_request")
        acl = await self._known_acl(item)
        if identity.organisation != acl.owner_organisation and not (
                self._is_store_node(identity) and self._replica_of(self.me.signing_key, chunk_hash(data))):  # fmt: skip
            raise AccessDenied(f"organisation {identity.organisation} may not write item {item.hex()[:16]}… "
                               f"of {acl.owner_organisation}")  # fmt: skip
        return {"hash": await self._disk(self.disk.put_chunk, item, data)}

    async def _get(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        item, digest = _field(message, "item", 32), _field(message, "hash", 32)
        await self._readable_acl(identity, item)
        return {"data": await self._chunk(item, digest)}

    async def _chunk(self, item: bytes, digest: bytes) -> bytes:
        """A chunk of ``item`` that this node indexes; a corrupt one is repaired from a replica first."""
        if not await self._disk(self.disk.belongs, item, digest):
            raise StoreError(f"chunk {digest.hex()[:16]}… of item {item.hex()[:16]}… is not on this node",
                             code="not_found")  # fmt: skip
        try:
            data = await self._disk(self.disk.read_chunk, digest)
        except CorruptChunk:
            log.warning("chunk %s failed its hash check; repairing it from a replica", digest.hex()[:16])
            if (data := await self._repair_chunk(item, digest)) is None:
                raise CorruptChunk(f"chunk {digest.hex()[:16]}… is damaged on this node and no replica could "
                                   "repair it") from None  # fmt: skip
        if data is None and (data := await self._repair_chunk(item, digest)) is None:
            raise StoreError(f"chunk {digest.hex()[:16]}… is missing on this node and no replica could repair it",
                             code="not_found")  # fmt: skip
        return data

    async def _acl_put(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        acl = decode_acl(_field(message, "acl", limit=1 << 16))
        stored = await self._disk(self.disk.put_acl, acl)
        return {"stored": stored}

    async def _acl_get(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        acl = await self._readable_acl(identity, _field(message, "item", 32))
        return {"acl": acl.encoded()}

    def _pairs(self, message: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        pairs = message.get("chunks")
        if (not isinstance(pairs, list) or len(pairs) > MAX_BATCH
                or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, bytes) and len(x) == 32
                                                                       for x in p) for p in pairs)):  # fmt: skip
            raise StoreError(f"'chunks' must be a list of at most {MAX_BATCH} [item, hash] pairs", code="bad_request")
        return [(p[0], p[1]) for p in pairs]

    async def _have(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        self._require_store_node(identity, "ask which chunks a node holds")
        return {"have": await self._disk(self.disk.holds, self._pairs(message))}

    async def _fetch(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """A replica for a store node that should hold it itself: a store node's
        organisation gets no ciphertext beyond what its node holds anyway."""
        self._require_store_node(identity, "fetch replicas")
        item, digest = _field(message, "item", 32), _field(message, "hash", 32)
        if not self._replica_of(identity.signing_key, digest):
            raise AccessDenied(f"{identity.organisation}/{identity.node} is no replica of chunk {digest.hex()[:16]}…")
        if not await self._disk(self.disk.belongs, item, digest):
            raise StoreError(f"chunk {digest.hex()[:16]}… is not on this node", code="not_found")
        data = await self._disk(self.disk.read_chunk, digest)
        if data is None:
            raise StoreError(f"chunk {digest.hex()[:16]}… is not on this node", code="not_found")
        return {"data": data}

    async def _acl_sync(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        self._require_store_node(identity, "synchronise ACLs")
        versions = message.get("versions")
        if (not isinstance(versions, list) or len(versions) > MAX_BATCH
                or not all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], bytes) and isinstance(v[1], int)
                           for v in versions)):  # fmt: skip
            raise StoreError(f"'versions' must be a list of at most {MAX_BATCH} [item, version] pairs",
                             code="bad_request")  # fmt: skip
        mine = await self._disk(self.disk.acl_versions)
        return {"wanted": [item for item, version in versions if mine.get(item, 0) < version]}

    # -- feeds -----------------------------------------------------------------------------
    async def _feed_acl(self, item: bytes) -> ItemAcl:
        acl = await self._known_acl(item)
        if acl.kind != "feed":
            raise StoreError(f"item {item.hex()[:16]}… is a {acl.kind}, not a feed", code="bad_request")
        return acl

    async def _feed_put(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """The owner's organisation appends; store nodes relay to the feed's replicas (repair).
        Either way only updates the owner key signed that follow this node's head."""
        item = _field(message, "feed", 32)
        if message.get("acl") is not None:
            acl = await self._verified_acl(_field(message, "acl", limit=1 << 16))
            if acl.item != item:
                raise StoreError("the ACL sent with a feed update is for another feed", code="bad_request")
        acl = await self._feed_acl(item)
        if identity.organisation != acl.owner_organisation and not (
                self._is_store_node(identity) and self._replica_of(self.me.signing_key, item)):  # fmt: skip
            raise AccessDenied(f"organisation {identity.organisation} may not append to feed {item.hex()[:16]}… "
                               f"of {acl.owner_organisation}")  # fmt: skip
        update = decode_feed_update(_field(message, "update", limit=MAX_FEED_UPDATE_BYTES), acl.owner)
        if update.feed != item:
            raise StoreError("the update is for another feed", code="bad_update")
        if update.time > time.time_ns() // 1000 + MAX_CLOCK_SKEW:
            raise StoreError(f"update {update.sequence} is dated more than {MAX_CLOCK_SKEW // 60_000_000} minutes "
                             "ahead of this node's clock", code="future_update")  # fmt: skip
        await self._append(acl, update)
        return {"head": update.sequence}

    async def _append(self, acl: ItemAcl, update: FeedUpdate) -> None:
        """Store ``update``; a node that missed earlier updates fetches them from the other
        store nodes first, so one that was down serves the whole feed again."""
        try:
            await self._disk(self.disk.put_feed_update, update)
        except StoreError as exc:
            if exc.code != "out_of_order" or not await self._catch_up(acl, update.sequence):
                raise
            await self._disk(self.disk.put_feed_update, update)
        self._feed_changed(update.feed)

    async def _catch_up(self, acl: ItemAcl, before: int) -> bool:
        """Fetch, check and store the updates before sequence ``before`` this node lacks."""
        head = await self._disk(self.disk.feed_head, acl.item)
        after = head.sequence if head is not None else -1
        if after + 1 >= before:
            return False
        client, others = self._peers()
        for node in rank(acl.item, others):
            try:
                after = await self._fetch_feed(client, node, acl, after, before)
            except StoreError as exc:
                log.info("feed catch-up from %s stopped: %s", node.label, exc.message)
            if after + 1 >= before:
                self._feed_changed(acl.item)
                return True
        return False

    async def _fetch_feed(self, client: StoreClient, node: StoreNode, acl: ItemAcl, after: int, before: int) -> int:
        """Store the updates between ``after`` and ``before`` that ``node`` holds, each
        checked against the owner's signature and the chain; returns the new head."""
        while after + 1 < before:
            answer = await client.request(node, "feed_get", {"feed": acl.item, "after": after,
                                                             "limit": min(MAX_FEED_PAGE, before - after - 1)})  # fmt: skip
            raws = answer.get("updates")
            if not isinstance(raws, list) or not raws:
                break
            for raw in raws:
                update = decode_feed_update(raw, acl.owner)
                if update.feed != acl.item or update.sequence != after + 1:
                    return after
                try:
                    await self._disk(self.disk.put_feed_update, update)
                except StoreError as exc:
                    if exc.code != "replayed_update":
                        raise
                after = update.sequence
        return after

    def _feed_changed(self, item: bytes) -> None:
        event = self._feed_changes.pop(item, None)
        if event is not None:
            event.set()

    async def _feed_get(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """Readers see a feed's updates (segments stay sealed); store nodes too, for
        catch-up and repair: updates hold hashes and times, no sample values."""
        item = _field(message, "feed", 32)
        acl = await self._feed_acl(item)
        if not self.directory().may_read(acl, identity.organisation) and not self._is_store_node(identity):
            raise AccessDenied(f"organisation {identity.organisation} is not a reader of feed {item.hex()[:16]}…")
        after = _integer(message, "after", -1, minimum=-1)
        limit = _integer(message, "limit", MAX_FEED_PAGE, minimum=1)
        since, until = message.get("since"), message.get("until")
        if any(v is not None and (not isinstance(v, int) or isinstance(v, bool)) for v in (since, until)):
            raise StoreError("'since' and 'until' must be integer microseconds", code="bad_request")
        wait = _integer(message, "wait_ms", 0, minimum=0)
        if wait > MAX_FEED_WAIT_MS:
            raise StoreError(f"'wait_ms' must be at most {MAX_FEED_WAIT_MS}", code="bad_request")
        if message.get("latest") is True:
            head = await self._disk(self.disk.feed_head, item)
            return {"updates": [head.encoded()] if head is not None else []}
        changed = self._feed_changes.setdefault(item, asyncio.Event())
        updates = await self._disk(self.disk.feed_updates, item, after, limit, since, until)
        if not updates and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait / 1000)
            updates = await self._disk(self.disk.feed_updates, item, after, limit, since, until)
        return {"updates": updates}

    async def _feed_sync(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        self._require_store_node(identity, "synchronise feeds")
        heads = message.get("heads")
        if (not isinstance(heads, list) or len(heads) > MAX_BATCH
                or not all(isinstance(h, list) and len(h) == 2 and isinstance(h[0], bytes) and isinstance(h[1], int)
                           for h in heads)):  # fmt: skip
            raise StoreError(f"'heads' must be a list of at most {MAX_BATCH} [feed, sequence] pairs",
                             code="bad_request")  # fmt: skip
        mine = await self._disk(self.disk.feed_heads)
        return {"behind": [[feed, mine.get(feed, -1)] for feed, sequence in heads if mine.get(feed, -1) < sequence]}

    # -- keeping replicas --------------------------------------------------------------------
    async def _repair_chunk(self, item: bytes, digest: bytes) -> bytes | None:
        """Fetch a good copy from another replica and store it again."""
        client, others = self._peers()
        for node in rank(digest, others):
            try:
                answer = await client.request(node, "fetch", {"item": item, "hash": digest})
            except StoreError:
                continue
            data = answer.get("data")
            if isinstance(data, bytes) and chunk_hash(data) == digest:
                await self._disk(self.disk.put_chunk, item, data)
                log.info("chunk %s repaired from %s", digest.hex()[:16], node.label)
                return data
        return None

    async def repair(self) -> RepairReport:
        """One anti-entropy pass: newer ACLs and missing chunks are pushed to the nodes that
        should hold them, so a returning or new store node catches up."""
        async with self._repairing:
            report = RepairReport()
            client, others = self._peers()
            await self._push_acls(client, others, report)
            await self._push_feeds(client, others, report)
            chunks = await self._disk(lambda: list(self.disk.item_chunks()))
            report.chunks_checked = len(chunks)
            owed: dict[bytes, list[tuple[bytes, bytes]]] = {}
            for item, digest in chunks:
                for node in client.replicas(digest):
                    if node.signing_key != self.me.signing_key:
                        owed.setdefault(node.signing_key, []).append((item, digest))
            for node in others:
                if node.label in report.unreachable:
                    continue
                try:
                    for batch in _batches(owed.get(node.signing_key, []), MAX_BATCH):
                        answer = await client.request(node, "have", {"chunks": [list(pair) for pair in batch]})
                        held = answer.get("have")
                        if not isinstance(held, list) or len(held) != len(batch):
                            raise StoreUnavailable(f"{node.label} answered have with a malformed list")
                        missing = [pair for pair, present in zip(batch, held, strict=True) if not present]
                        pushed = await asyncio.gather(*(self._push_chunk(client, node, *pair) for pair in missing))
                        report.chunks_pushed += sum(pushed)
                except StoreUnavailable:
                    report.unreachable.add(node.label)
            if report.chunks_pushed or report.acls_pushed or report.feed_updates_pushed:
                log.info("repair: pushed %d ACL(s), %d feed update(s) and %d chunk(s)", report.acls_pushed,
                         report.feed_updates_pushed, report.chunks_pushed)  # fmt: skip
            return report

    async def _push_acls(self, client: StoreClient, others: list[StoreNode], report: RepairReport) -> None:
        versions = sorted((await self._disk(self.disk.acl_versions)).items())
        for node in others:
            try:
                for batch in _batches(versions, MAX_BATCH):
                    answer = await client.request(node, "acl_sync", {"versions": [list(v) for v in batch]})
                    wanted = answer.get("wanted")
                    if not isinstance(wanted, list):
                        raise StoreUnavailable(f"{node.label} answered acl_sync with a malformed list")
                    for item in wanted:
                        acl = await self._disk(self.disk.acl, item) if isinstance(item, bytes) else None
                        if acl is not None:
                            await client.request(node, "acl_put", {"acl": acl.encoded()})
                            report.acls_pushed += 1
            except StoreUnavailable:
                report.unreachable.add(node.label)

    async def _push_feeds(self, client: StoreClient, others: list[StoreNode], report: RepairReport) -> None:
        """Bring each feed's replicas up to this node's head, oldest missing update first."""
        heads = await self._disk(self.disk.feed_heads)
        owed: dict[bytes, list[list[object]]] = {}
        for feed, sequence in heads.items():
            for node in client.replicas(feed):
                if node.signing_key != self.me.signing_key:
                    owed.setdefault(node.signing_key, []).append([feed, sequence])
        for node in others:
            if node.label in report.unreachable:
                continue
            try:
                for batch in _batches(owed.get(node.signing_key, []), MAX_BATCH):
                    answer = await client.request(node, "feed_sync", {"heads": batch})
                    behind = answer.get("behind")
                    if not isinstance(behind, list) or not all(
                            isinstance(b, list) and len(b) == 2 and isinstance(b[0], bytes) and isinstance(b[1], int)
                            for b in behind):  # fmt: skip
                        raise StoreUnavailable(f"{node.label} answered feed_sync with a malformed list")
                    for feed, after in behind:
                        try:
                            report.feed_updates_pushed += await self._push_feed(client, node, feed, after)
                        except StoreUnavailable:
                            raise
                        except StoreError as exc:
                            log.warning("repair: %s refused feed %s: %s", node.label, feed.hex()[:16], exc.message)
            except StoreUnavailable:
                report.unreachable.add(node.label)

    async def _push_feed(self, client: StoreClient, node: StoreNode, feed: bytes, after: int) -> int:
        acl = await self._disk(self.disk.acl, feed)
        if acl is None:
            return 0
        pushed = 0
        while raws := await self._disk(self.disk.feed_updates, feed, after):
            for raw in raws:
                try:
                    await client.request(node, "feed_put", {"feed": feed, "acl": acl.encoded(), "update": raw})
                    pushed += 1
                except StoreError as exc:
                    if exc.code != "replayed_update":
                        raise
            after = decode_feed_update(raws[-1], acl.owner).sequence
        return pushed

    async def _push_chunk(self, client: StoreClient, node: StoreNode, item: bytes, digest: bytes) -> bool:
        try:
            data = await self._disk(self.disk.read_chunk, digest)
        except CorruptChunk:
            data = await self._repair_chunk(item, digest)
        acl = await self._disk(self.disk.acl, item)
        if data is None or acl is None:
            return False
        await client.request(node, "put", {"item": item, "acl": acl.encoded(), "data": data})
        return True

    async def audit(self) -> AuditReport:
        """Re-hash every local chunk and repair the damaged or missing ones from replicas."""
        checked, bad = await self._disk(self.disk.audit)
        report = AuditReport(checked=checked, corrupt=[digest.hex() for digest, _ in bad])
        for digest, item in bad:
            if await self._repair_chunk(item, digest) is not None:
                report.repaired += 1
            else:
                report.unrepaired.append(digest.hex())
        return report

    async def _repair_loop(self) -> None:
        while True:
            await asyncio.sleep(self.repair_interval)
            try:
                await self.repair()
            except TwinledgerError as exc:
                log.warning("repair pass failed: %s", exc.message)
