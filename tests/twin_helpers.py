"""A consortium in memory for contract tests: genesis members with keys, and a runtime
that executes one transaction per block, as a node would, without processes."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

from twinledger.contracts import default_runtime
from twinledger.contracts.runtime import Overlay
from twinledger.core.types import BlockHeader, Receipt, Transaction, sign_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.ledger.genesis import Genesis, GenesisOrganisation, GenesisValidator
from twinledger.ledger.verify import MemoryState

PLANT = (Path(__file__).parent.parent / "examples" / "bottling-plant.aml").read_bytes()
PROGRAMS = {"SetVelocity": "BottlingPlant/BottlingLine1/Conveyor/SetVelocity",
            "SetDirection": "BottlingPlant/BottlingLine1/Conveyor/SetDirection",
            "SetFillVolume": "BottlingPlant/BottlingLine1/Filler/SetFillVolume"}  # fmt: skip
"""The example plant's programs by their full paths, which transactions name them by."""
ORGANISATIONS = ("plant-owner", "maintenance-co", "maker", "audit-co", "distributor-co", "analytics-co", "outsider")


def key_for(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(name.encode()).digest())


ADMIN = key_for("consortium-admin")
VALIDATOR = key_for("validator")


def genesis(organisations: tuple[str, ...] = ORGANISATIONS, admins: tuple[bytes, ...] = (ADMIN.public,),
            quorum: int = 0) -> Genesis:  # fmt: skip
    return Genesis(
        "twin-test", 1_700_000_000_000, "solo", (GenesisValidator(organisations[0], VALIDATOR.public),), 0, 1000,
        organisations=tuple(GenesisOrganisation(org, (key_for(org).public,), ()) for org in organisations),
        admins=admins, membership_quorum=quorum,
    )  # fmt: skip


class World:
    def __init__(self, start: Genesis | None = None) -> None:
        self.genesis = start or genesis()
        self.runtime = default_runtime()
        result = self.runtime.genesis_result(self.genesis)
        self.state = MemoryState()
        self.state.values.update(result.writes)
        self.root = result.state_root
        self.height = 0
        self.nonces = itertools.count()
        self.transactions: list[Transaction] = []

    def tx(self, key: SigningKey, contract: str, method: str, args: dict[str, Any]) -> Transaction:
        return sign_transaction(key, chain_id=self.genesis.chain_id, nonce=next(self.nonces), contract=contract,
                                method=method, args=args, timestamp=self.genesis.genesis_time)  # fmt: skip

    def header(self, height: int) -> BlockHeader:
        return BlockHeader(self.genesis.chain_id, height, self.genesis.genesis_time + 1000 * height, bytes(32),
                           bytes(32), 1, bytes(32), bytes(32), VALIDATOR.public)  # fmt: skip

    def run(self, tx: Transaction) -> Receipt:
        self.height += 1
        header = self.header(self.height)
        result = self.runtime.execute_block(self.state, header, (tx,), self.root)
        self.state.values.update(result.writes)
        self.root = result.state_root
        self.transactions.append(tx)
        return result.receipts[0]

    def call(self, signer: SigningKey, contract: str, method: str, /, **args: Any) -> Receipt:
        return self.run(self.tx(signer, contract, method, args))

    def ok(self, signer: SigningKey, contract: str, method: str, /, **args: Any) -> Receipt:
        receipt = self.call(signer, contract, method, **args)
        assert receipt.status == "ok", f"{contract}.{method}: {receipt.error}: {receipt.message}"
        return receipt

    def fails(self, code: str, signer: SigningKey, contract: str, method: str, /, **args: Any) -> Receipt:
        """Assert the call fails with ``code`` and changes nothing but the sender's nonce
        (beyond what the block's own begin-of-block work changes: grants ending)."""
        preview = Overlay(self.state)
        for contract_ in self.runtime.contracts.values():
            if contract_.begin_block is not None:
                contract_.begin_block(preview, self.header(self.height + 1))
        before = {k: v for k, v in {**self.contract_state(), **preview.writes}.items() if v is not None}
        receipt = self.call(signer, contract, method, **args)
        assert (receipt.status, receipt.error) == ("failed", code), receipt
        assert receipt.message
        assert self.contract_state() == before
        return receipt

    def contract_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.state.values.items() if not k.startswith("nonce/") and v is not None}

    def get(self, key: str) -> Any:
        return self.state.get(key)

    def create_twin(self, owner: str = "plant-owner", *, aml: bytes = PLANT, device_id: str = "plant-7",
                    **extra: Any) -> str:  # fmt: skip
        receipt = self.ok(key_for(owner), "twins", "create", name="Bottling plant 7", device_id=device_id, aml=aml,
                          **extra)  # fmt: skip
        (event,) = [e for e in receipt.events if e.type == "TwinCreated"]
        return event.data["twin"]
