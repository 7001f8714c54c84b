"""The node process: the composition root that wires the parts its roles enable.

Threads: the asyncio loop serves the API and drives consensus; one *ledger* thread owns
the chain, the mempool and every store write (so they need no locks); a small pool
decodes and verifies submitted transactions on the other cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from twinledger.abc import BlockProducer, BlockResult, TransactionLocation
from twinledger.config import NodeConfig, passphrase
from twinledger.consensus import create_consensus
from twinledger.contracts import default_runtime
from twinledger.core.proof import InclusionProof
from twinledger.core.types import (
    Block,
    BlockHeader,
    CommitCertificate,
    Transaction,
    decode_transaction,
)
from twinledger.errors import InvalidTransaction, TwinledgerError
from twinledger.ledger.chain import Chain, keep_all, keep_filter
from twinledger.ledger.genesis import Genesis
from twinledger.ledger.mempool import Mempool
from twinledger.ledger.store import open_store
from twinledger.ledger.validation import validate_transaction

log = logging.getLogger("twinledger.node")
T = TypeVar("T")
VERIFY_CHUNK = 256


@dataclass(frozen=True)
class SubmitResult:
    """Per-transaction outcome of a submission: accepted (with hash) or an error."""

    index: int
    tx_hash: bytes | None = None
    error: TwinledgerError | None = None
    duplicate: bool = False


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

    def observe_latency(self, seconds: float) -> None:
        for i, bound in enumerate(self.BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                break
        else:
            self.latency_buckets[-1] += 1
        self.latency_sum += seconds
        self.latency_count += 1


class Node(BlockProducer):
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
            self.mempool.add(tx)
        self.metrics = Metrics()
        self._ledger = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._verifiers = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="verify")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tx_available: asyncio.Event | None = None
        self._block_event: asyncio.Event | None = None
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._submitted_at: dict[bytes, float] = {}
        self.started = time.time()

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
        return await asyncio.get_running_loop().run_in_executor(self._verifiers, fn, *args)

    # -- submission --------------------------------------------------------------------------
    def _decode_and_verify(self, raw: list[bytes], now_ms: int) -> list[Transaction | TwinledgerError]:
        out: list[Transaction | TwinledgerError] = []
        for data in raw:
            try:
                tx = decode_transaction(data)
                if not isinstance(tx, Transaction):
                    raise InvalidTransaction("a stripped transaction cannot be submitted", code="stripped")
                validate_transaction(tx, self.chain_id, now_ms)
                out.append(tx)
            except TwinledgerError as exc:
                out.append(exc)
        return out

    def _admit(self, candidates: list[Transaction | TwinledgerError]) -> list[SubmitResult]:
        """Stateful checks, then one durable write for the whole batch (ledger thread)."""
        state = self.chain.state()
        results: list[SubmitResult] = []
        fresh: list[Transaction] = []
        for index, item in enumerate(candidates):
            if isinstance(item, TwinledgerError):
                results.append(SubmitResult(index, error=item))
                continue
            try:
                if not self.mempool.check(item):
                    results.append(SubmitResult(index, item.hash, duplicate=True))
                    continue
                self.chain.app.check_transaction(state, item)
            except TwinledgerError as exc:
                if exc.code == "nonce_replayed" and self.store.transaction(item.hash) is not None:
                    results.append(SubmitResult(index, item.hash, duplicate=True))  # resubmitted after commit
                else:
                    results.append(SubmitResult(index, error=exc))
                continue
            self.mempool.add(item)
            fresh.append(item)
            results.append(SubmitResult(index, item.hash))
        try:
            self.store.add_pending(fresh)
        except BaseException:
            self.mempool.remove(tx.hash for tx in fresh)
            raise
        return results

    async def submit(self, raw: list[bytes]) -> list[SubmitResult]:
        """Admit transactions; an accepted one is durable when this returns."""
        loop = asyncio.get_running_loop()
        now_ms = int(time.time() * 1000)
        chunks = [raw[i : i + VERIFY_CHUNK] for i in range(0, len(raw), VERIFY_CHUNK)]
        verified = await asyncio.gather(
            *(loop.run_in_executor(self._verifiers, self._decode_and_verify, chunk, now_ms) for chunk in chunks)
        )
        candidates = [item for chunk in verified for item in chunk]
        results = await self.in_ledger(self._admit, candidates)
        now = time.monotonic()
        for result in results:
            if result.error is not None:
                self.metrics.rejected[result.error.code] += 1
            elif not result.duplicate and result.tx_hash is not None:
                self.metrics.accepted += 1
                self._submitted_at[result.tx_hash] = now
        if any(r.tx_hash and not r.duplicate for r in results) and self._tx_available is not None:
            self._tx_available.set()
        return results

    # -- block production (BlockProducer) ------------------------------------------------------
    async def wait_for_transactions(self) -> None:
        assert self._tx_available is not None
        while not len(self.mempool):
            self._tx_available.clear()
            await self._tx_available.wait()

    def _build(self, proposer: bytes) -> tuple[Block, BlockResult] | None:
        txs = self.mempool.select(self.genesis.max_block_txs)
        if not txs:
            return None
        return self.chain.build_block(txs, proposer, int(time.time() * 1000))

    async def build_block(self, proposer: bytes) -> tuple[Block, BlockResult] | None:
        return await self.in_ledger(self._build, proposer)

    def _commit(self, block: Block, certificate: CommitCertificate, result: BlockResult) -> None:
        self.chain.commit(block, certificate, result)
        self.mempool.remove(tx.hash for tx in block.transactions)

    async def commit_block(self, block: Block, certificate: CommitCertificate, result: BlockResult) -> None:
        await self.in_ledger(self._commit, block, certificate, result)
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
        location = await self.read(self.store.transaction, tx_hash)
        if location is not None or timeout <= 0:
            return location
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_hash, []).append(waiter)
        try:
            # Not pending (any more): unknown, or committed while we looked; the re-read tells.
            if tx_hash in self.mempool:
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(tx_hash, [])
            if waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[tx_hash]
        return await self.read(self.store.transaction, tx_hash)

    async def proof(self, tx_hash: bytes) -> InclusionProof:
        return await self.read(self.chain.proof, tx_hash)

    def next_nonce(self, sender: bytes) -> int:
        from twinledger.contracts.runtime import committed_nonce

        pending = self.mempool.pending_nonce(sender)
        committed = committed_nonce(self.chain.state(), sender)
        return max(committed, pending if pending is not None else -1) + 1

    # -- running -----------------------------------------------------------------------------
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
        server = uvicorn.Server(server_config)
        producer = asyncio.create_task(self.consensus.run(self), name="consensus")
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="api")
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            await serving
        config.run_file.parent.mkdir(parents=True, exist_ok=True)
        run_doc = {"pid": os.getpid(), "api": url, "chain_id": self.chain_id, "started": self.started}
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
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await producer
            config.run_file.unlink(missing_ok=True)
            self.close()

    def close(self) -> None:
        self._ledger.shutdown(wait=True)
        self._verifiers.shutdown(wait=True)
        self.store.close()
