"""Genesis: the chain's founding parameters, and the height-0 block derived from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinledger.core.encoding import from_obj, to_obj
from twinledger.core.hashing import ZERO_HASH, hash_obj
from twinledger.core.merkle import EMPTY_ROOT
from twinledger.core.proof import validators_hash
from twinledger.core.types import BlockHeader
from twinledger.errors import ConfigError, DecodeError

GENESIS_TAG = "twinledger/genesis/v1"


@dataclass(frozen=True)
class GenesisValidator:
    organisation: str
    key: bytes


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time: int
    consensus: str
    validators: tuple[GenesisValidator, ...]
    block_interval_ms: int
    max_block_txs: int
    timeout_propose_ms: int = 1000
    """bft: how long to wait for a proposal in round 0; each round adds timeout_delta_ms."""
    timeout_vote_ms: int = 500
    """bft: how long to wait for more votes once 2f+1 of any kind arrived."""
    timeout_delta_ms: int = 250
    authority_signatures: int = 1
    """poa: signatures of authorities a block needs."""

    @property
    def validator_keys(self) -> tuple[bytes, ...]:
        return tuple(v.key for v in self.validators)

    def header(self) -> BlockHeader:
        return BlockHeader(
            chain_id=self.chain_id,
            height=0,
            timestamp=self.genesis_time,
            previous=ZERO_HASH,
            tx_root=EMPTY_ROOT,
            tx_count=0,
            state_root=hash_obj(GENESIS_TAG, to_obj(self)),
            validators_hash=validators_hash(list(self.validator_keys)),
            proposer=ZERO_HASH,
        )

    def to_json(self) -> dict[str, Any]:
        doc = to_obj(self)
        doc["validators"] = [{"organisation": v.organisation, "key": v.key.hex()} for v in self.validators]
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Genesis:
        try:
            doc = dict(doc)
            doc["validators"] = [{"organisation": v["organisation"], "key": bytes.fromhex(v["key"])}
                                 for v in doc["validators"]]  # fmt: skip
            genesis = from_obj(cls, doc, "genesis")
        except (TypeError, KeyError, ValueError, DecodeError) as exc:
            raise ConfigError(f"genesis is malformed: {exc}") from exc
        if not genesis.validators or any(len(v.key) != 32 for v in genesis.validators):
            raise ConfigError("genesis must name validators with 32-byte Ed25519 keys")
        if genesis.block_interval_ms < 0 or genesis.max_block_txs < 1:
            raise ConfigError("genesis: block_interval_ms must be >= 0 and max_block_txs >= 1")
        if min(genesis.timeout_propose_ms, genesis.timeout_vote_ms, genesis.timeout_delta_ms) < 1:
            raise ConfigError("genesis: consensus timeouts must be at least 1 ms")
        if not 1 <= genesis.authority_signatures <= len(genesis.validators):
            raise ConfigError("genesis: authority_signatures must be between 1 and the number of validators")
        return genesis

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Genesis:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read genesis {path}: {exc}") from exc
