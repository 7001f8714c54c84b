"""Validation, separate from application: each check raises a named error that says what
is wrong, and changes nothing."""

from __future__ import annotations

from collections.abc import Container

from twinledger.core.merkle import merkle_root
from twinledger.core.types import (
    MAX_BLOCK_TX_BYTES,
    MAX_TX_BYTES,
    AnyTransaction,
    Block,
    BlockHeader,
    Transaction,
    decode_transaction,
)
from twinledger.crypto.keys import verify_signature
from twinledger.errors import InvalidBlock, InvalidTransaction, TwinledgerError

MAX_CLOCK_DRIFT_MS = 10 * 60 * 1000
MAX_BLOCK_AHEAD_MS = 30 * 1000
"""How far ahead of a validator's clock a proposed block's time may be: further, and it
votes against it (a proposer at 2**64 - 1 ms stopped the chain for good; a smaller skew
let one proposer decide when grants and tokens expire)."""


def validate_transaction(tx: AnyTransaction, chain_id: str, now_ms: int | None = None) -> None:
    """Stateless checks: chain, size, signature and (if ``now_ms`` is given) the clock."""
    if tx.chain_id != chain_id:
        raise InvalidTransaction(f"transaction is for chain {tx.chain_id!r}, this is {chain_id!r}",
                                 code="wrong_chain")  # fmt: skip
    if len(tx.encoded) > MAX_TX_BYTES:
        raise InvalidTransaction(f"transaction exceeds {MAX_TX_BYTES} bytes", code="too_large")
    if now_ms is not None and abs(tx.timestamp - now_ms) > MAX_CLOCK_DRIFT_MS:
        raise InvalidTransaction("transaction timestamp is more than 10 minutes from this node's clock",
                                 code="bad_timestamp")  # fmt: skip
    if not verify_signature(tx.sender, tx.signing_digest, tx.signature):
        raise InvalidTransaction("transaction signature does not verify", code="bad_signature")


def decode_and_validate(raw: list[bytes], chain_id: str, now_ms: int) -> list[Transaction | TwinledgerError]:
    """Decode and statelessly validate submitted transactions, one outcome per item.

    Runs in worker processes for large batches; the results come back with their hashes
    already computed, so the ledger never decodes or hashes them again."""
    out: list[Transaction | TwinledgerError] = []
    for data in raw:
        try:
            tx = decode_transaction(data)
            if not isinstance(tx, Transaction):
                raise InvalidTransaction("a stripped transaction cannot be submitted", code="stripped")
            validate_transaction(tx, chain_id, now_ms)
            tx.hash  # noqa: B018 - computed here, off the ledger's process
            out.append(tx)
        except TwinledgerError as exc:
            out.append(exc)
    return out


def validate_body(block: Block, max_txs: int) -> None:
    """That the transactions are the ones the header commits to, within the limits: what
    can be checked of a block whose parent is not known yet (an orphan)."""
    header = block.header
    if header.tx_count != len(block.transactions) or header.tx_count > max_txs:
        raise InvalidBlock("block transaction count is wrong or too large")
    if sum(len(tx.encoded) for tx in block.transactions) > MAX_BLOCK_TX_BYTES:
        raise InvalidBlock(f"block transactions exceed {MAX_BLOCK_TX_BYTES} bytes")
    if merkle_root([tx.hash for tx in block.transactions]) != header.tx_root:
        raise InvalidBlock("block transaction root does not match its transactions")


def validate_block(block: Block, parent: BlockHeader, validators_hash: bytes, max_txs: int,
                   verified: Container[bytes] = frozenset()) -> None:  # fmt: skip
    """Everything about a block that can be checked without executing it; signatures of
    transactions whose hashes are in ``verified`` (the mempool's) were checked before."""
    header = block.header
    if header.chain_id != parent.chain_id:
        raise InvalidBlock("block belongs to another chain")
    if header.height != parent.height + 1 or header.previous != parent.hash:
        raise InvalidBlock(f"block {header.height} does not extend block {parent.height}")
    if header.timestamp <= parent.timestamp:
        raise InvalidBlock("block timestamp is not after its parent's")
    if header.validators_hash != validators_hash:
        raise InvalidBlock("block names another validator set")
    validate_body(block, max_txs)
    seen: set[tuple[bytes, int]] = set()
    for tx in block.transactions:
        if not isinstance(tx, Transaction):
            raise InvalidBlock("block carries a stripped transaction; it cannot be executed")
        if tx.hash not in verified:
            validate_transaction(tx, header.chain_id)
        if tx.timestamp > header.timestamp + MAX_CLOCK_DRIFT_MS:
            raise InvalidBlock("block carries a transaction from its future")
        if (tx.sender, tx.nonce) in seen:
            raise InvalidBlock("block carries a sender's nonce twice")
        seen.add((tx.sender, tx.nonce))
