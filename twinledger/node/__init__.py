"""The node process: the composition root that wires the parts its roles enable.

Threads: the asyncio loop serves the API and drives consensus; one *ledger* thread owns
the chain, the mempool and every store write (so they need no locks); a small pool
decodes and verifies submitted transactions on the other cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from twinledger.abc import BlockResult, NetworkedProducer, StateReader, TransactionLocation
from twinledger.config import NodeConfig, passphrase
from twinledger.consensus import create_consensus
from twinledger.contracts import default_runtime
from twinledger.core.encoding import decode, encode
from twinledger.core.hashing import hash_obj
from twinledger.core.proof import InclusionProof
from twinledger.core.types import (
    Block,
    BlockHeader,
    CommitCertificate,
    Transaction,
    decode_certificate,
    decode_header,
    decode_transaction,
)
from twinledger.errors import DecodeError, InvalidBlock, TwinledgerError
from twinledger.ledger.chain import Chain, ImportOutcome, keep_all, keep_filter, return_abandoned
from twinledger.ledger.genesis import Genesis
from twinledger.ledger.mempool import Mempool
from twinledger.ledger.store import open_store
from twinledger.ledger.validation import decode_and_validate
from twinledger.net.peers import Peer, PeerManager
from twinledger.net.wire import Frame
from twinledger.store.placement import Replication
from twinledger.store.server import Directory, StoreService

if TYPE_CHECKING:
    from twinledger.crypto.certs import NodeIdentity
    from twinledger.ingest.service import IngestService
    from twinledger.sharing.proxy import ProxyService
    from twinledger.store.protocol import StoreTls

log = logging.getLogger("twinledger.node")
T = TypeVar("T")
MAX_GOSSIP_TXS = 10_000
CONSENSUS_RECORD = "consensus/vote-guard"
EVIDENCE_PREFIX = "evidence/"
SYNC_BATCH = 32
"""Blocks per block-sync response."""
SYNC_RETRY = 1.0
"""Seconds before the same height is asked for again."""
VERIFY_CHUNK = 256
PROCESS_BATCH = 64
"""Batches at least this large are verified in worker processes; smaller ones in a thread."""


def _die_with_parent(parent: int) -> None:
    """Make a verifier process end when the node does, even after a kill -9 of the node."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(0)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


@dataclass(frozen=True)
class SubmitResult:
    """Per-transaction outcome of a submission: accepted (with hash) or an error."""

    index: int
    tx_hash: bytes | None = None
    error: TwinledgerError | None = None
    duplicate: bool = False


@dataclass
class Admission:
    """What the ledger thread decided about a submission."""

    results: list[SubmitResult] = field(default_factory=list)
    fresh: list[Transaction] = field(default_factory=list)
    journaled: Future[None] = field(default_factory=Future)
    """Resolves once ``fresh`` is durable."""
    waits: set[Future[None]] = field(default_factory=set)
    """Journal writes of other submissions that this one's duplicates depend on."""


@dataclass
class Metrics:
    BUCKETS: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    accepted: int = 0
    committed: int = 0
    blocks: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    last_block_interval: float = 0.0
    last_block_time: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(Metrics.BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    equivocations: int = 0

    def observe_latency(self, seconds: float) -> None:
        for i, bound in enumerate(self.BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                break
        else:
            self.latency_buckets[-1] += 1
        self.latency_sum += seconds
        self.latency_count += 1


class Node(NetworkedProducer):
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.genesis = Genesis.read(config.genesis_path)
        self.store = open_store(config.store_url)
        key = config.signing_key() if config.produces_blocks else None
        self.consensus = create_consensus(self.genesis, key)
        if config.keeps_everything:
            keep = keep_all
        else:
            own = frozenset({config.signing_key().public, config.signing_key("operator").public})
            keep = keep_filter(frozenset(config.keep_contracts), own)
        self.chain = Chain(self.store, default_runtime(), self.consensus, self.genesis, keep)
        self.mempool = Mempool(config.mempool_max_txs)
        for tx in self.store.pending():
            if self.store.transaction(tx.hash) is None:  # a row left behind by a commit racing its journal write
                self.mempool.add(tx)
        self.metrics = Metrics()
        self._ledger = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._journal = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._journaling: dict[bytes, Future[None]] = {}
        self._unjournaled: set[bytes] = set()
        """Pending transactions relayed by peers, which this node has not written durably."""
        self._readers = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="read")
        self._verifiers: ProcessPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tx_available: asyncio.Event | None = None
        self._block_event: asyncio.Event | None = None
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._submitted_at: dict[bytes, float] = {}
        self.network: PeerManager | None = None
        self.storage: StoreService | None = None
        self.proxy: ProxyService | None = None
        self.ingest: IngestService | None = None
        self._directory: tuple[int, Directory] | None = None
        self._sync_asked: dict[int, float] = {}
        self.started = time.time()
        self.stopping = False
        """Set when the node was told to stop, so long-lived API streams end."""

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    @property
    def head(self) -> BlockHeader:
        return self.chain.head

    async def in_ledger(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the ledger thread, which owns the chain and the mempool."""
        return await asyncio.get_running_loop().run_in_executor(self._ledger, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store read off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    def _verifier_processes(self) -> ProcessPoolExecutor:
        """Worker processes for signature checks of large batches: Python holds one lock per
        process, so verification in threads would compete with the ledger for it."""
        if self._verifiers is None:
            workers = max(1, os.cpu_count() or 1)
            self._verifiers = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_die_with_parent, initargs=(os.getpid(),))  # fmt: skip
        return self._verifiers

    # -- submission --------------------------------------------------------------------------
    def _admit(self, candidates: list[Transaction | TwinledgerError], journal: bool) -> Admission:
        """Stateful checks; the fresh transactions enter the mempool, as journaling if they
        are to be written durably (ledger thread)."""
        state = self.chain.state()
        admission = Admission()
        for index, item in enumerate(candidates):
            if isinstance(item, TwinledgerError):
                admission.results.append(SubmitResult(index, error=item))
                continue
            try:
                if not self.mempool.check(item):
                    admission.results.append(SubmitResult(index, item.hash, duplicate=True))
                    if item.hash in self._journaling:
                        admission.waits.add(self._journaling[item.hash])
                    elif journal and item.hash in self._unjournaled:  # a peer relayed it; a client now asks
                        self._unjournaled.discard(item.hash)
                        admission.fresh.append(item)
                    continue
                self.chain.app.check_transaction(state, item)
            except TwinledgerError as exc:
                if exc.code == "nonce_replayed" and self.store.transaction(item.hash) is not None:
                    admission.results.append(SubmitResult(index, item.hash, duplicate=True))  # resubmitted after commit
                else:
                    admission.results.append(SubmitResult(index, error=exc))
                continue
            self.mempool.add(item, durable=not journal)
            if journal:
                self._journaling[item.hash] = admission.journaled
            else:
                self._unjournaled.add(item.hash)
            admission.fresh.append(item)
            admission.results.append(SubmitResult(index, item.hash))
        return admission

    def _journaled(self, admission: Admission, failure: BaseException | None) -> None:
        """The journal write of ``admission.fresh`` ended (ledger thread)."""
        hashes = [tx.hash for tx in admission.fresh]
        for tx_hash in hashes:
            self._journaling.pop(tx_hash, None)
        if failure is None:
            self.mempool.mark_durable(hashes)
            admission.journaled.set_result(None)
        else:
            self.mempool.remove(hashes)
            admission.journaled.set_exception(failure)

    async def submit(self, raw: list[bytes], from_peer: bool = False) -> list[SubmitResult]:
        """Admit transactions; one accepted from a client is durable when this returns.

        The durable write runs on the journal thread, so the ledger thread builds and
        commits blocks meanwhile; the mempool offers a transaction to blocks only after it.
        Transactions relayed by peers are not journaled: the node that acknowledged them
        to a client holds them durably, and this node only needs them to build and check
        blocks. Client submissions are gossiped to the peers."""
        loop = asyncio.get_running_loop()
        now_ms = int(time.time() * 1000)
        pool = self._verifier_processes() if len(raw) >= PROCESS_BATCH else self._readers
        chunks = [raw[i : i + VERIFY_CHUNK] for i in range(0, len(raw), VERIFY_CHUNK)]
        verified = await asyncio.gather(
            *(loop.run_in_executor(pool, decode_and_validate, chunk, self.chain_id, now_ms) for chunk in chunks)
        )
        admission = await self.in_ledger(self._admit, [item for chunk in verified for item in chunk], not from_peer)
        if admission.fresh and not from_peer:
            try:
                await loop.run_in_executor(self._journal, self.store.add_pending, admission.fresh)
            except BaseException as exc:
                await self.in_ledger(self._journaled, admission, exc)
                raise
            await self.in_ledger(self._journaled, admission, None)
        for earlier in admission.waits:  # duplicates of transactions another request is journaling
            await asyncio.wrap_future(earlier)
        now = time.monotonic()
        for result in admission.results:
            if result.error is not None:
                self.metrics.rejected[result.error.code] += 1
            elif not result.duplicate and result.tx_hash is not None:
                self.metrics.accepted += 1
                self._submitted_at[result.tx_hash] = now
        if admission.fresh and self._tx_available is not None:
            self._tx_available.set()
        if not from_peer and admission.fresh and self.network is not None:
            self.network.broadcast("txs", {"txs": [tx.encoded for tx in admission.fresh]})
        return admission.results

    # -- block production (BlockProducer) ------------------------------------------------------
    async def wait_for_transactions(self) -> None:
        assert self._tx_available is not None
        while not len(self.mempool):
            self._tx_available.clear()
            await self._tx_available.wait()

    def _build(self, proposer: bytes, allow_empty: bool) -> tuple[Block, BlockResult] | None:
        txs = self.mempool.select(self.genesis.max_block_txs)
        if not txs and not allow_empty:
            return None
        return self.chain.build_block(txs, proposer, int(time.time() * 1000))

    async def build_block(self, proposer: bytes, allow_empty: bool = False) -> tuple[Block, BlockResult] | None:
        return await self.in_ledger(self._build, proposer, allow_empty)

    def _execute_proposal(self, block: Block) -> BlockResult:
        return self.chain.execute_proposal(block, verified=self.mempool)

    async def execute_proposal(self, block: Block) -> BlockResult:
        return await self.in_ledger(self._execute_proposal, block)

    async def durably(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.in_ledger(fn, *args)

    def consensus_record(self) -> tuple[Callable[[], bytes | None], Callable[[bytes], None]]:
        return (lambda: self.store.meta(CONSENSUS_RECORD)), (lambda raw: self.store.set_meta(CONSENSUS_RECORD, raw))

    async def record_evidence(self, kind: str, first: dict[str, Any], second: dict[str, Any]) -> None:
        doc = {"kind": kind, "first": first, "second": second, "detected": int(time.time() * 1000)}
        key = EVIDENCE_PREFIX + hash_obj("twinledger/evidence/v1", [first, second]).hex()
        await self.in_ledger(self.store.set_meta, key, encode(doc))
        self.metrics.equivocations += 1

    def _commit(self, block: Block, certificate: CommitCertificate, result: BlockResult) -> bool:
        """Commit a decided block; False if block sync already brought it."""
        if self.chain.head.hash == block.hash:
            return False
        if block.header.previous != self.chain.head.hash:
            raise InvalidBlock(f"decided block {block.height} no longer extends the head ({self.chain.head.height})")
        self.chain.commit(block, certificate, result)
        self._forget(block)
        return True

    def _forget(self, block: Block) -> None:
        """Drop a committed block's transactions from the mempool."""
        hashes = [tx.hash for tx in block.transactions]
        self.mempool.remove(hashes)
        self._unjournaled.difference_update(hashes)

    async def commit_block(self, block: Block, certificate: CommitCertificate, result: BlockResult) -> None:
        if await self.in_ledger(self._commit, block, certificate, result):
            self._committed(block)

    def _committed(self, block: Block) -> None:
        """Metrics, waiting clients and block listeners, after ``block`` became the head."""
        now = time.monotonic()
        m = self.metrics
        m.blocks += 1
        m.committed += len(block.transactions)
        if m.last_block_time:
            m.last_block_interval = now - m.last_block_time
        m.last_block_time = now
        for tx in block.transactions:
            submitted = self._submitted_at.pop(tx.hash, None)
            if submitted is not None:
                m.observe_latency(now - submitted)
            for waiter in self._waiters.pop(tx.hash, ()):
                if not waiter.done():
                    waiter.set_result(None)
        if self._block_event is not None:
            self._block_event.set()
            self._block_event = asyncio.Event()
        if self.proxy is not None and self._loop is not None:
            self._loop.run_in_executor(self._readers, self._sweep_proxy_keys)

    def _grants(self) -> list[dict[str, Any]]:
        """Every grant at the head, as the sharing contract stores it."""
        from twinledger.contracts.sharing import GRANT_PREFIX

        return [grant for _, grant in self.store.state_items(GRANT_PREFIX, self.head.height)]

    def _sweep_proxy_keys(self) -> None:
        """Delete the re-encryption keys of grants that ended (after every block)."""
        assert self.proxy is not None
        try:
            self.proxy.sweep(self.head_state())
        except (sqlite3.Error, TwinledgerError) as exc:
            log.warning("could not sweep the proxy's keys: %s", exc)

    async def wait_for_height(self, height: int, timeout: float) -> bool:
        """True once the head reaches ``height``; False if ``timeout`` seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.head.height < height:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._block_event is None:
                return False
            try:
                await asyncio.wait_for(self._block_event.wait(), remaining)
            except TimeoutError:
                return False
        return True

    # -- reading -----------------------------------------------------------------------------
    async def wait_committed(self, tx_hash: bytes, timeout: float) -> TransactionLocation | None:
        """The committed transaction, waiting up to ``timeout`` seconds for it to commit."""
        async with contextlib.aclosing(self.commits([tx_hash], timeout)) as located:
            async for found in located:
                return found[tx_hash]
        return None

    async def commits(self, tx_hashes: Sequence[bytes],
                      timeout: float) -> AsyncIterator[dict[bytes, TransactionLocation | None]]:  # fmt: skip
        """The transactions' locations as they commit, a block's worth at a time (one read
        of the store each, not one per transaction); every hash comes exactly once, with
        None if it did not commit within ``timeout`` seconds.

        Each waiter is in place before the mempool is asked, and a transaction leaves the
        mempool only once it is in the store: one not pending is committed already, or
        unknown, and the first read tells."""
        loop = asyncio.get_running_loop()
        waiters: dict[asyncio.Future[None], bytes] = {}
        for tx_hash in dict.fromkeys(tx_hashes):
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(tx_hash, []).append(waiter)
            waiters[waiter] = tx_hash
        try:
            pending = {waiter: tx_hash for waiter, tx_hash in waiters.items() if tx_hash in self.mempool}
            ready = [tx_hash for waiter, tx_hash in waiters.items() if waiter not in pending]
            deadline = loop.time() + timeout
            while True:
                if ready:
                    yield await self.read(self._locations, ready)
                left = deadline - loop.time()
                if not pending:
                    return
                if left <= 0:
                    yield await self.read(self._locations, list(pending.values()))
                    return
                done, _ = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                ready = [pending.pop(waiter) for waiter in done]
        finally:
            for waiter, tx_hash in waiters.items():
                listed = self._waiters.get(tx_hash, [])
                if waiter in listed:
                    listed.remove(waiter)
                    if not listed:
                        del self._waiters[tx_hash]

    def _locations(self, tx_hashes: list[bytes]) -> dict[bytes, TransactionLocation | None]:
        return {tx_hash: self.store.transaction(tx_hash) for tx_hash in tx_hashes}

    async def proof(self, tx_hash: bytes) -> InclusionProof:
        return await self.read(self.chain.proof, tx_hash)

    async def next_nonce(self, sender: bytes) -> int:
        """One past the sender's highest nonce, committed or pending."""
        from twinledger.contracts.runtime import committed_nonce

        def highest() -> int:
            pending = self.mempool.pending_nonce(sender)
            return max(committed_nonce(self.chain.state(), sender), pending if pending is not None else -1)

        return await self.in_ledger(highest) + 1

    # -- running -----------------------------------------------------------------------------
    # -- the peer-to-peer network ---------------------------------------------------------------
    def broadcast(self, message_type: str, body: dict[str, Any]) -> None:
        if self.network is not None:
            self.network.broadcast(message_type, body)

    def known_transaction(self, encoded: bytes) -> Transaction | None:
        return self.mempool.by_encoding(encoded)

    def request_blocks(self, height: int) -> None:
        """Ask the peers that are ahead (or all, if none says so) for blocks from ``height``."""
        if self.network is None:
            return
        now = time.monotonic()
        if now - self._sync_asked.get(height, 0.0) < SYNC_RETRY:
            return
        self._sync_asked = {h: t for h, t in self._sync_asked.items() if now - t < SYNC_RETRY}
        self._sync_asked[height] = now
        peers = list(self.network.peers.values())
        ahead = [peer for peer in peers if peer.height >= height] or peers
        for peer in ahead:
            peer.send("get_blocks", {"from": height})

    async def _on_frame(self, peer: Peer, frame: Frame) -> bool:
        """Everything peers send; True relays a gossip frame."""
        body = frame.body
        if frame.type == "txs":
            raw = body.get("txs")
            if not isinstance(raw, list) or not all(isinstance(t, bytes) for t in raw) or len(raw) > MAX_GOSSIP_TXS:
                raise DecodeError("txs: expected a list of transaction byte strings")
            results = await self.submit(raw, from_peer=True)
            return any(r.tx_hash is not None and not r.duplicate for r in results)
        if frame.type in ("proposal", "vote"):
            return self.consensus.receive(frame.type, body)
        if frame.type == "status":
            if peer.height > self.head.height:
                self.request_blocks(self.head.height + 1)
            return False
        if frame.type == "get_blocks":
            start = body.get("from")
            if isinstance(start, int) and not isinstance(start, bool) and start > 0:
                blocks = await self.read(self._raw_blocks, start)
                if blocks:
                    peer.send("blocks", {"blocks": blocks})
            return False
        if frame.type == "blocks":
            await self._import_blocks(body.get("blocks"))
            return False
        return False

    def evidence(self) -> list[dict[str, Any]]:
        """Stored equivocation evidence, readable (hex for bytes)."""

        def readable(value: Any) -> Any:
            if isinstance(value, bytes):
                return value.hex()
            if isinstance(value, dict):
                return {k: readable(v) for k, v in value.items()}
            return value

        return [readable(decode(raw)) for _, raw in self.store.meta_items(EVIDENCE_PREFIX)]

    def _raw_blocks(self, start: int) -> list[dict[str, Any]]:
        out = []
        for height in range(start, start + SYNC_BATCH):
            raw = self.store.raw_block(height)
            if raw is None:
                break
            _, header, certificate, txs = raw
            out.append({"header": header, "certificate": certificate, "transactions": txs})
        return out

    async def _import_blocks(self, items: Any) -> None:
        """Block sync: verify and apply committed blocks with their certificates, in order."""
        if not isinstance(items, list):
            raise DecodeError("blocks: expected a list")
        imported = 0
        for item in items[:SYNC_BATCH]:
            try:
                block = Block(decode_header(item["header"]), tuple(decode_transaction(t) for t in item["transactions"]))
                certificate = decode_certificate(item["certificate"])
            except (KeyError, TypeError) as exc:
                raise DecodeError("blocks: malformed block") from exc
            if block.height > self.head.height + 1:
                continue
            outcome = await self.in_ledger(self._apply_synced, block, certificate)
            if outcome.status == "orphan":  # the peer is on another branch: fetch back to where it forked
                self.request_blocks(max(1, block.height - SYNC_BATCH))
                break
            for adopted in outcome.adopted:
                self._committed(adopted)
            imported += len(outcome.adopted)
        if imported:
            log.info("block sync: imported %d block(s), head is %d", imported, self.head.height)
            self.consensus.head_advanced(self.head.height)
            if len(items) >= SYNC_BATCH:
                self.request_blocks(self.head.height + 1)

    def _apply_synced(self, block: Block, certificate: CommitCertificate) -> ImportOutcome:
        """Apply a synced block (a sibling of the head too: an engine without finality can
        fork, and fork choice settles it); a reorganisation's abandoned transactions are
        pending again (ledger thread)."""
        outcome = self.chain.apply_block(block, certificate)
        for adopted in outcome.adopted:
            self._forget(adopted)
        if outcome.abandoned:
            returned = return_abandoned(self.chain, outcome, self.mempool)
            log.warning("fork: reorganised to block %d (%s…), %d block(s) abandoned, %d transaction(s) pending again",
                        outcome.head.height, outcome.head.hash.hex()[:12], len(outcome.abandoned),
                        len(returned))  # fmt: skip
        return outcome

    async def _start_network(self) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding

        from twinledger.crypto.certs import identity_of, read_certificate
        from twinledger.crypto.tls import client_context, server_context

        config = self.config
        assert config.p2p_port is not None
        secret = passphrase()
        org_cert = read_certificate(config.cert("organisation"))
        self.network = PeerManager(
            me=identity_of(read_certificate(config.cert("node"))),
            chain_id=self.chain_id,
            genesis_hash=self.genesis.header().hash,
            listen_host=config.p2p_host,
            listen_port=config.p2p_port,
            advertise=config.p2p_advertise,
            seeds=list(config.seeds),
            target_peers=config.target_peers,
            server_ssl=server_context(config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"), secret),
            client_ssl=client_context(
                config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"), secret, check_hostname=False
            ),  # fmt: skip
            ca_cert=read_certificate(config.cert("consortium-ca")),
            org_cert_der=org_cert.public_bytes(Encoding.DER),
            handler=self._on_frame,
            height=lambda: self.head.height,
        )
        await self.network.start()

    # -- the off-chain store ---------------------------------------------------------------------
    def head_state(self) -> StateReader:
        """Contract state at the current head, readable from any thread."""
        from twinledger.ledger.chain import StoreState

        return StoreState(self.store, self.head.height)

    def store_directory(self) -> Directory:
        """Store nodes, member nodes and active grants as the contracts say at the head."""
        from twinledger.contracts.membership import organisation_key, organisations
        from twinledger.contracts.sharing import GRANT_PREFIX
        from twinledger.store.placement import store_nodes
        from twinledger.store.records import ReadGrant

        height = self.head.height
        if self._directory is None or self._directory[0] != height:
            state = self.head_state()
            orgs = [state.get(organisation_key(name)) for name in organisations(state)]
            members = {node["signing_key"]: org["name"] for org in orgs for node in org["nodes"].values()}
            grants = tuple(ReadGrant.of(g) for _, g in self.store.state_items(GRANT_PREFIX, height)
                           if g["status"] == "active")  # fmt: skip
            self._directory = (height, Directory(store_nodes(orgs), members, grants))
        return self._directory[1]

    def replication(self) -> Replication:
        return Replication(self.genesis.store_replication, self.genesis.store_write_quorum)

    def _store_tls(self) -> tuple[StoreTls, NodeIdentity]:
        """The TLS contexts and the identity this node speaks the store (and ingest) protocol with."""
        from twinledger.client import store_tls
        from twinledger.crypto.certs import identity_of, read_certificate

        return store_tls(self.config), identity_of(read_certificate(self.config.cert("node")))

    async def _start_storage(self) -> None:
        from twinledger.store.disk import ChunkStore

        config = self.config
        assert config.storage_port is not None
        tls, me = self._store_tls()
        if "proxy" in config.roles:
            from twinledger.sharing.proxy import ProxyService

            self.proxy = ProxyService(config.home / "data" / "proxy-keys.db", me, self.head_state, self.wait_for_height,
                                      self._grants)  # fmt: skip
        self.storage = StoreService(ChunkStore(config.storage_dir), tls, me, self.store_directory, self.replication(),
                                    config.repair_interval, self.proxy.handlers() if self.proxy else None)  # fmt: skip
        await self.storage.start(config.storage_host, config.storage_port)

    async def _start_ingest(self) -> None:
        from twinledger.ingest.journal import IngestJournal
        from twinledger.ingest.service import IngestService
        from twinledger.store.client import StoreClient

        config = self.config
        assert config.ingest_port is not None
        tls, me = self._store_tls()
        own: list[StoreClient] = []

        def store() -> StoreClient:
            if self.storage is not None:
                return self.storage.client()
            nodes = self.store_directory().nodes
            if not own or own[0].nodes != nodes:
                own[:] = [StoreClient(nodes, tls, self.replication())]
            return own[0]

        self.ingest = IngestService(IngestJournal(config.home / "data" / "ingest.db"), config.signing_key(), me, tls,
                                    self, store, self.head_state, lambda: self.store_directory().members,
                                    config.ingest_window, config.ingest_max_record)  # fmt: skip
        await self.ingest.start(config.ingest_host, config.ingest_port)

    async def run(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve the API and produce blocks until SIGINT/SIGTERM."""
        import uvicorn

        from twinledger.api.app import create_app
        from twinledger.crypto.tls import server_context

        self._loop = asyncio.get_running_loop()
        self._tx_available = asyncio.Event()
        self._block_event = asyncio.Event()
        if len(self.mempool):
            self._tx_available.set()
        config = self.config
        sock = socket.socket(socket.AF_INET6 if ":" in config.api_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.api_host, config.api_port))
        sock.listen(1024)
        host, port = sock.getsockname()[:2]
        scheme = "https" if config.api_needs_tls else "http"
        url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        server_config = uvicorn.Config(create_app(self), log_level="warning", access_log=False,
                                       timeout_graceful_shutdown=5, lifespan="off")  # fmt: skip
        server_config.load()
        if config.api_needs_tls:
            server_config.ssl = server_context(config.cert("consortium-ca"), config.cert("node-chain"),
                                               config.key("tls"), passphrase())  # fmt: skip
        server = _api_server_class()(server_config)

        def stop() -> None:
            self.stopping = True
            server.stop()

        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(stop_signal, stop)
        if config.p2p_port is not None:
            await self._start_network()
        if config.storage_port is not None:
            await self._start_storage()
        if config.ingest_port is not None:
            await self._start_ingest()
        producer = asyncio.create_task(self.consensus.run(self), name="consensus")
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="api")
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            await serving
        config.run_file.parent.mkdir(parents=True, exist_ok=True)
        run_doc = {"pid": os.getpid(), "api": url, "chain_id": self.chain_id, "started": self.started,
                   "p2p": self.network.address if self.network is not None else None,
                   "storage": self.storage.address if self.storage is not None else None,
                   "ingest": self.ingest.address if self.ingest is not None else None}  # fmt: skip
        tmp = config.run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(run_doc))
        tmp.replace(config.run_file)
        log.info("node %s/%s serving on %s", config.organisation, config.name, url)
        if ready is not None:
            ready(url)
        try:
            done, _ = await asyncio.wait({producer, serving}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is producer and not task.cancelled() and task.exception() is not None:
                    log.error("block production stopped: %s", task.exception())
                    server.should_exit = True
            await serving
        finally:
            log.info("node %s/%s stopping", config.organisation, config.name)
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await producer
            if self.ingest is not None:
                await self.ingest.stop()
            if self.network is not None:
                await self.network.stop()
            if self.storage is not None:
                await self.storage.stop()
                log.info("store node stopped")
            if self.proxy is not None:
                self.proxy.close()
            config.run_file.unlink(missing_ok=True)
            self.close()
            log.info("node %s/%s stopped", config.organisation, config.name)

    def close(self) -> None:
        self._ledger.shutdown(wait=True)
        self._journal.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._verifiers is not None:
            self._verifiers.shutdown(wait=True)
        self.store.close()


def _api_server_class() -> type:
    import uvicorn

    class ApiServer(uvicorn.Server):
        """uvicorn without its own signal handling: it re-raises SIGTERM after serving,
        which would end the process before the node closes its store and workers."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        def stop(self) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    return ApiServer
