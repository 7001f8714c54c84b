"""Block sync: a node that is behind fetches committed blocks, with their certificates,
from peers that are ahead, and serves its own to peers that are behind."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from twinledger.core.killpoints import kill_point
from twinledger.core.types import MAX_BLOCK_TX_BYTES, Block, decode_certificate, decode_header, decode_transaction
from twinledger.errors import DecodeError
from twinledger.net.peers import Peer
from twinledger.node.ledger import LedgerService

log = logging.getLogger("twinledger.node")
SYNC_BATCH = 32
"""Blocks per block-sync response."""
SYNC_RETRY = 1.0
"""Seconds before the same height is asked for again."""


class BlockSync:
    def __init__(self, ledger: LedgerService, peers: Callable[[], list[Peer]]) -> None:
        self.ledger = ledger
        self.peers = peers
        """The connected peers."""
        self._asked: dict[int, float] = {}

    def request_blocks(self, height: int) -> None:
        """Ask the peers that are ahead (or all, if none says so) for blocks from ``height``."""
        now = time.monotonic()
        if now - self._asked.get(height, 0.0) < SYNC_RETRY:
            return
        self._asked = {h: t for h, t in self._asked.items() if now - t < SYNC_RETRY}
        self._asked[height] = now
        peers = self.peers()
        ahead = [peer for peer in peers if peer.height >= height] or peers
        for peer in ahead:
            peer.send("get_blocks", {"from": height})

    def raw_blocks(self, start: int) -> list[dict[str, Any]]:
        """Up to a batch of canonical blocks from ``start``, as stored (a store read), and
        no more bytes than one block may hold, so the answer always fits a frame."""
        out: list[dict[str, Any]] = []
        size = 0
        for height in range(start, start + SYNC_BATCH):
            raw = self.ledger.chain_store.raw_block(height)
            if raw is None:
                break
            _, header, certificate, txs = raw
            size += len(header) + len(certificate) + sum(len(tx) for tx in txs)
            if out and size > MAX_BLOCK_TX_BYTES:
                break
            out.append({"header": header, "certificate": certificate, "transactions": txs})
        return out

    async def import_blocks(self, items: Any) -> None:
        """Verify and apply committed blocks with their certificates, in order."""
        if not isinstance(items, list):
            raise DecodeError("blocks: expected a list")
        ledger = self.ledger
        imported = 0
        for item in items[:SYNC_BATCH]:
            try:
                block = Block(decode_header(item["header"]), tuple(decode_transaction(t) for t in item["transactions"]))
                certificate = decode_certificate(item["certificate"])
            except (KeyError, TypeError) as exc:
                raise DecodeError("blocks: malformed block") from exc
            if block.height > ledger.head.height + 1:
                continue
            outcome = await ledger.apply_synced(block, certificate)
            if outcome.adopted:
                kill_point("sync.block-applied")
            if outcome.status == "orphan":  # the peer is on another branch: fetch back to where it forked
                self.request_blocks(max(1, block.height - SYNC_BATCH))
                break
            imported += len(outcome.adopted)
        if imported:
            log.info("block sync: imported %d block(s), head is %d", imported, ledger.head.height)
            ledger.consensus.head_advanced(ledger.head.height)
            self.request_blocks(ledger.head.height + 1)  # a batch is bounded in bytes too: ask on until none come
