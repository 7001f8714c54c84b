"""``verify chain``: walk the canonical chain in the store and recheck every hash, Merkle
root, signature and certificate; where payloads are kept, replay every state transition
from genesis and compare state roots and the stored state writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twinledger.abc import Application, ChainStore, Consensus, StateReader, StateValue
from twinledger.core.hashing import ZERO_HASH
from twinledger.core.merkle import merkle_root
from twinledger.core.proof import validators_hash
from twinledger.core.types import (
    BlockHeader,
    Transaction,
    decode_certificate,
    decode_header,
    decode_transaction,
)
from twinledger.errors import TwinledgerError
from twinledger.ledger.genesis import Genesis
from twinledger.ledger.validation import validate_transaction


class MemoryState(StateReader):
    def __init__(self) -> None:
        self.values: dict[str, StateValue] = {}

    def get(self, key: str) -> StateValue:
        return self.values.get(key)


@dataclass
class ChainReport:
    height: int = 0
    blocks: int = 0
    transactions: int = 0
    stripped: int = 0
    replayed_to: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(store: ChainStore, genesis: Genesis, consensus: Consensus, app: Application,
                 progress: Callable[[int, int], None] | None = None) -> ChainReport:  # fmt: skip
    report = ChainReport()
    head = store.head()
    if head is None:
        report.problems.append((0, "the store holds no chain"))
        return report
    report.height = head.height
    expected_validators = validators_hash(list(consensus.validators()))
    state = MemoryState()
    replaying = True
    previous: BlockHeader | None = None
    for height in range(head.height + 1):
        if progress is not None:
            progress(height, head.height)
        raw = store.raw_block(height)
        if raw is None:
            report.problems.append((height, "block is missing"))
            break
        stored_hash, header_bytes, cert_bytes, tx_bytes = raw
        try:
            header = decode_header(header_bytes)
            if header.hash != stored_hash:
                raise TwinledgerError("header does not hash to the stored block hash")
            if header.height != height:
                raise TwinledgerError(f"header says height {header.height}")
            if height == 0:
                if header != genesis.header():
                    raise TwinledgerError("genesis block does not match genesis.json")
                start = app.genesis_result(genesis)
                if dict(start.writes) != store.state_writes(0):
                    raise TwinledgerError("stored genesis state differs from genesis.json")
                state.values.update(start.writes)
                previous = header
                report.blocks += 1
                continue
            assert previous is not None
            if header.previous != previous.hash or header.chain_id != genesis.chain_id:
                raise TwinledgerError("block does not link to its predecessor")
            if header.previous == ZERO_HASH or header.timestamp <= previous.timestamp:
                raise TwinledgerError("block timestamp or link is invalid")
            if header.validators_hash != expected_validators:
                raise TwinledgerError("block names another validator set")
            txs = tuple(decode_transaction(b) for b in tx_bytes)
            if len(txs) != header.tx_count or merkle_root([tx.hash for tx in txs]) != header.tx_root:
                raise TwinledgerError("transactions do not match the header's Merkle root")
            for tx in txs:
                validate_transaction(tx, genesis.chain_id)
            consensus.validate_certificate(header, decode_certificate(cert_bytes))
        except TwinledgerError as exc:
            report.problems.append((height, exc.message))
            break
        report.blocks += 1
        report.transactions += len(txs)
        full = tuple(tx for tx in txs if isinstance(tx, Transaction))
        report.stripped += len(txs) - len(full)
        if replaying and len(full) == len(txs):
            result = app.execute_block(state, header, full, previous.state_root)
            if result.state_root != header.state_root:
                report.problems.append((height, "replaying the block gives another state root"))
                break
            if dict(result.writes) != store.state_writes(height):
                report.problems.append((height, "stored state differs from the replayed state"))
                break
            if store.receipts(height) != list(result.receipts):
                report.problems.append((height, "stored receipts differ from the replayed receipts"))
                break
            state.values.update(result.writes)
            report.replayed_to = height
        else:
            replaying = False
        previous = header
    return report
