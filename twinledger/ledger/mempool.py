"""The mempool: pending transactions in arrival order, de-duplicated and bounded in count
and bytes, with no sender holding more than a tenth of either (one member's key cannot
crowd out the others).

Durability is the node's business: it adds a batch as *journaling*, writes it to the
chain store, then marks it durable. Only durable transactions are selected for blocks,
and a sender's transactions are never selected past one that is still journaling.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

from twinledger.core.types import PREFERRED_BLOCK_TX_BYTES, Transaction
from twinledger.errors import InvalidTransaction, MempoolFull

MAX_MEMPOOL_BYTES = 128 * 1024 * 1024
SENDER_SHARE = 10
"""A sender may hold at most 1/SENDER_SHARE of the mempool's transactions and bytes."""


class Mempool:
    def __init__(self, max_txs: int = 100_000, max_bytes: int = MAX_MEMPOOL_BYTES, sender_share: int = SENDER_SHARE) -> None:
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.sender_max_txs = max(1, max_txs // sender_share)
        self.sender_max_bytes = max(1, max_bytes // sender_share)
        self.bytes = 0
        self._sender_bytes: dict[bytes, int] = {}
        self._txs: dict[bytes, Transaction] = {}
        self._by_sender: dict[bytes, dict[int, bytes]] = {}
        self._journaling: set[bytes] = set()
        self._by_encoding: dict[bytes, Transaction] = {}

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    def check(self, tx: Transaction) -> bool:
        """Raise if ``tx`` cannot be admitted; False if it is already pending (idempotent)."""
        if tx.hash in self._txs:
            return False
        pending = self._by_sender.get(tx.sender, {})
        if tx.nonce in pending:
            raise InvalidTransaction(f"another transaction with nonce {tx.nonce} from this sender is pending",
                                     code="nonce_pending")  # fmt: skip
        size = len(tx.encoded)
        if len(self._txs) + 1 > self.max_txs or self.bytes + size > self.max_bytes:
            raise MempoolFull(f"mempool holds its limit of {self.max_txs} transactions or {self.max_bytes} bytes; "
                              "retry later")  # fmt: skip
        if len(pending) + 1 > self.sender_max_txs or self._sender_bytes.get(tx.sender, 0) + size > self.sender_max_bytes:
            raise MempoolFull(f"this sender already has {len(pending)} transactions pending, its share of the "
                              "mempool; retry when some are committed")  # fmt: skip
        return True

    def by_encoding(self, encoded: bytes) -> Transaction | None:
        """The pending transaction with exactly these bytes, so a block that carries it
        need not be decoded and hashed again. Safe to call from another thread."""
        return self._by_encoding.get(hashlib.sha256(encoded).digest())

    def add(self, tx: Transaction, durable: bool = True) -> None:
        self._txs[tx.hash] = tx
        self._by_encoding[hashlib.sha256(tx.encoded).digest()] = tx
        self._by_sender.setdefault(tx.sender, {})[tx.nonce] = tx.hash
        self.bytes += len(tx.encoded)
        self._sender_bytes[tx.sender] = self._sender_bytes.get(tx.sender, 0) + len(tx.encoded)
        if not durable:
            self._journaling.add(tx.hash)

    def mark_durable(self, hashes: Iterable[bytes]) -> None:
        self._journaling.difference_update(hashes)

    def select(self, max_txs: int, max_bytes: int = PREFERRED_BLOCK_TX_BYTES) -> list[Transaction]:
        """Up to ``max_txs`` transactions of at most ``max_bytes`` encoded bytes in all, in
        arrival order, each sender's in nonce order, never a nonce without the sender's
        lower pending nonces before it. A sender's run that does not fit whole goes in as
        far as it fits, and the others' come after it: one sender's large run (its highest
        nonce sent first) must not leave every block empty."""
        chosen: list[Transaction] = []
        size = 0
        taken: set[bytes] = set()
        sorted_nonces: dict[bytes, list[int]] = {}
        position: dict[bytes, int] = {}
        blocked: set[bytes] = set()
        for tx in self._txs.values():
            if tx.hash in taken or tx.sender in blocked:
                continue
            if tx.hash in self._journaling:
                blocked.add(tx.sender)
                continue
            nonces = self._by_sender[tx.sender]
            if tx.sender not in sorted_nonces:
                sorted_nonces[tx.sender] = sorted(nonces)
            order = sorted_nonces[tx.sender]
            start, end = position.get(tx.sender, 0), bisect.bisect_right(order, tx.nonce)
            batch = [self._txs[nonces[n]] for n in order[start:end]]
            if any(t.hash in self._journaling for t in batch):
                blocked.add(tx.sender)
                continue
            fit: list[Transaction] = []
            for t in batch:
                if len(chosen) + len(fit) >= max_txs or size + len(t.encoded) > max_bytes:
                    break
                fit.append(t)
                size += len(t.encoded)
            chosen.extend(fit)
            taken.update(t.hash for t in fit)
            position[tx.sender] = start + len(fit)
            if len(fit) < len(batch):
                blocked.add(tx.sender)
            if len(chosen) >= max_txs:
                break
        return chosen

    def remove(self, hashes: Iterable[bytes]) -> None:
        for tx_hash in hashes:
            tx = self._txs.pop(tx_hash, None)
            if tx is None:
                continue
            self._journaling.discard(tx_hash)
            self._by_encoding.pop(hashlib.sha256(tx.encoded).digest(), None)
            self.bytes -= len(tx.encoded)
            self._sender_bytes[tx.sender] -= len(tx.encoded)
            nonces = self._by_sender[tx.sender]
            nonces.pop(tx.nonce, None)
            if not nonces:
                del self._by_sender[tx.sender]
                del self._sender_bytes[tx.sender]

    def pending_nonce(self, sender: bytes) -> int | None:
        nonces = self._by_sender.get(sender)
        return max(nonces) if nonces else None
