"""Offline checks of inclusion proofs against what the verifier trusts: a genesis (its
chain id and validator set) or a validator-set hash. A proof checked against nothing
shows only that validators it names itself signed it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twinledger.core.proof import InclusionProof, VerifiedProof, parse_proof, validators_hash, verify_proof
from twinledger.errors import InvalidProof
from twinledger.ledger.genesis import Genesis


@dataclass(frozen=True)
class Pin:
    """What a proof must come from."""

    validators_hash: bytes
    chain_id: str | None = None

    @classmethod
    def of(cls, genesis: Genesis) -> Pin:
        return cls(validators_hash(list(genesis.validator_keys)), genesis.chain_id)

    def describe(self) -> str:
        chain = f"chain {self.chain_id!r}, " if self.chain_id is not None else ""
        return f"{chain}validator set {self.validators_hash.hex()[:16]}…"


@dataclass(frozen=True)
class ProofCheck:
    verified: VerifiedProof
    pin: Pin | None
    """What the proof was checked against; None: nothing (the proof vouches for itself)."""


def check(proof: InclusionProof, pin: Pin | None) -> VerifiedProof:
    if pin is None:
        return verify_proof(proof)
    return verify_proof(proof, pin.validators_hash, pin.chain_id)


def check_file(path: Path, genesis: Path | None = None, trusted_validators: str | None = None) -> ProofCheck:
    """Read and check a proof file, pinned to ``genesis`` or ``trusted_validators`` (hex)."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidProof(f"cannot read {path}: {exc.strerror}") from None
    pin: Pin | None = None
    if genesis is not None:
        pin = Pin.of(Genesis.read(genesis))
    if trusted_validators is not None:
        try:
            trusted = bytes.fromhex(trusted_validators)
        except ValueError:
            raise InvalidProof("--trusted-validators: expected a hex validator-set hash") from None
        if pin is not None and pin.validators_hash != trusted:
            raise InvalidProof("--trusted-validators names another validator set than the genesis")
        pin = Pin(trusted, pin.chain_id if pin is not None else None)
    return ProofCheck(check(parse_proof(text), pin), pin)
