"""The chain: block tree + chain store + application. ``apply_block`` is the one entry
point for a certified block, whether this node produced it or a peer sent it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from twinledger.abc import Application, BlockResult, ChainStore, Consensus, StateReader, StateValue
from twinledger.core.killpoints import kill_point
from twinledger.core.merkle import merkle_path, merkle_root
from twinledger.core.proof import InclusionProof, validators_hash
from twinledger.core.types import (
    AnyTransaction,
    Block,
    BlockHeader,
    CommitCertificate,
    Transaction,
)
from twinledger.errors import ConfigError, InvalidBlock, NotFound, TwinledgerError
from twinledger.ledger.blocktree import BlockTree
from twinledger.ledger.genesis import Genesis
from twinledger.ledger.mempool import Mempool
from twinledger.ledger.validation import MAX_BLOCK_AHEAD_MS, validate_block, validate_body

KeepFilter = Callable[[AnyTransaction], bool]
REORGANISING = "chain/reorganising"
"""Chain store metadata: the head a reorganisation left, kept until what the blocks it
took off held is pending again (empty when no reorganisation is under way)."""
"""Decides whether this node keeps a transaction's payload or only its stripped form."""


def keep_all(tx: AnyTransaction) -> bool:
    return True


def keep_filter(contracts: frozenset[str], senders: frozenset[bytes]) -> KeepFilter:
    """Keep payloads of the given contracts and of the given senders (e.g. our own keys)."""

    def keep(tx: AnyTransaction) -> bool:
        return tx.contract in contracts or tx.sender in senders

    return keep


class StoreState(StateReader):
    """Committed state as of ``height`` (default: the head)."""

    def __init__(self, store: ChainStore, height: int | None = None) -> None:
        self.store = store
        self.height = height

    def get(self, key: str) -> StateValue:
        return self.store.state_get(key, self.height)


class HeadState(StateReader):
    """Committed state at the head with a bounded read cache, kept current on commit.

    Only the ledger thread uses it."""

    def __init__(self, store: ChainStore, capacity: int = 200_000) -> None:
        self.store = store
        self.capacity = capacity
        self.cache: OrderedDict[str, StateValue] = OrderedDict()

    def get(self, key: str) -> StateValue:
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        value = self.store.state_get(key)
        self._put(key, value)
        return value

    def _put(self, key: str, value: StateValue) -> None:
        self.cache[key] = value
        self.cache.move_to_end(key)
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)

    def committed(self, writes: Mapping[str, StateValue]) -> None:
        for key, value in writes.items():
            self._put(key, value)


@dataclass(frozen=True)
class ImportOutcome:
    status: str  # "known", "orphan", "side", "head"
    head: BlockHeader
    adopted: tuple[Block, ...] = ()
    """Blocks that joined the canonical chain, parent first."""
    abandoned: tuple[Block, ...] = ()
    """Blocks a reorganisation took off the canonical chain: their transactions are pending again."""


class Chain:
    def __init__(self, store: ChainStore, app: Application, consensus: Consensus,
                 genesis: Genesis, keep: KeepFilter = keep_all) -> None:  # fmt: skip
        self.store = store
        self.app = app
        self.consensus = consensus
        self.genesis = genesis
        self.keep = keep
        self.validators_hash = validators_hash(list(consensus.validators()))
        genesis_header = genesis.header()
        stored = store.header_by_height(0)
        if stored is None:
            empty = CommitCertificate(genesis.chain_id, 0, 0, genesis_header.hash, ())
            store.commit_block(Block(genesis_header, ()), empty, app.genesis_result(genesis), ())
        elif stored.hash != genesis_header.hash:
            raise ConfigError("the chain store holds another chain than this genesis describes")
        self.tree = BlockTree(genesis_header)
        for header, _canonical in store.headers():
            if header.height > 0:
                self.tree.add(header)
        head = store.head()
        assert head is not None
        self.head: BlockHeader = head
        self.head_state = HeadState(store)
        self._finish_reorganisation()

    def _finish_reorganisation(self) -> None:
        """A process killed in the middle of a reorganisation left the head anywhere from
        the old head through the common ancestor to the new head: adopt what the fork
        choice says now, and make what the branch it left held pending again (the killed
        process may not have)."""
        best = self.consensus.fork_choice(self.tree)
        if best != self.head.hash:
            with contextlib.suppress(InvalidBlock):  # an invalid stored branch: the head stays
                self._reorganise(best)
        left = self.store.meta(REORGANISING)
        if not left or left not in self.tree:
            return
        ancestor = self.tree.common_ancestor(left, self.head.hash)
        abandoned = self._branch(ancestor, self.tree.headers[left])
        unbounded = Mempool(max_txs=1 << 40, max_bytes=1 << 62, sender_share=1)  # only its checks are wanted
        return_abandoned(self, ImportOutcome("head", self.head, (), abandoned), unbounded)

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    def state(self, height: int | None = None) -> StateReader:
        """State after block ``height``; the cached head state if no height is given."""
        return self.head_state if height is None else StoreState(self.store, height)

    # -- producing ---------------------------------------------------------------------------
    def build_block(self, txs: list[Transaction], proposer: bytes, timestamp: int) -> tuple[Block, BlockResult]:
        """Execute ``txs`` on the head and wrap them in a block (not yet certified)."""
        parent = self.head
        partial = BlockHeader(
            chain_id=self.chain_id,
            height=parent.height + 1,
            timestamp=max(timestamp, parent.timestamp + 1),
            previous=parent.hash,
            tx_root=merkle_root([tx.hash for tx in txs]),
            tx_count=len(txs),
            state_root=bytes(32),
            validators_hash=self.validators_hash,
            proposer=proposer,
        )
        result = self.app.execute_block(self.state(), partial, tuple(txs), parent.state_root)
        header = dataclasses.replace(partial, state_root=result.state_root)
        return Block(header, tuple(txs)), result

    def commit(self, block: Block, certificate: CommitCertificate, result: BlockResult) -> None:
        """Store an executed, certified block that extends the head."""
        assert block.header.previous == self.head.hash
        stored = tuple(tx if self.keep(tx) else tx.strip() for tx in block.transactions)
        self.store.commit_block(block, certificate, result, stored)
        self.head_state.committed(result.writes)
        self.tree.add(block.header)
        self.head = block.header

    # -- importing ---------------------------------------------------------------------------
    def apply_block(self, block: Block, certificate: CommitCertificate) -> ImportOutcome:
        """Validate a certified block and add it; extends, forks or reorganises the chain as
        the consensus's fork choice says."""
        header = block.header
        if header.hash in self.tree:
            return ImportOutcome("known", self.head)
        self.consensus.validate_certificate(header, certificate)
        if header.previous not in self.tree:
            validate_body(block, self.genesis.max_block_txs)  # a forged body would take the real one's place
            self.store.store_side_block(block, certificate)
            self.tree.add(header)
            return ImportOutcome("orphan", self.head)
        parent = self.tree.headers[header.previous]
        validate_block(block, parent, self.validators_hash, self.genesis.max_block_txs)
        old_head = self.head
        if header.previous == self.head.hash:
            self._execute_and_commit(block, certificate)
        else:
            self.store.store_side_block(block, certificate)
            self.tree.add(header)
        best = self.consensus.fork_choice(self.tree)
        if best != self.head.hash:
            self._reorganise(best)
        status = "head" if self.head.hash == header.hash else "side"
        if self.head.hash == old_head.hash:
            return ImportOutcome(status, self.head)
        if self.head.hash == header.hash and header.previous == old_head.hash:
            return ImportOutcome(status, self.head, (block,))
        ancestor = self.tree.common_ancestor(old_head.hash, self.head.hash)
        return ImportOutcome(status, self.head, self._branch(ancestor, self.head), self._branch(ancestor, old_head))

    def _branch(self, ancestor: BlockHeader, tip: BlockHeader) -> tuple[Block, ...]:
        """The stored blocks after ``ancestor`` up to ``tip``, parent first."""
        return tuple(self._stored(h.hash)[0] for h in self.tree.path_from_root(tip.hash) if h.height > ancestor.height)

    def execute_proposal(self, block: Block, verified: Container[bytes] = frozenset(),
                         now_ms: int | None = None) -> BlockResult:  # fmt: skip
        """Validate a proposed block and execute it on the head, storing nothing: the
        consensus's valid(v). Signatures of ``verified`` transaction hashes are not rechecked;
        a block timed more than MAX_BLOCK_AHEAD_MS past this validator's clock is refused."""
        if block.header.proposer not in self.consensus.validators():
            raise InvalidBlock("block was proposed by a non-validator")
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if block.header.timestamp > now_ms + MAX_BLOCK_AHEAD_MS:
            raise InvalidBlock(f"block time {block.header.timestamp} is more than {MAX_BLOCK_AHEAD_MS // 1000} s past "
                               "this validator's clock")  # fmt: skip
        validate_block(block, self.head, self.validators_hash, self.genesis.max_block_txs, verified)
        return self._execute(block)

    def _execute(self, block: Block) -> BlockResult:
        txs = tuple(tx for tx in block.transactions if isinstance(tx, Transaction))
        for tx in txs:  # a committed transaction again: its commit would break the index, on every node
            if self.store.transaction(tx.hash) is not None:
                raise InvalidBlock(f"block {block.height} carries transaction {tx.hash.hex()[:16]}…, committed before")
        result = self.app.execute_block(self.state(), block.header, txs, self.head.state_root)
        if result.state_root != block.header.state_root:
            raise InvalidBlock(f"block {block.height} state root does not match its execution")
        return result

    def _execute_and_commit(self, block: Block, certificate: CommitCertificate) -> None:
        self.commit(block, certificate, self._execute(block))

    def _reorganise(self, new_head: bytes) -> None:
        """Rewind to the common ancestor and apply the new branch; restore the old one if a
        block of the new branch turns out invalid."""
        old_head = self.head
        ancestor = self.tree.common_ancestor(old_head.hash, new_head)
        old_branch = [h for h in self.tree.path_from_root(old_head.hash) if h.height > ancestor.height]
        new_branch = [h for h in self.tree.path_from_root(new_head) if h.height > ancestor.height]
        marked = bool(old_branch) and not self.store.meta(REORGANISING)  # a restart's finish keeps the first mark
        if marked:
            self.store.set_meta(REORGANISING, old_head.hash)
        try:
            self._switch(ancestor, new_branch, fallback=old_branch)
        except InvalidBlock:
            if marked:  # the old branch is back: nothing was left
                self.store.set_meta(REORGANISING, b"")
            raise

    def _rewind(self, ancestor: BlockHeader) -> None:
        self.store.rewind(ancestor.height)
        self.head_state = HeadState(self.store)
        self.head = ancestor

    def _switch(self, ancestor: BlockHeader, branch: list[BlockHeader], fallback: list[BlockHeader]) -> None:
        self._rewind(ancestor)
        kill_point("reorganisation.rewound")
        try:
            for header in branch:
                block, certificate = self._stored(header.hash)
                self._execute_and_commit(block, certificate)
                kill_point("reorganisation.part-way")
        except InvalidBlock:
            self._rewind(ancestor)
            for header in fallback:
                block, certificate = self._stored(header.hash)
                self._execute_and_commit(block, certificate)
            raise

    def _stored(self, block_hash: bytes) -> tuple[Block, CommitCertificate]:
        block = self.store.block_by_hash(block_hash)
        certificate = self.store.certificate(block_hash)
        if block is None or certificate is None:
            raise InvalidBlock("a block of the branch is missing from the store")
        return block, certificate

    # -- reading -----------------------------------------------------------------------------
    def proof(self, tx_hash: bytes) -> InclusionProof:
        location = self.store.transaction(tx_hash)
        if location is None:
            raise NotFound(f"no committed transaction {tx_hash.hex()}")
        block = self.store.block_by_hash(location.block_hash)
        certificate = self.store.certificate(location.block_hash)
        assert block is not None and certificate is not None
        path = merkle_path([tx.hash for tx in block.transactions], location.index)
        return InclusionProof(block.header, location.transaction, location.index, tuple(path),
                              certificate, tuple(sorted(self.consensus.validators())))  # fmt: skip


def return_abandoned(chain: Chain, outcome: ImportOutcome, mempool: Mempool) -> list[Transaction]:
    """Make what a reorganisation's abandoned blocks held pending again, unless the new
    branch holds it or made it invalid: in the mempool, and in the store's journal of
    pending transactions, which a restart reads; then the reorganisation's mark goes, so
    a `kill -9` at any moment of it loses none of it (ledger thread)."""
    kill_point("reorganisation.switched")
    state = chain.state()
    returned = []
    for tx in (tx for block in outcome.abandoned for tx in block.transactions):
        if not isinstance(tx, Transaction) or chain.store.transaction(tx.hash) is not None:
            continue
        try:
            if mempool.check(tx):
                chain.app.check_transaction(state, tx)
                mempool.add(tx, durable=True)
                returned.append(tx)
        except TwinledgerError:  # pending already, or invalid on the new branch
            continue
    if returned:
        chain.store.add_pending(returned)
    chain.store.set_meta(REORGANISING, b"")
    return returned
