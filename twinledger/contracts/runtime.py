"""The contract runtime: a deterministic state machine over the ledger's key-value state.

``state_transition(state, tx, header)`` applies one transaction; ``ContractRuntime``
implements ``abc.Application`` by applying a block's transactions in order. A contract
is a set of named methods, each a pair of plain functions: ``parse`` validates the
arguments (raising before anything changes) and ``apply`` changes state through a
``Call``. Nothing here reads clocks, randomness or the network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twinledger.abc import Application, BlockResult, StateReader, StateValue
from twinledger.core.encoding import encode
from twinledger.core.hashing import hash_obj
from twinledger.core.types import BlockHeader, Event, Receipt, Transaction
from twinledger.errors import ContractError, DecodeError, InvalidTransaction
from twinledger.ledger.genesis import Genesis

STATE_TAG = "twinledger/state/v1"


class Overlay(StateReader):
    """Writes buffered over a base state; ``commit`` pushes them down one level."""

    def __init__(self, base: StateReader) -> None:
        self.base = base
        self.writes: dict[str, StateValue] = {}

    def get(self, key: str) -> StateValue:
        if key in self.writes:
            return self.writes[key]
        value = self.base.get(key)
        # A contract may change what it read before it sets it back; a copy keeps that from
        # reaching the state below (a cached head, a dry run), where it would make this
        # node's next execution differ from every other node's.
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def set(self, key: str, value: StateValue) -> None:
        self.writes[key] = value

    def commit_into(self, target: Overlay) -> None:
        target.writes.update(self.writes)


@dataclass
class Call:
    """What a contract method sees: the transaction, the block, and state to change."""

    tx: Transaction
    header: BlockHeader
    state: Overlay
    contract: str
    events: list[Event] = field(default_factory=list)

    @property
    def sender(self) -> bytes:
        return self.tx.sender

    def emit(self, event_type: str, **data: Any) -> None:
        self.events.append(Event(self.contract, event_type, data))


@dataclass(frozen=True)
class Method:
    parse: Callable[[Mapping[str, Any]], Any]
    apply: Callable[[Call, Any], None]


@dataclass(frozen=True)
class Contract:
    name: str
    methods: Mapping[str, Method]
    genesis: Callable[[Genesis], Mapping[str, StateValue]] | None = None
    """The contract's initial state, derived from the genesis."""
    begin_block: Callable[[Overlay, BlockHeader], None] | None = None
    """What the contract does at every block before its transactions, from the header
    alone (grants whose end has passed are ended). It must not fail."""


def nonce_key(sender: bytes) -> str:
    return f"nonce/{sender.hex()}"


def committed_nonce(state: StateReader, sender: bytes) -> int:
    """The sender's last used nonce, or -1 if it never sent a transaction."""
    value = state.get(nonce_key(sender))
    return -1 if value is None else value


CONTRACT_BUGS = (TypeError, ValueError, KeyError, IndexError, AttributeError, AssertionError, OverflowError,
                 ZeroDivisionError)  # fmt: skip
"""Errors a contract raises the same way on every node for the same input. Anything else —
a store that cannot be read, memory, recursion — is this node's trouble: it propagates and
the node stops rather than commit a result the others would not."""


def encode_writes(writes: Mapping[str, StateValue]) -> dict[str, bytes | None]:
    """The write set in key order, each value encoded once for both the root and the store."""
    return {key: None if writes[key] is None else encode(writes[key]) for key in sorted(writes)}


def state_root(parent_root: bytes, encoded_writes: Mapping[str, bytes | None], receipts: tuple[Receipt, ...]) -> bytes:
    """Chains the parent's root with this block's sorted write set and receipts: a replay
    that diverges anywhere yields another root. Hashes the encodings the store keeps."""
    return hash_obj(
        STATE_TAG,
        {
            "parent": parent_root,
            "writes": [[key, value] for key, value in encoded_writes.items()],
            "receipts": [receipt.encoded for receipt in receipts],
        },
    )


def parse(method: Method, tx: Transaction) -> Any:
    """The method's arguments, parsed; arguments a parser did not foresee (a list where it
    expects a name) are refused like any malformed ones, on every node alike, and never
    stop a node or its consensus."""
    try:
        return method.parse(tx.args)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise InvalidTransaction(f"{tx.contract}.{tx.method}: malformed arguments ({type(exc).__name__})",
                                 code="bad_arguments") from None  # fmt: skip


SenderCheck = Callable[[StateReader, Transaction], None]
"""Raises a named error if the sender may not send this transaction at all."""


class ContractRuntime(Application):
    def __init__(self, contracts: list[Contract], sender_check: SenderCheck | None = None) -> None:
        self.contracts = {c.name: c for c in contracts}
        self.sender_check = sender_check

    def method(self, tx: Transaction) -> Method:
        contract = self.contracts.get(tx.contract)
        if contract is None:
            raise InvalidTransaction(f"unknown contract {tx.contract!r}", code="unknown_contract")
        method = contract.methods.get(tx.method)
        if method is None:
            raise InvalidTransaction(f"contract {tx.contract!r} has no method {tx.method!r}",
                                     code="unknown_method")  # fmt: skip
        return method

    def genesis_result(self, genesis: Genesis) -> BlockResult:
        writes: dict[str, StateValue] = {}
        for contract in self.contracts.values():
            if contract.genesis is not None:
                writes.update(contract.genesis(genesis))
        return BlockResult(writes, (), genesis.header().state_root, encode_writes(writes))

    def check_transaction(self, state: StateReader, tx: Transaction) -> None:
        parse(self.method(tx), tx)
        if self.sender_check is not None:
            self.sender_check(state, tx)
        last = committed_nonce(state, tx.sender)
        if tx.nonce <= last:
            raise InvalidTransaction(f"nonce {tx.nonce} was already used (last committed nonce is {last})",
                                     code="nonce_replayed")  # fmt: skip

    def state_transition(self, state: Overlay, tx: Transaction, header: BlockHeader) -> Receipt:
        """Apply one transaction; a failure yields a ``failed`` receipt and no state change
        beyond the consumed nonce (if the nonce itself was fresh)."""
        if tx.nonce <= committed_nonce(state, tx.sender):
            return Receipt(tx.hash, "failed", "nonce_replayed", message=f"nonce {tx.nonce} was already used")
        state.set(nonce_key(tx.sender), tx.nonce)
        call = Call(tx, header, Overlay(state), tx.contract)
        try:
            method = self.method(tx)
            parsed = parse(method, tx)
            if self.sender_check is not None:
                self.sender_check(call.state, tx)
            method.apply(call, parsed)
            encode_writes(call.state.writes)  # a value the ledger cannot encode fails here, not the block
        except (ContractError, InvalidTransaction, DecodeError) as exc:
            return Receipt(tx.hash, "failed", exc.code, message=exc.message)
        except CONTRACT_BUGS as exc:  # a contract bug fails its transaction, not the block
            return Receipt(tx.hash, "failed", "internal_error", message=f"the contract failed ({type(exc).__name__})")
        call.state.commit_into(state)
        return Receipt(tx.hash, "ok", "", tuple(call.events))

    def execute_block(self, state: StateReader, header: BlockHeader,
                      transactions: tuple[Transaction, ...], parent_state_root: bytes) -> BlockResult:  # fmt: skip
        block_state = Overlay(state)
        for contract in self.contracts.values():
            if contract.begin_block is not None:
                contract.begin_block(block_state, header)
        receipts = tuple(self.state_transition(block_state, tx, header) for tx in transactions)
        encoded = encode_writes(block_state.writes)
        return BlockResult(block_state.writes, receipts, state_root(parent_state_root, encoded, receipts), encoded)
