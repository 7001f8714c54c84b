"""Building blocks for ledger tests: a genesis, a solo chain over a given store, signed calls."""

from __future__ import annotations

import itertools
import os

from twinledger.consensus.solo import SoloConsensus
from twinledger.contracts import default_runtime
from twinledger.core.types import Transaction, sign_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.ledger.chain import Chain, KeepFilter, keep_all
from twinledger.ledger.genesis import Genesis, GenesisValidator

VALIDATOR = SigningKey(bytes([7]) * 32)
USER = SigningKey(bytes([9]) * 32)
GENESIS = Genesis("test-chain", 1_700_000_000_000, "solo", (GenesisValidator("acme", VALIDATOR.public),), 0, 1000)
_nonces = itertools.count()


def new_chain(store, keep: KeepFilter = keep_all, key: SigningKey | None = VALIDATOR) -> Chain:
    return Chain(store, default_runtime(), SoloConsensus(VALIDATOR.public, key), GENESIS, keep)


def record(nonce: int | None = None, key: SigningKey = USER, payload: bytes | None = None) -> Transaction:
    return sign_transaction(key, chain_id=GENESIS.chain_id, nonce=next(_nonces) if nonce is None else nonce,
                            contract="records", method="put",
                            args={"payload": payload or os.urandom(16)}, timestamp=GENESIS.genesis_time + 1)  # fmt: skip


def produce(chain: Chain, txs: list[Transaction], timestamp: int | None = None):
    """Build, certify and commit a block on ``chain`` (as the solo validator would)."""
    block, result = chain.build_block(txs, VALIDATOR.public, timestamp or chain.head.timestamp + 1000)
    cert = chain.consensus.certify(block)
    chain.commit(block, cert, result)
    return block, cert
