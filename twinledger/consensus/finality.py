"""What every engine checks of a commit certificate, and the fork choice they share."""

from __future__ import annotations

from twinledger.core.proof import certificate_signers
from twinledger.core.types import BlockHeader, CommitCertificate
from twinledger.errors import InvalidBlock, InvalidProof
from twinledger.ledger.blocktree import BlockTree


def signers_of(header: BlockHeader, certificate: CommitCertificate, validators: tuple[bytes, ...],
               round_: int | None = None) -> tuple[bytes, ...]:  # fmt: skip
    """The validators whose signatures in ``certificate`` commit ``header`` (in ``round_``,
    if the engine fixes it); raises InvalidBlock for a certificate of another block, a
    proposer outside the set, or any bad or duplicate signature."""
    expected = (header.chain_id, header.height, header.hash)
    if (certificate.chain_id, certificate.height, certificate.block_hash) != expected or (
        round_ is not None and certificate.round != round_
    ):
        raise InvalidBlock("commit certificate is for another block")
    if header.proposer not in validators:
        raise InvalidBlock("block was proposed by a non-validator")
    try:
        return certificate_signers(certificate, validators)
    except InvalidProof as exc:
        raise InvalidBlock(exc.message) from exc


def highest_leaf(tree: BlockTree) -> bytes:
    """Fork choice: the highest block; among equals, the lowest hash (deterministic)."""
    return min(tree.leaves(), key=lambda h: (-h.height, h.hash)).hash
