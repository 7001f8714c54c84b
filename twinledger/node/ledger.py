"""The ledger service: admission, the journal, the mempool, blocks, and commit waiters.

One *ledger* thread owns the chain, the mempool and every store write (so they need no
locks); a *journal* thread makes admitted transactions durable meanwhile; a pool of
reader threads serves store reads, and worker processes verify large batches.

The service knows nothing of peers or of the node's other roles: the composition root
gives it ``gossip`` to tell peers, ``fetch_blocks`` to ask them for blocks, and
``after_block`` for work after each committed block.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from twinledger.abc import BlockResult, NetworkedProducer, StateReader, SubmitResult, TransactionLocation
from twinledger.contracts.runtime import committed_nonce
from twinledger.core.encoding import decode, encode
from twinledger.core.files import replace_durably
from twinledger.core.hashing import hash_obj
from twinledger.core.killpoints import kill_point
from twinledger.core.proof import InclusionProof
from twinledger.core.types import PREFERRED_BLOCK_TX_BYTES, Block, BlockHeader, CommitCertificate, Receipt, Transaction
from twinledger.errors import InvalidBlock, TwinledgerError
from twinledger.ledger.chain import Chain, ImportOutcome, StoreState, return_abandoned
from twinledger.ledger.mempool import Mempool
from twinledger.ledger.validation import decode_and_validate

log = logging.getLogger("twinledger.node")
T = TypeVar("T")
VOTE_GUARD = "consensus/vote-guard"
"""Chain store metadata key of the consensus engine's record of its votes."""
EVIDENCE_PREFIX = "evidence/"
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


def _no_peers(*_: Any) -> None:
    """What a node without peers does to tell them or ask them something: nothing."""


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
    """Counters since the node started, for GET /metrics."""

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


class LedgerService(NetworkedProducer):
    """The chain as the node's other parts use it: what the consensus engine builds and
    commits blocks through, and what clients submit to and wait on."""

    def __init__(self, chain: Chain, mempool: Mempool, guard_path: Path | None = None) -> None:
        self.chain = chain
        self.guard_path = guard_path
        """Where the validator's vote guard lives: beside its key, apart from the chain store,
        so wiping the store to sync again does not erase what the key has signed."""
        self.chain_store = chain.store
        self.genesis = chain.genesis
        self.consensus = chain.consensus
        self.mempool = mempool
        for tx in self.chain_store.pending():
            if self.chain_store.transaction(tx.hash) is None:  # a row left behind by a commit racing its journal write
                self.mempool.add(tx)
        self.metrics = Metrics()
        self.gossip: Callable[[str, dict[str, Any]], None] = _no_peers
        """Sends a message to every peer (admitted transactions, consensus messages)."""
        self.fetch_blocks: Callable[[int], None] = _no_peers
        """Asks peers for committed blocks from a height on (block sync)."""
        self.after_block: list[Callable[[], None]] = []
        """Work run in a reader thread after each block that becomes the head."""
        self._ledger = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._journal = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._journaling: dict[bytes, Future[None]] = {}
        self._unjournaled: set[bytes] = set()
        """Pending transactions relayed by peers, which this node has not written durably."""
        self._readers = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="read")
        self._verifiers: ProcessPoolExecutor | None = None
        self._tx_available = asyncio.Event()
        if len(self.mempool):
            self._tx_available.set()
        self._block_event = asyncio.Event()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._submitted_at: dict[bytes, float] = {}

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    @property
    def head(self) -> BlockHeader:
        return self.chain.head

    def head_state(self) -> StateReader:
        """Contract state at the current head, readable from any thread."""
        return StoreState(self.chain_store, self.head.height)

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

    def close(self) -> None:
        """Wait for the threads and worker processes to finish (the chain store stays open)."""
        self._ledger.shutdown(wait=True)
        self._journal.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._verifiers is not None:
            self._verifiers.shutdown(wait=True)

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
                if exc.code == "nonce_replayed" and self.chain_store.transaction(item.hash) is not None:
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
                await loop.run_in_executor(self._journal, self.chain_store.add_pending, admission.fresh)
                kill_point("journal.written")
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
        if admission.fresh:
            self._tx_available.set()
        if not from_peer and admission.fresh:
            self.gossip("txs", {"txs": [tx.encoded for tx in admission.fresh]})
        return admission.results

    # -- block production (NetworkedProducer) ------------------------------------------------
    async def wait_for_transactions(self) -> None:
        while not len(self.mempool):
            self._tx_available.clear()
            await self._tx_available.wait()

    def _build(self, proposer: bytes, allow_empty: bool) -> tuple[Block, BlockResult] | None:
        txs = self.mempool.select(self.genesis.max_block_txs, PREFERRED_BLOCK_TX_BYTES)
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

    def vote_guard(self) -> tuple[Callable[[], bytes | None], Callable[[bytes], None]]:
        store, path = self.chain_store, self.guard_path
        if path is None:  # a chain without a validator home (tests, tools)
            return (lambda: store.meta(VOTE_GUARD)), (lambda raw: store.set_meta(VOTE_GUARD, raw))

        def load() -> bytes | None:  # a node from before the guard had its own file: the store's record
            return path.read_bytes() if path.exists() else store.meta(VOTE_GUARD)

        def save(raw: bytes) -> None:
            replace_durably(path, raw)  # what counts
            store.set_meta(VOTE_GUARD, raw)  # so a binary from before, started on this home, is not behind it

        return load, save

    async def record_evidence(self, kind: str, first: dict[str, Any], second: dict[str, Any]) -> None:
        doc = {"kind": kind, "first": first, "second": second, "detected": int(time.time() * 1000)}
        key = EVIDENCE_PREFIX + hash_obj("twinledger/evidence/v1", [first, second]).hex()
        await self.in_ledger(self.chain_store.set_meta, key, encode(doc))
        self.metrics.equivocations += 1

    def broadcast(self, message_type: str, body: dict[str, Any]) -> None:
        self.gossip(message_type, body)

    def known_transaction(self, encoded: bytes) -> Transaction | None:
        return self.mempool.by_encoding(encoded)

    def request_blocks(self, height: int) -> None:
        self.fetch_blocks(height)

    # -- committing ----------------------------------------------------------------------------
    def _commit(self, block: Block, certificate: CommitCertificate, result: BlockResult) -> tuple[Block, ...]:
        """Commit a decided block; the blocks that became canonical (none if block sync
        already brought it)."""
        if self.chain.head.hash == block.hash:
            return ()
        if block.header.previous != self.chain.head.hash:
            if self.chain.consensus.final:  # two decided blocks at one height: a safety failure, not a fork
                raise InvalidBlock(f"decided block {block.height} no longer extends the head ({self.chain.head.height})")
            # Block sync moved the head while this block was being decided — an engine
            # without finality forks — so fork choice places it, like any certified block.
            return self._apply_synced(block, certificate).adopted
        kill_point("commit.decided")
        self.chain.commit(block, certificate, result)
        self._forget(block)
        return (block,)

    def _forget(self, block: Block) -> None:
        """Drop a committed block's transactions from the mempool."""
        hashes = [tx.hash for tx in block.transactions]
        self.mempool.remove(hashes)
        self._unjournaled.difference_update(hashes)

    async def commit_block(self, block: Block, certificate: CommitCertificate, result: BlockResult) -> None:
        for adopted in await self.in_ledger(self._commit, block, certificate, result):
            self._committed(adopted)

    async def apply_synced(self, block: Block, certificate: CommitCertificate) -> ImportOutcome:
        """Apply a block that block sync brought, with its certificate."""
        outcome = await self.in_ledger(self._apply_synced, block, certificate)
        for adopted in outcome.adopted:
            self._committed(adopted)
        if outcome.status == "invalid":
            raise InvalidBlock(f"block {block.height} builds on a certified block that does not execute")
        return outcome

    def _apply_synced(self, block: Block, certificate: CommitCertificate) -> ImportOutcome:
        """Apply a synced block (a sibling of the head too: an engine without finality can
        fork, and fork choice settles it); a reorganisation's abandoned transactions are
        pending again (ledger thread)."""
        outcome = self.chain.apply_block(block, certificate)
        for adopted in outcome.adopted:
            self._forget(adopted)
        if outcome.abandoned:  # reorganisations took blocks off the canonical chain
            returned = return_abandoned(self.chain, outcome, self.mempool)
            log.warning("fork: reorganised to block %d (%s…), %d block(s) abandoned, %d transaction(s) pending again",
                        outcome.head.height, outcome.head.hash.hex()[:12], len(outcome.abandoned),
                        len(returned))  # fmt: skip
        return outcome

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
        self._block_event.set()
        self._block_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for work in self.after_block:
            loop.run_in_executor(self._readers, work)

    # -- waiting for commits -------------------------------------------------------------------
    async def wait_for_height(self, height: int, timeout: float) -> bool:
        """True once the head reaches ``height``; False if ``timeout`` seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.head.height < height:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._block_event.wait(), remaining)
            except TimeoutError:
                return False
        return True

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
        return {tx_hash: self.chain_store.transaction(tx_hash) for tx_hash in tx_hashes}

    # -- reading -------------------------------------------------------------------------------
    async def proof(self, tx_hash: bytes) -> InclusionProof:
        return await self.read(self.chain.proof, tx_hash)

    async def simulate(self, tx: Transaction) -> Receipt:
        """What ``tx`` would do if it were the next block's only transaction: its admission
        checks, then the contracts on the head state; nothing is kept."""

        def run() -> Receipt:
            self.chain.app.check_transaction(self.chain.state(), tx)
            _, result = self.chain.build_block([tx], bytes(32), int(time.time() * 1000))
            return result.receipts[0]

        return await self.in_ledger(run)

    async def next_nonce(self, sender: bytes) -> int:
        """One past the sender's highest nonce, committed or pending."""

        def highest() -> int:
            pending = self.mempool.pending_nonce(sender)
            return max(committed_nonce(self.chain.state(), sender), pending if pending is not None else -1)

        return await self.in_ledger(highest) + 1

    def evidence(self) -> list[dict[str, Any]]:
        """Stored equivocation evidence, readable (hex for bytes)."""

        def readable(value: Any) -> Any:
            if isinstance(value, bytes):
                return value.hex()
            if isinstance(value, dict):
                return {k: readable(v) for k, v in value.items()}
            return value

        return [readable(decode(raw)) for _, raw in self.chain_store.meta_items(EVIDENCE_PREFIX)]
