"""Interfaces of the pluggable parts, in one place (storage, application, consensus, and
the running node as its API sees it).

Implementations live beside the layer that uses them: ``ledger/store/`` for chain
stores, ``contracts/runtime.py`` for the application, ``consensus/`` for consensus,
``node/`` for the running node.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from twinledger.core.proof import InclusionProof
from twinledger.core.types import (
    AnyTransaction,
    Block,
    BlockHeader,
    CommitCertificate,
    Receipt,
    Transaction,
)
from twinledger.errors import TwinledgerError

if TYPE_CHECKING:
    from twinledger.config import NodeConfig
    from twinledger.crypto.keys import SigningKey
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
    final: bool = False
    """Whether a certified block can never leave the canonical chain. Only then may a node
    strip the payloads it does not keep: a reorganisation executes blocks again."""
    key: SigningKey | None = None
    """This node's validator key, if it is one of the validators."""

    def receive(self, message_type: str, body: dict[str, Any]) -> bool:
        """Check and take a consensus message from a peer; True if it is worth relaying.
        Engines that do not vote over the network take none."""
        return False

    def head_advanced(self, height: int) -> None:  # noqa: B027 - most engines have nothing to leave
        """Block sync committed blocks up to ``height`` outside the engine."""

    @abstractmethod
    def validators(self) -> tuple[bytes, ...]: ...

    def quorum(self) -> int:
        """How many validators must take part for a block to commit: one for engines in
        which one validator's block stands (solo, poa)."""
        return 1

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
    def vote_guard(self) -> tuple[Callable[[], bytes | None], Callable[[bytes], None]]:
        """Load and save functions for the consensus engine's crash-safe record of its votes."""

    @abstractmethod
    async def record_evidence(self, kind: str, first: dict[str, Any], second: dict[str, Any]) -> None:
        """Store evidence of equivocation durably."""


@dataclass(frozen=True)
class SubmitResult:
    """Per-transaction outcome of a submission: accepted (with hash) or an error."""

    index: int
    tx_hash: bytes | None = None
    error: TwinledgerError | None = None
    duplicate: bool = False


class RunningNode(ABC):
    """What the node's API uses of the running node: ``api/`` knows the node only as this,
    so the API can be built and tested without the node's wiring."""

    config: NodeConfig
    chain_store: ChainStore
    """Blocks, state history and metadata; read it through ``read``, off the event loop."""
    stopping: bool
    """Set once the node was told to stop, so that long-lived API streams end."""

    @property
    @abstractmethod
    def chain_id(self) -> str: ...

    @property
    @abstractmethod
    def head(self) -> BlockHeader: ...

    @abstractmethod
    def head_state(self) -> StateReader:
        """Contract state at the current head, readable from any thread."""

    @abstractmethod
    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store read off the event loop."""

    # -- transactions --------------------------------------------------------------------
    @abstractmethod
    async def submit(self, raw: list[bytes]) -> list[SubmitResult]:
        """Admit client transactions (canonical bytes); the accepted ones are durable when
        this returns."""

    @abstractmethod
    def is_pending(self, tx_hash: bytes) -> bool:
        """Whether the transaction waits in the mempool."""

    @abstractmethod
    def pending_count(self) -> int: ...

    @abstractmethod
    async def wait_committed(self, tx_hash: bytes, timeout: float) -> TransactionLocation | None:
        """The committed transaction, waiting up to ``timeout`` seconds for it to commit."""

    @abstractmethod
    async def wait_for_height(self, height: int, timeout: float) -> bool:
        """True once the head reaches ``height``; False if ``timeout`` seconds pass first."""

    @abstractmethod
    async def proof(self, tx_hash: bytes) -> InclusionProof: ...

    @abstractmethod
    async def next_nonce(self, sender: bytes) -> int:
        """One past the sender's highest nonce, committed or pending."""

    @abstractmethod
    async def simulate(self, tx: Transaction) -> Receipt:
        """What ``tx`` would do on the head state (admission checks, then the contracts);
        raises the admission's named error; nothing is kept."""

    # -- status --------------------------------------------------------------------------
    @abstractmethod
    def evidence(self) -> list[dict[str, Any]]:
        """Stored equivocation evidence, readable (a store read: call it through ``read``)."""

    @abstractmethod
    def network_status(self) -> dict[str, Any]:
        """Peers and consensus progress (GET /v1/network)."""

    @abstractmethod
    def metrics_text(self) -> str:
        """The node's metrics in the Prometheus text format (GET /metrics)."""

    # -- the roles' services ---------------------------------------------------------------
    # Typed Any: their types live in layers above this module (store/, ingest/).
    @property
    @abstractmethod
    def offchain_store(self) -> Any:
        """The off-chain store service (``store.server.StoreService``); None without the
        store role."""

    @property
    @abstractmethod
    def ingest_service(self) -> Any:
        """The ingest listener (``ingest.service.IngestService``); None without the ingest
        role."""
