"""Genesis: the chain's founding parameters, and the height-0 block derived from them.

Besides consensus parameters, a genesis names the founding members (organisations with
their operator keys and nodes) and the consortium administrators; the membership
contract starts from them (contracts/membership.py)."""

from __future__ import annotations

import dataclasses
import json
import typing
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
class GenesisNode:
    name: str
    signing_key: bytes
    encryption_key: bytes
    roles: tuple[str, ...]
    api: str
    p2p: str
    """host:port peers dial, or "" for a node without a peer-to-peer listener."""
    storage: str = ""
    """host:port of a store node's store listener, or ""."""


@dataclass(frozen=True)
class GenesisOrganisation:
    name: str
    operators: tuple[bytes, ...]
    """Ed25519 keys that act for the organisation (people, the CLI)."""
    nodes: tuple[GenesisNode, ...]
    kpcpre_key: bytes = b""
    """The organisation's KP-CPRE public key (sharing), or empty."""


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
    organisations: tuple[GenesisOrganisation, ...] = ()
    admins: tuple[bytes, ...] = ()
    """Consortium administrators: each may change membership alone."""
    membership_quorum: int = 0
    """Organisations whose approval changes membership without an administrator (0: a majority)."""
    store_replication: int = 3
    """Copies the off-chain store keeps of every chunk."""
    store_write_quorum: int = 2
    """Copies that must be durable before a store write is acknowledged."""

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
        return _hex_bytes(to_obj(self))

    @classmethod
    def from_json(cls, doc: Any) -> Genesis:
        try:
            genesis = from_obj(cls, _unhex(cls, dict(doc)), "genesis")
        except (TypeError, KeyError, ValueError, AttributeError, DecodeError) as exc:
            raise ConfigError(f"genesis is malformed: {exc}") from exc
        if not genesis.validators or any(len(v.key) != 32 for v in genesis.validators):
            raise ConfigError("genesis must name validators with 32-byte Ed25519 keys")
        if len(set(genesis.validator_keys)) != len(genesis.validators):
            raise ConfigError("genesis names a validator key twice (one key would count as two votes)")
        if genesis.block_interval_ms < 0 or genesis.max_block_txs < 1:
            raise ConfigError("genesis: block_interval_ms must be >= 0 and max_block_txs >= 1")
        if min(genesis.timeout_propose_ms, genesis.timeout_vote_ms, genesis.timeout_delta_ms) < 1:
            raise ConfigError("genesis: consensus timeouts must be at least 1 ms")
        if not 1 <= genesis.authority_signatures <= len(genesis.validators):
            raise ConfigError("genesis: authority_signatures must be between 1 and the number of validators")
        names = [org.name for org in genesis.organisations]
        if len(set(names)) != len(names):
            raise ConfigError("genesis: an organisation is named twice")
        keys = [k for org in genesis.organisations for k in (*org.operators, *(n.signing_key for n in org.nodes))]
        if len(set(keys)) != len(keys) or any(len(k) != 32 for k in (*keys, *genesis.admins)):
            raise ConfigError("genesis: member keys must be distinct 32-byte Ed25519 keys")
        if not 0 <= genesis.membership_quorum <= max(len(names), 1):
            raise ConfigError("genesis: membership_quorum must be between 0 and the number of organisations")
        if not 1 <= genesis.store_write_quorum <= genesis.store_replication:
            raise ConfigError("genesis: store_write_quorum must be between 1 and store_replication")
        return genesis

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Genesis:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read genesis {path}: {exc}") from exc


def _hex_bytes(value: Any) -> Any:
    """JSON has no bytes: write them as hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_hex_bytes(v) for v in value]
    if isinstance(value, dict):
        return {k: _hex_bytes(v) for k, v in value.items()}
    return value


def _unhex(hint: Any, value: Any) -> Any:
    """The inverse of ``_hex_bytes``, guided by the dataclass's field types."""
    if hint is bytes:
        return bytes.fromhex(value)
    if typing.get_origin(hint) is tuple:
        return [_unhex(typing.get_args(hint)[0], v) for v in value]
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        hints = typing.get_type_hints(hint)
        return {k: _unhex(hints[k], v) if k in hints else v for k, v in value.items()}
    return value
