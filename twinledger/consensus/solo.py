"""``solo``: one validator signs every block (development and single-company use)."""

from __future__ import annotations

import asyncio
import time

from twinledger.abc import BlockProducer, Consensus
from twinledger.consensus.finality import highest_leaf, signers_of
from twinledger.core.types import Block, BlockHeader, CommitCertificate, VoteSignature
from twinledger.crypto.keys import SigningKey
from twinledger.errors import InvalidBlock
from twinledger.ledger.blocktree import BlockTree


class SoloConsensus(Consensus):
    name = "solo"
    final = True
    """One key certifies every block: there is no branch unless that key signs two."""

    def __init__(self, validator: bytes, key: SigningKey | None = None, interval_ms: int = 200,
                 max_block_txs: int = 5000) -> None:  # fmt: skip
        if key is not None and key.public != validator:
            key = None  # this node is not the validator: it follows, it does not produce
        self.validator = validator
        self.key = key
        self.interval = interval_ms / 1000
        self.max_block_txs = max_block_txs

    def validators(self) -> tuple[bytes, ...]:
        return (self.validator,)

    def certify(self, block: Block) -> CommitCertificate:
        assert self.key is not None
        header = block.header
        unsigned = CommitCertificate(header.chain_id, header.height, 0, header.hash, ())
        signature = VoteSignature(self.validator, self.key.sign(unsigned.vote_message))
        return CommitCertificate(header.chain_id, header.height, 0, header.hash, (signature,))

    def validate_certificate(self, header: BlockHeader, certificate: CommitCertificate) -> None:
        if signers_of(header, certificate, self.validators()) != (self.validator,):
            raise InvalidBlock("block is not signed by the solo validator")

    def fork_choice(self, tree: BlockTree) -> bytes:
        return highest_leaf(tree)

    async def run(self, producer: BlockProducer) -> None:
        if self.key is None:
            return
        last = 0.0
        while True:
            await producer.wait_for_transactions()
            delay = last + self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            built = await producer.build_block(self.validator)
            if built is None:
                continue
            block, result = built
            last = time.monotonic()
            await producer.commit_block(block, self.certify(block), result)
