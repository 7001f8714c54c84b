"""Offline checks of inclusion proofs against what the verifier trusts: a genesis (its
chain id and validator set) or a validator-set hash. A proof checked against nothing
shows only that validators it names itself signed it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinledger.core.proof import PROOF_FORMAT, InclusionProof, VerifiedProof, parse_proof, validators_hash, verify_proof
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


AUDIT_FORMAT = "twinledger-audit/1"
"""A twin's audit with the proof of every entry (``twin audit --out``)."""


class UnreadableProof(InvalidProof):
    """The file is missing, not JSON, or neither a proof nor an audit: nothing was checked."""

    code = "unreadable_proof"


@dataclass(frozen=True)
class ProofCheck:
    verified: tuple[VerifiedProof, ...]
    """One proof, or every entry's of an audit, in order."""
    pin: Pin | None
    """What the proofs were checked against; None: nothing (each vouches for itself)."""
    twin: str | None = None
    """The audited twin, for an audit."""


def check(proof: InclusionProof, pin: Pin | None) -> VerifiedProof:
    if pin is None:
        return verify_proof(proof)
    return verify_proof(proof, pin.validators_hash, pin.chain_id)


def audit_document(twin: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``twin audit --out`` writes and ``verify proof`` checks."""
    return {"format": AUDIT_FORMAT, "twin": twin, "entries": entries}


def check_file(path: Path, genesis: Path | None = None, trusted_validators: str | None = None) -> ProofCheck:
    """Read and check a proof or an audit file, pinned to ``genesis`` or
    ``trusted_validators`` (hex): UnreadableProof if there is nothing to check,
    InvalidProof if something does not verify."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise UnreadableProof(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise UnreadableProof(f"{path} is not JSON") from None
    pin = _pin(genesis, trusted_validators)
    if isinstance(document, dict) and document.get("format") == AUDIT_FORMAT:
        return _check_audit(document, pin)
    inner = document.get("proof") if isinstance(document, dict) else None
    if not isinstance(document, dict) or PROOF_FORMAT not in (document.get("format"),
                                                              inner.get("format") if isinstance(inner, dict) else None):
        raise UnreadableProof(f"{path} is neither a {PROOF_FORMAT} nor a {AUDIT_FORMAT} document")
    return ProofCheck((check(parse_proof(json.dumps(document)), pin),), pin)


def _check_audit(document: dict[str, Any], pin: Pin | None) -> ProofCheck:
    entries = document.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UnreadableProof(f"the {AUDIT_FORMAT} document has no list of entries")
    verified = []
    for number, entry in enumerate(entries, start=1):
        try:
            proof = check(parse_proof(json.dumps(entry.get("proof"))), pin)
        except InvalidProof as exc:
            raise InvalidProof(f"entry {number}: {exc.message}") from None
        if proof.tx_hash.hex() != entry.get("tx"):
            raise InvalidProof(f"entry {number}: the proof is of transaction {proof.tx_hash.hex()[:16]}…, not of the "
                               f"entry's {str(entry.get('tx'))[:16]}…")  # fmt: skip
        verified.append(proof)
    return ProofCheck(tuple(verified), pin, str(document.get("twin")))


def _pin(genesis: Path | None, trusted_validators: str | None) -> Pin | None:
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
    return pin
