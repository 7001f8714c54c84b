"""Inclusion proofs: header + Merkle path + record, verifiable offline from those bytes alone.

A proof file is JSON (``twinledger-proof/1``) whose fields hold the canonical bytes in
hex, so the verifier recomputes every hash itself and trusts nothing it is told.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twinledger.core.hashing import hash_obj
from twinledger.core.merkle import root_from_path
from twinledger.core.types import (
    AnyTransaction,
    BlockHeader,
    CommitCertificate,
    decode_certificate,
    decode_header,
    decode_transaction,
    encode_certificate,
    encode_header,
    encode_transaction,
)
from twinledger.crypto.keys import verify_signature
from twinledger.errors import DecodeError, InvalidProof

PROOF_FORMAT = "twinledger-proof/1"
VALIDATORS_TAG = "twinledger/validators/v1"


def validators_hash(validators: list[bytes]) -> bytes:
    """Commitment to a validator set (sorted public keys), carried in every header."""
    return hash_obj(VALIDATORS_TAG, sorted(validators))


@dataclass(frozen=True)
class InclusionProof:
    header: BlockHeader
    transaction: AnyTransaction
    index: int
    path: tuple[bytes, ...]
    certificate: CommitCertificate
    validators: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROOF_FORMAT,
            "header": encode_header(self.header).hex(),
            "transaction": encode_transaction(self.transaction).hex(),
            "index": self.index,
            "path": [h.hex() for h in self.path],
            "certificate": encode_certificate(self.certificate).hex(),
            "validators": [v.hex() for v in self.validators],
        }


@dataclass(frozen=True)
class VerifiedProof:
    """What a valid proof establishes."""

    tx_hash: bytes
    block_hash: bytes
    height: int
    chain_id: str
    timestamp: int
    sender: bytes
    contract: str
    method: str
    signers: tuple[bytes, ...]
    validators_hash: bytes


def parse_proof(text: str | bytes) -> InclusionProof:
    """Parse a proof file; accepts a bare proof or any JSON object with a ``proof`` member."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidProof("proof file is not JSON") from exc
    if isinstance(doc, dict) and isinstance(doc.get("proof"), dict):
        doc = doc["proof"]
    if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
        raise InvalidProof(f"not a {PROOF_FORMAT} document")
    try:
        index = doc["index"]
        if not isinstance(index, int) or isinstance(index, bool):
            raise InvalidProof("proof.index: expected an integer")
        return InclusionProof(
            header=decode_header(bytes.fromhex(doc["header"])),
            transaction=decode_transaction(bytes.fromhex(doc["transaction"])),
            index=index,
            path=tuple(bytes.fromhex(h) for h in doc["path"]),
            certificate=decode_certificate(bytes.fromhex(doc["certificate"])),
            validators=tuple(bytes.fromhex(v) for v in doc["validators"]),
        )
    except (KeyError, TypeError, ValueError, DecodeError) as exc:
        if isinstance(exc, InvalidProof):
            raise
        raise InvalidProof(f"malformed proof: {exc}") from exc


def verify_proof(proof: InclusionProof, trusted_validators_hash: bytes | None = None,
                 chain_id: str | None = None) -> VerifiedProof:  # fmt: skip
    """Check signature, Merkle path, header and commit certificate; raise InvalidProof if any fails.

    Without ``trusted_validators_hash`` the proof shows only that the record was committed
    by the validator set the proof itself names, which its maker may have invented; with
    it (and ``chain_id``, from a genesis the verifier trusts), that it was this chain's.
    """
    tx, header, cert = proof.transaction, proof.header, proof.certificate
    if chain_id is not None and header.chain_id != chain_id:
        raise InvalidProof(f"block belongs to chain {header.chain_id!r}, not the pinned {chain_id!r}")
    if tx.chain_id != header.chain_id:
        raise InvalidProof("transaction belongs to another chain than the block")
    if not verify_signature(tx.sender, tx.signing_digest, tx.signature):
        raise InvalidProof("transaction signature does not verify")
    root = root_from_path(tx.hash, proof.index, header.tx_count, proof.path)
    if root != header.tx_root:
        raise InvalidProof("Merkle path does not lead to the block's transaction root")
    if (cert.chain_id, cert.height, cert.block_hash) != (header.chain_id, header.height, header.hash):
        raise InvalidProof("commit certificate is for another block")
    if validators_hash(list(proof.validators)) != header.validators_hash:
        raise InvalidProof("validator set does not match the block header")
    if trusted_validators_hash is not None and header.validators_hash != trusted_validators_hash:
        raise InvalidProof("block was committed by an untrusted validator set")
    signers = certificate_signers(cert, proof.validators)
    if 3 * len(signers) <= 2 * len(proof.validators):
        raise InvalidProof("commit certificate has signatures of 2/3 or fewer validators")
    return VerifiedProof(tx.hash, header.hash, header.height, header.chain_id, header.timestamp,
                         tx.sender, tx.contract, tx.method, signers, header.validators_hash)  # fmt: skip


def certificate_signers(cert: CommitCertificate, validators: tuple[bytes, ...] | list[bytes]) -> tuple[bytes, ...]:
    """Distinct validators with a valid signature in ``cert``; a bad signature is an error."""
    allowed = set(validators)
    message = cert.vote_message
    signers: list[bytes] = []
    for vote in cert.signatures:
        if vote.validator not in allowed:
            raise InvalidProof("commit certificate is signed by a non-validator")
        if vote.validator in signers:
            raise InvalidProof("commit certificate counts a validator twice")
        if not verify_signature(vote.validator, message, vote.signature):
            raise InvalidProof("commit certificate signature does not verify")
        signers.append(vote.validator)
    return tuple(signers)
