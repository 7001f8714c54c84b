"""Consensus engines behind ``abc.Consensus``: ``solo``, ``bft`` and ``poa``."""

from __future__ import annotations

from twinledger.abc import Consensus
from twinledger.crypto.keys import SigningKey
from twinledger.errors import ConfigError
from twinledger.ledger.genesis import Genesis


def create_consensus(genesis: Genesis, key: SigningKey | None) -> Consensus:
    if genesis.consensus == "solo":
        from twinledger.consensus.solo import SoloConsensus

        if len(genesis.validators) != 1:
            raise ConfigError("solo consensus needs exactly one validator in the genesis")
        return SoloConsensus(genesis.validators[0].key, key, genesis.block_interval_ms,
                             genesis.max_block_txs)  # fmt: skip
    if genesis.consensus == "bft":
        from twinledger.consensus.bft import BftConsensus

        return BftConsensus(genesis, key)
    if genesis.consensus == "poa":
        from twinledger.consensus.poa import PoaConsensus

        return PoaConsensus(genesis, key)
    raise ConfigError(f"unknown consensus {genesis.consensus!r} in genesis (known: solo, bft, poa)")
