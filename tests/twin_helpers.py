"""A consortium in memory for contract tests: genesis members with keys, and a runtime
that executes one transaction per block, as a node would, without processes.

A twin's specification lives off chain; here ``World`` plays the client's part for it,
as the service layer does: ``twins.create`` / ``insert_aml`` / ``remove_aml`` written
with the document (``aml=``, ``fragment=``, an element to remove) are turned into what
the contract takes — the new version's hashes and its model delta, staged in parts when
large — from the documents the world keeps. An edit the client refuses (invalid AML, an
unknown element) comes back as a failed receipt without a transaction, as the CLI would
print it without sending one."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

from twinledger import aml
from twinledger.aml import AmlError
from twinledger.contracts import default_runtime
from twinledger.contracts.modeldelta import encode_delta
from twinledger.contracts.runtime import Overlay
from twinledger.contracts.twinmodel import MODEL_KINDS
from twinledger.core.types import BlockHeader, Receipt, Transaction, sign_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.ledger.genesis import Genesis, GenesisOrganisation, GenesisValidator
from twinledger.ledger.verify import MemoryState
from twinledger.services.specification import stage_parts

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
        self.documents: dict[str, list[bytes]] = {}
        self._pending: dict[bytes, bytes] = {}

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
        if contract == "twins" and method in ("create", "insert_aml", "remove_aml"):
            try:
                args = self._as_client(signer, method, dict(args))
            except AmlError as exc:
                return Receipt(b"", "failed", exc.code, message=exc.message)
        receipt = self.run(self.tx(signer, contract, method, args))
        if receipt.status == "ok" and "hash" in args and method in ("create", "insert_aml", "remove_aml"):
            created = [e.data["twin"] for e in receipt.events if e.type == "TwinCreated"]
            forged = b""  # a version a test wrote by hand, with no document behind it
            self.documents.setdefault(created[0] if created else args["twin"], []).append(self._pending.get(args["hash"], forged))
        return receipt

    def document(self, twin: str, version: int | None = None) -> bytes:
        """A version of the twin's specification (default: the current one): its stored form."""
        versions = self.documents[twin]
        return versions[(version or len(versions)) - 1]

    def _as_client(self, signer: SigningKey, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if "hash" in args:  # already what the contract takes
            return args
        if method == "create":
            document = args.pop("aml")
            return {**args, **self._version(signer, aml.stored_form(document), None)}
        if args.get("twin") not in self.documents:
            raise AmlError(f"no twin {args.get('twin')!r}", code="unknown_twin")
        current = self.document(args["twin"])
        if method == "insert_aml":
            fragment = args.pop("fragment")
            edit = aml.insert(current, fragment, args["parent"], args.get("after"))
            return {**args, "element": edit.element, **self._version(signer, edit.specification, args["twin"])}
        policy = args.pop("links", "refuse")
        edit = aml.remove(current, args["element"], policy)
        links = [[text, list(holder)] for text, holder in zip(edit.links, edit.link_holders, strict=True)]
        return {**args, "links": links, **self._version(signer, edit.specification, args["twin"])}

    def model_on_chain(self, twin: str) -> dict[str, Any]:
        """The twin's model entries as the chain holds them (what ``GET …/model`` serves)."""
        prefix = f"twin/{twin}/"
        kinds = tuple(f"{kind}/" for kind in MODEL_KINDS)
        return {k[len(prefix):]: v for k, v in self.contract_state().items()
                if k.startswith(prefix) and k[len(prefix):].startswith(kinds)}  # fmt: skip

    def _version(self, signer: SigningKey, new: bytes, twin: str | None) -> dict[str, Any]:
        """What a version is on chain, made from the twin's current one (``twin``; None for
        a creation); a delta too large for one transaction staged first."""
        digest = hashlib.sha256(new).digest()
        delta = encode_delta(self.model_on_chain(twin) if twin is not None else {}, aml.model(new))
        version: dict[str, Any] = {"hash": digest, "manifest": hashlib.sha256(b"manifest" + new).digest(),
                                   "reference": f"store:{digest.hex()[:32]}", "size": len(new)}  # fmt: skip
        if twin is not None:
            version["base"] = self.get(f"twin/{twin}")["aml_hash"]
        parts = stage_parts(delta)
        if not parts:
            version["model"] = delta
        else:
            staged = hashlib.sha256(delta).digest()
            for number, part in enumerate(parts):
                self.ok(signer, "twins", "stage", digest=staged, part=number, parts=len(parts), data=part)
            version["staged"] = staged
        self._pending[digest] = new
        return version

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
