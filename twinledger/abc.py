"""Interfaces of the pluggable parts, in one place (storage, application, consensus).

Implementations live beside the layer that uses them: ``ledger/store/`` for chain
stores, ``contracts/runtime.py`` for the application, ``consensus/`` for consensus.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from twinledger.core.types import (
    AnyTransaction,
    Block,
    BlockHeader,
    CommitCertificate,
    Receipt,
    Transaction,
)

if TYPE_CHECKING:
    from twinledger.ledger.blocktree import BlockTree
    from twinledger.ledger.genesis import Genesis


T = TypeVar("T")
StateValue = Any
"""A canonical value (see core.encoding); ``None`` means absent."""


@dataclass(frozen=True)
class BlockResult:
    """What executing a block's transactions produced."""

    writes: Mapping[str, StateValue]
    receipts: tuple[Receipt, ...]
    state_root: bytes
    encoded_writes: Mapping[str, bytes | None]
    """The write set in key order, each value canonically encoded (``None`` deletes)."""


@dataclass(frozen=True)
class TransactionLocation:
    transaction: AnyTransaction
    block_hash: bytes
    height: int
    index: int
    receipt: Receipt


class StateReader(ABC):
    """Read access to contract state as of one committed height."""

    @abstractmethod
    def get(self, key: str) -> StateValue: ...


class ChainStore(ABC):
    """Durable storage of blocks, certificates, state history and pending transactions.

    Every method is synchronous; ``commit_block`` and ``add_pending`` are atomic and
    durable when they return.
    """

    # -- blocks --------------------------------------------------------------------------
    @abstractmethod
    def commit_block(self, block: Block, certificate: CommitCertificate, result: BlockResult,
                     stored: tuple[AnyTransaction, ...]) -> None:  # fmt: skip
        """Store ``block`` as the new canonical head, its state writes and receipts, keep the
        given (possibly stripped) transactions, and drop them from the pending set."""

    @abstractmethod
    def store_side_block(self, block: Block, certificate: CommitCertificate) -> None:
        """Keep a valid block that is not (yet) on the canonical chain."""

    @abstractmethod
    def rewind(self, height: int) -> None:
        """Drop canonical blocks above ``height`` with their state writes and indexes."""

    @abstractmethod
    def head(self) -> BlockHeader | None: ...

    @abstractmethod
    def header_by_height(self, height: int) -> BlockHeader | None: ...

    @abstractmethod
    def block_by_hash(self, block_hash: bytes) -> Block | None: ...

    @abstractmethod
    def certificate(self, block_hash: bytes) -> CommitCertificate | None: ...

    @abstractmethod
    def headers(self) -> Iterator[tuple[BlockHeader, bool]]:
        """Every stored header with whether it is canonical (to rebuild the block tree)."""

    @abstractmethod
    def transaction(self, tx_hash: bytes) -> TransactionLocation | None: ...

    @abstractmethod
    def raw_block(self, height: int) -> tuple[bytes, bytes, bytes, list[bytes]] | None:
        """Stored bytes of a canonical block: (hash, header, certificate, transactions),
        without any check, so that ``verify chain`` can find tampering."""

    # -- state ---------------------------------------------------------------------------
    @abstractmethod
    def state_get(self, key: str, height: int | None = None) -> StateValue:
        """Value of ``key`` after block ``height`` (default: the head)."""

    @abstractmethod
    def state_items(self, prefix: str, height: int | None = None) -> list[tuple[str, StateValue]]:
        """Present keys starting with ``prefix`` after block ``height`` (default: the head),
        with their values, in key order."""

    @abstractmethod
    def state_writes(self, height: int) -> dict[str, StateValue]:
        """The state writes recorded for canonical block ``height``."""

    @abstractmethod
    def receipts(self, height: int) -> list[Receipt]:
        """The receipts recorded for canonical block ``height``, in transaction order."""

    # -- pending transactions (the durable mempool) ----------------------------------------
    @abstractmethod
    def add_pending(self, txs: Iterable[Transaction]) -> None: ...

    @abstractmethod
    def pending(self) -> list[Transaction]: ...

    # -- metadata ------------------------------------------------------------------------
    @abstractmethod
    def meta(self, key: str) -> bytes | None: ...

    @abstractmethod
    def set_meta(self, key: str, value: bytes) -> None: ...

    @abstractmethod
    def meta_items(self, prefix: str) -> list[tuple[str, bytes]]:
        """Metadata entries whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def close(self) -> None: ...


class Application(ABC):
    """The deterministic state machine the ledger orders transactions for."""

    @abstractmethod
    def genesis_result(self, genesis: Genesis) -> BlockResult:
        """The state the chain starts from (height 0), derived from ``genesis`` alone."""

    @abstractmethod
    def check_transaction(self, state: StateReader, tx: Transaction) -> None:
        """Admission check against committed state; raise a named error to refuse."""

    @abstractmethod
    def execute_block(self, state: StateReader, header: BlockHeader,
                      transactions: tuple[Transaction, ...], parent_state_root: bytes) -> BlockResult:  # fmt: skip
        """Apply the transactions in order; never raises for a failing transaction (its
        receipt says ``failed``)."""


class Consensus(ABC):
    """Block validity, fork choice and block production: everything a consensus decides."""

    name: str
    last_round: int = 0
    """Round of the height being decided (0 for engines without rounds)."""

    def receive(self, message_type: str, body: dict[str, Any]) -> bool:
        """Check and take a consensus message from a peer; True if it is worth relaying.
        Engines that do not vote over the network take none."""
        return False

    def head_advanced(self, height: int) -> None:  # noqa: B027 - most engines have nothing to leave
        """Block sync committed blocks up to ``height`` outside the engine."""

    @abstractmethod
    def validators(self) -> tuple[bytes, ...]: ...

    @abstractmethod
    def validate_certificate(self, header: BlockHeader, certificate: CommitCertificate) -> None:
        """Raise InvalidBlock unless ``certificate`` commits ``header``."""

    @abstractmethod
    def fork_choice(self, tree: BlockTree) -> bytes:
        """Hash of the head of the canonical chain among the blocks in ``tree``."""

    @abstractmethod
    async def run(self, producer: BlockProducer) -> None:
        """Produce blocks for as long as the node runs (returns at once if not a producer)."""


class BlockProducer(ABC):
    """What a node offers its consensus engine to build and commit blocks."""

    @abstractmethod
    async def wait_for_transactions(self) -> None: ...

    @abstractmethod
    async def build_block(self, proposer: bytes, allow_empty: bool = False) -> tuple[Block, BlockResult] | None:
        """A block over the head from pending transactions, executed; None if none pend
        (unless ``allow_empty``)."""

    @abstractmethod
    async def commit_block(self, block: Block, certificate: CommitCertificate,
                           result: BlockResult) -> None:  # fmt: skip
        """Make a certified block the new head, durably."""


class NetworkedProducer(BlockProducer):
    """What a node offers a consensus engine that votes with other nodes over the network."""

    @property
    @abstractmethod
    def head(self) -> BlockHeader: ...

    @abstractmethod
    async def execute_proposal(self, block: Block) -> BlockResult:
        """Validate and execute a proposed block on the head without committing it; raise
        InvalidBlock (or InvalidTransaction) if it is not valid."""

    @abstractmethod
    def broadcast(self, message_type: str, body: dict[str, Any]) -> None:
        """Gossip a message to every peer."""

    @abstractmethod
    def known_transaction(self, encoded: bytes) -> Transaction | None:
        """A verified pending transaction with exactly these bytes, if there is one."""

    @abstractmethod
    def request_blocks(self, height: int) -> None:
        """Ask peers for committed blocks from ``height`` on (block sync)."""

    @abstractmethod
    async def durably(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` where store writes happen (the ledger thread), and await it."""

    @abstractmethod
    def consensus_record(self) -> tuple[Callable[[], bytes | None], Callable[[bytes], None]]:
        """Load and save functions for the consensus engine's crash-safe record."""

    @abstractmethod
    async def record_evidence(self, kind: str, first: dict[str, Any], second: dict[str, Any]) -> None:
        """Store evidence of equivocation durably."""
