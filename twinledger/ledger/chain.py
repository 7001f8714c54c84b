"""The chain: block tree + chain store + application. ``apply_block`` is the one entry
point for a certified block, whether this node produced it or a peer sent it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from twinledger.abc import Application, BlockResult, ChainStore, Consensus, StateReader, StateValue
from twinledger.core.encoding import decode, encode
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
from twinledger.errors import ConfigError, InvalidBlock, MempoolFull, NotFound, TwinledgerError
from twinledger.ledger.blocktree import BlockTree
from twinledger.ledger.genesis import Genesis
from twinledger.ledger.mempool import Mempool
from twinledger.ledger.validation import MAX_BLOCK_AHEAD_MS, validate_block, validate_body

log = logging.getLogger("twinledger.chain")
KeepFilter = Callable[[AnyTransaction], bool]
"""Decides whether this node keeps a transaction's payload or only its stripped form."""


def keep_all(tx: AnyTransaction) -> bool:
    return True


def keep_filter(contracts: frozenset[str], senders: frozenset[bytes]) -> KeepFilter:
    """Keep payloads of the given contracts and of the given senders (e.g. our own keys)."""

    def keep(tx: AnyTransaction) -> bool:
        return tx.contract in contracts or tx.sender in senders

    return keep


REORGANISING = "chain/reorganising"
"""Chain store metadata: the heads reorganisations left, kept until what the blocks they
took off held is pending again (empty when none is under way)."""


class StoreState(StateReader):
    """Committed state as of ``height`` (default: the head)."""

    def __init__(self, store: ChainStore, height: int | None = None) -> None:
        self.store = store
        self.height = height

    def get(self, key: str) -> StateValue:
        return self.store.state_get(key, self.height)


class Overlay(StateReader):
    """A state with the writes of blocks executed on it but not stored (a branch tried out)."""

    def __init__(self, base: StateReader) -> None:
        self.base = base
        self.writes: dict[str, StateValue] = {}

    def get(self, key: str) -> StateValue:
        return self.writes[key] if key in self.writes else self.base.get(key)


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
    status: str  # "known", "orphan", "side", "head", "invalid" (it or a block it builds on does not execute)
    head: BlockHeader
    adopted: tuple[Block, ...] = ()
    """Blocks that joined the canonical chain, parent first."""
    abandoned: tuple[Block, ...] = ()
    """Blocks reorganisations took off the canonical chain whose transactions are to be
    pending again (``return_abandoned``)."""


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
        self.invalid: set[bytes] = set()
        """Certified blocks found not to execute, and what builds on them (kept out of the tree)."""
        raw = store.meta(REORGANISING)
        self._left_heads: list[bytes] = [bytes(left) for left in decode(raw)] if raw else []
        """The marks of REORGANISING, kept here too: every import asks for them."""
        self._finish_reorganisation()
        self.reported = self.head
        """The head the ledger service last heard of: what joined the chain since is adopted."""

    def _finish_reorganisation(self) -> None:
        """A process killed in the middle of a reorganisation left the head anywhere from
        the old head through the common ancestor to the new head: follow the fork choice
        now, and make what the branches it left held pending again (the killed process
        may not have)."""
        self._follow_fork_choice()
        abandoned = self._abandoned()
        if abandoned:
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
        """Store an executed, certified block that extends the head: one the node decided."""
        self._commit(block, certificate, result)
        self.reported = block.header

    def _commit(self, block: Block, certificate: CommitCertificate, result: BlockResult) -> None:
        """Engines whose blocks may leave the canonical chain keep every payload: a
        reorganisation executes them again."""
        assert block.header.previous == self.head.hash
        strip = self.consensus.final
        stored = tuple(tx.strip() if strip and not self.keep(tx) else tx for tx in block.transactions)
        self.store.commit_block(block, certificate, result, stored)
        self.head_state.committed(result.writes)
        self.tree.add(block.header)
        self.head = block.header

    # -- importing ---------------------------------------------------------------------------
    def apply_block(self, block: Block, certificate: CommitCertificate) -> ImportOutcome:
        """Validate a certified block and add it; extends, forks or reorganises the chain as
        the consensus's fork choice says."""
        header = block.header
        if header.hash in self.invalid or header.previous in self.invalid:
            raise InvalidBlock(f"block {header.height} is or builds on a certified block that does not execute")
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
        if header.previous == self.head.hash:
            try:
                self._commit(block, certificate, self._execute(block))
            except InvalidBlock:
                self.invalid.add(header.hash)
                raise
        else:
            self.store.store_side_block(block, certificate)
            self.tree.add(header)
        self._follow_fork_choice()
        status = "invalid" if header.hash in self.invalid else "head" if self.head.hash == header.hash else "side"
        reported, self.reported = self.reported, self.head
        return ImportOutcome(status, self.head, self._adopted_since(reported, block), self._abandoned())

    def _adopted_since(self, reported: BlockHeader, block: Block) -> tuple[Block, ...]:
        """The blocks that joined the canonical chain since ``reported`` was the head; the
        common cases (none, or ``block`` on top of it) without walking the chain."""
        if self.head.hash == reported.hash:
            return ()
        if self.head.hash == block.hash and block.header.previous == reported.hash:
            return (block,)
        return self._branch(self.tree.common_ancestor(reported.hash, self.head.hash), self.head)

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
        """Execute a block on the head (valid(v) and block sync)."""

        def committed(tx_hash: bytes) -> bool:
            return self.store.transaction(tx_hash) is not None

        return self._execute_on(block, self.head, self.state(), committed)

    def _execute_on(self, block: Block, parent: BlockHeader, state: StateReader,
                    committed: Callable[[bytes], bool]) -> BlockResult:  # fmt: skip
        txs = tuple(tx for tx in block.transactions if isinstance(tx, Transaction))
        for tx in txs:  # a committed transaction again: its commit would break the index, on every node
            if committed(tx.hash):
                raise InvalidBlock(f"block {block.height} carries transaction {tx.hash.hex()[:16]}…, committed before")
        result = self.app.execute_block(state, block.header, txs, parent.state_root)
        if result.state_root != block.header.state_root:
            raise InvalidBlock(f"block {block.height} state root does not match its execution")
        return result

    def _follow_fork_choice(self) -> None:
        """Make the fork choice's leaf the head. A block on the way there that is not valid
        (a certified block a faulty authority made) leaves the tree with all that builds
        on it, and the fork choice is asked again: each pass either reaches the leaf or
        takes a block out, so it ends, and a bad branch costs one trial, no rewind."""
        while (best := self.consensus.fork_choice(self.tree)) != self.head.hash:
            bad = self._reorganise(best)
            if bad is not None:
                self.invalid |= self.tree.discard(bad)

    def _reorganise(self, new_head: bytes) -> bytes | None:
        """Try the branch to ``new_head`` out on the state after the common ancestor; if
        every block of it is valid, mark the head left, rewind and commit the branch, and
        return None, else return its first block that is not valid (nothing changed)."""
        old_head = self.head
        ancestor = self.tree.common_ancestor(old_head.hash, new_head)
        branch = [h for h in self.tree.path_from_root(new_head) if h.height > ancestor.height]
        executed, bad = self._try_branch(ancestor, branch)
        if bad is not None:
            return bad
        if old_head.height > ancestor.height:
            self._mark(old_head.hash)  # before the rewind: a kill anywhere after it loses nothing
        self._rewind(ancestor)
        kill_point("reorganisation.rewound")
        for block, certificate, result in executed:
            self._commit(block, certificate, result)
            kill_point("reorganisation.part-way")
        return None

    def _try_branch(self, ancestor: BlockHeader, branch: list[BlockHeader]
                    ) -> tuple[list[tuple[Block, CommitCertificate, BlockResult]], bytes | None]:  # fmt: skip
        """Validate and execute ``branch`` on the state after ``ancestor``, storing nothing:
        the executed blocks, and the hash of the first that is not valid (None if all are)."""
        state = Overlay(StoreState(self.store, ancestor.height))
        on_branch: set[bytes] = set()

        def committed(tx_hash: bytes) -> bool:
            location = self.store.transaction(tx_hash)
            return tx_hash in on_branch or (location is not None and location.height <= ancestor.height)

        executed, parent = [], ancestor
        for header in branch:
            try:
                block, certificate = self._stored(header.hash)
                validate_block(block, parent, self.validators_hash, self.genesis.max_block_txs)
                result = self._execute_on(block, parent, state, committed)
            except InvalidBlock as exc:
                log.warning("block %d (%s…) of a certified branch is not valid: %s", header.height,
                            header.hash.hex()[:12], exc.message)  # fmt: skip
                return executed, header.hash
            state.writes.update(result.writes)
            on_branch.update(tx.hash for tx in block.transactions)
            executed.append((block, certificate, result))
            parent = header
        return executed, None

    def _rewind(self, ancestor: BlockHeader) -> None:
        self.store.rewind(ancestor.height)
        self.head_state = HeadState(self.store)
        self.head = ancestor

    def _mark(self, left: bytes) -> None:
        if left not in self._left_heads:
            self._left_heads = [*self._left_heads, left]
            self.store.set_meta(REORGANISING, encode(self._left_heads))

    def clear_marks(self) -> None:
        """What the marked heads left is pending again (``return_abandoned``)."""
        if self._left_heads:
            self._left_heads = []
            self.store.set_meta(REORGANISING, b"")

    def _abandoned(self) -> tuple[Block, ...]:
        """What the marked reorganisations left, to be made pending again; marks that left
        nothing (their heads are canonical again) go at once."""
        if not self._left_heads:
            return ()
        left = self._left_behind()
        if not left:
            self.clear_marks()
        return left

    def _left_behind(self) -> tuple[Block, ...]:
        """The blocks between the marked heads and the canonical chain, parent first."""
        canonical = {h.hash for h in self.tree.path_from_root(self.head.hash)}
        left = {h.hash: h for mark in self._left_heads if mark in self.tree
                for h in self.tree.path_from_root(mark) if h.hash not in canonical}  # fmt: skip
        return tuple(self._stored(h.hash)[0] for h in sorted(left.values(), key=lambda h: (h.height, h.hash)))

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
    """Make what reorganisations took off the canonical chain pending again, unless the
    new branch holds it or made it invalid: in the store's journal of pending
    transactions, which a restart reads, and in the mempool; then the marks go, so a
    `kill -9` at any moment loses none of it (ledger thread). The mempool's bounds do not
    apply: these transactions were admitted once already."""
    kill_point("reorganisation.switched")
    state = chain.state()
    journal, returned = [], []
    for tx in (tx for block in outcome.abandoned for tx in block.transactions):
        if not isinstance(tx, Transaction) or chain.store.transaction(tx.hash) is not None:
            continue
        try:
            chain.app.check_transaction(state, tx)
            fresh = _returnable(mempool, tx)
        except TwinledgerError:  # invalid on the new branch, or its nonce taken by another pending one
            continue
        journal.append(tx)
        if fresh:
            mempool.add(tx, durable=True)
            returned.append(tx)
    if journal:
        chain.store.add_pending(journal)
    chain.clear_marks()
    return returned


def _returnable(mempool: Mempool, tx: Transaction) -> bool:
    """Whether ``tx`` is to enter the mempool (False: it is there already)."""
    try:
        return mempool.check(tx)
    except MempoolFull:
        return True
