"""The ledger's data: transactions (full and stripped), blocks, commit certificates, receipts.

All are frozen dataclasses; their canonical map form is given by their fields
(``encoding.to_obj`` / ``encoding.from_obj``). Hashes:

- ``args_hash``  = H("twinledger/args/v1", encode(args))
- signed message = H("twinledger/tx-sign/v1", encode(tx without args, with args_hash))
- ``tx.hash``    = H("twinledger/tx/v1", signed message || signature); identical for a
  full transaction and its stripped form, so stripped blocks keep their Merkle roots.
- ``header.hash``= H("twinledger/header/v1", encode(header))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from twinledger.core.encoding import decode, encode, from_obj, to_obj
from twinledger.core.hashing import HASH_SIZE, hash_obj, tagged_hash
from twinledger.crypto.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, SigningKey
from twinledger.errors import DecodeError

MAX_TX_BYTES = 64 * 1024
MAX_NAME_LENGTH = 64
MAX_BLOCK_BYTES = 64 * 1024 * 1024
MAX_BLOCK_TX_BYTES = 32 * 1024 * 1024
"""What a block's transactions may add up to, encoded: a block stays well inside a proposal
or sync frame (MAX_BLOCK_BYTES and a margin). Counting transactions alone let a valid block
of 1,100 large transactions outgrow every frame."""
PREFERRED_BLOCK_TX_BYTES = 4 * 1024 * 1024
"""What a proposer puts in a block (Fabric's PreferredMaxBytes): a large block takes long to
gossip and execute on every validator, and rounds time out."""

TX_TAG = "twinledger/tx/v1"
TX_SIGN_TAG = "twinledger/tx-sign/v1"
ARGS_TAG = "twinledger/args/v1"
HEADER_TAG = "twinledger/header/v1"
VOTE_TAG = "twinledger/precommit/v1"


def args_hash(args: dict[str, Any]) -> bytes:
    return hash_obj(ARGS_TAG, args)


@dataclass(frozen=True)
class StrippedTransaction:
    """A transaction whose arguments were dropped; its signature still verifies."""

    chain_id: str
    sender: bytes
    nonce: int
    contract: str
    method: str
    args_hash: bytes
    timestamp: int
    signature: bytes

    @cached_property
    def hash(self) -> bytes:
        return tagged_hash(TX_TAG, self.signing_digest, self.signature)

    @cached_property
    def signing_digest(self) -> bytes:
        return signing_digest(self.chain_id, self.sender, self.nonce, self.contract,
                              self.method, self.args_hash, self.timestamp)  # fmt: skip

    @cached_property
    def encoded(self) -> bytes:
        return encode(to_obj(self))

    @property
    def stripped(self) -> bool:
        return True

    def strip(self) -> StrippedTransaction:
        return self


@dataclass(frozen=True)
class Transaction:
    """A signed call of ``contract.method(args)`` by ``sender`` (an Ed25519 public key).

    ``args`` is treated as immutable; ``nonce`` must exceed the sender's last committed
    nonce (replay protection); ``timestamp`` is milliseconds since the Unix epoch.
    """

    chain_id: str
    sender: bytes
    nonce: int
    contract: str
    method: str
    args: dict[str, Any]
    timestamp: int
    signature: bytes

    @cached_property
    def args_hash(self) -> bytes:
        return args_hash(self.args)

    @cached_property
    def hash(self) -> bytes:
        return tagged_hash(TX_TAG, self.signing_digest, self.signature)

    @cached_property
    def signing_digest(self) -> bytes:
        return signing_digest(self.chain_id, self.sender, self.nonce, self.contract,
                              self.method, self.args_hash, self.timestamp)  # fmt: skip

    @cached_property
    def encoded(self) -> bytes:
        return encode(to_obj(self))

    @property
    def stripped(self) -> bool:
        return False

    def strip(self) -> StrippedTransaction:
        return StrippedTransaction(self.chain_id, self.sender, self.nonce, self.contract,
                                   self.method, self.args_hash, self.timestamp, self.signature)  # fmt: skip


AnyTransaction = Transaction | StrippedTransaction


def signing_digest(chain_id: str, sender: bytes, nonce: int, contract: str, method: str,
                   args_digest: bytes, timestamp: int) -> bytes:  # fmt: skip
    return hash_obj(
        TX_SIGN_TAG,
        {
            "chain_id": chain_id,
            "sender": sender,
            "nonce": nonce,
            "contract": contract,
            "method": method,
            "args_hash": args_digest,
            "timestamp": timestamp,
        },
    )


MAX_COMMIT_WAIT_SECONDS = 60.0
"""The longest a node waits for a transaction's commit in one API request."""


def resigned(key: SigningKey, tx: Transaction, nonce: int | None = None) -> Transaction:
    """The same call signed again now, with the same nonce unless ``nonce`` is given: for
    a transaction too old to be admitted, so that at most one of the two can commit."""
    return sign_transaction(key, chain_id=tx.chain_id, nonce=tx.nonce if nonce is None else nonce, contract=tx.contract,
                            method=tx.method, args=tx.args, timestamp=int(time.time() * 1000))  # fmt: skip


def sign_transaction(key: SigningKey, *, chain_id: str, nonce: int, contract: str, method: str,
                     args: dict[str, Any], timestamp: int) -> Transaction:  # fmt: skip
    digest = signing_digest(chain_id, key.public, nonce, contract, method, args_hash(args), timestamp)
    return Transaction(chain_id, key.public, nonce, contract, method, args, timestamp,
                       key.sign(digest))  # fmt: skip


def encode_transaction(tx: AnyTransaction) -> bytes:
    return tx.encoded


def decode_transaction(data: bytes) -> AnyTransaction:
    """Decode a full or stripped transaction and check field shapes and sizes."""
    obj = decode(data, max_size=MAX_TX_BYTES)
    tx = transaction_from_obj(obj)
    tx.__dict__["encoded"] = bytes(data)  # canonical, so it is exactly the encoding
    return tx


def transaction_from_obj(obj: Any) -> AnyTransaction:
    if not isinstance(obj, dict):
        raise DecodeError("transaction: expected a map")
    tx: AnyTransaction
    if "args" in obj:
        tx = from_obj(Transaction, obj, "transaction")
    else:
        tx = from_obj(StrippedTransaction, obj, "stripped transaction")
        if len(tx.args_hash) != HASH_SIZE:
            raise DecodeError("transaction.args_hash: expected 32 bytes")
    if len(tx.sender) != PUBLIC_KEY_SIZE:
        raise DecodeError("transaction.sender: expected a 32-byte Ed25519 public key")
    if len(tx.signature) != SIGNATURE_SIZE:
        raise DecodeError("transaction.signature: expected 64 bytes")
    for name in ("chain_id", "contract", "method"):
        value = getattr(tx, name)
        if not 0 < len(value) <= MAX_NAME_LENGTH:
            raise DecodeError(f"transaction.{name}: expected 1 to {MAX_NAME_LENGTH} characters")
    if tx.nonce < 0 or tx.timestamp < 0:
        raise DecodeError("transaction: nonce and timestamp must not be negative")
    return tx


@dataclass(frozen=True)
class BlockHeader:
    chain_id: str
    height: int
    timestamp: int
    previous: bytes
    tx_root: bytes
    tx_count: int
    state_root: bytes
    validators_hash: bytes
    proposer: bytes

    @cached_property
    def hash(self) -> bytes:
        return hash_obj(HEADER_TAG, to_obj(self))


def encode_header(header: BlockHeader) -> bytes:
    return encode(to_obj(header))


def decode_header(data: bytes) -> BlockHeader:
    header = from_obj(BlockHeader, decode(data, max_size=4096), "header")
    for name in ("previous", "tx_root", "state_root", "validators_hash"):
        if len(getattr(header, name)) != HASH_SIZE:
            raise DecodeError(f"header.{name}: expected 32 bytes")
    if len(header.proposer) != PUBLIC_KEY_SIZE:
        raise DecodeError("header.proposer: expected a 32-byte public key")
    return header


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    transactions: tuple[AnyTransaction, ...]

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height


def encode_block(block: Block) -> bytes:
    return encode({"header": to_obj(block.header),
                   "transactions": [to_obj(tx) for tx in block.transactions]})  # fmt: skip


def decode_block(data: bytes) -> Block:
    obj = decode(data, max_size=MAX_BLOCK_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"header", "transactions"}:
        raise DecodeError("block: expected a map of header and transactions")
    header = decode_header(encode(obj["header"]))
    if not isinstance(obj["transactions"], list):
        raise DecodeError("block.transactions: expected an array")
    return Block(header, tuple(transaction_from_obj(tx) for tx in obj["transactions"]))


@dataclass(frozen=True)
class VoteSignature:
    validator: bytes
    signature: bytes


@dataclass(frozen=True)
class CommitCertificate:
    """Signatures of validators on (chain id, height, round, block hash)."""

    chain_id: str
    height: int
    round: int
    block_hash: bytes
    signatures: tuple[VoteSignature, ...]

    @property
    def vote_message(self) -> bytes:
        return vote_message(self.chain_id, self.height, self.round, self.block_hash)


def vote_message(chain_id: str, height: int, round_: int, block_hash: bytes) -> bytes:
    return hash_obj(VOTE_TAG, {"chain_id": chain_id, "height": height, "round": round_,
                               "block_hash": block_hash})  # fmt: skip


def encode_certificate(cert: CommitCertificate) -> bytes:
    return encode(to_obj(cert))


def decode_certificate(data: bytes) -> CommitCertificate:
    return from_obj(CommitCertificate, decode(data, max_size=1 << 20), "certificate")


@dataclass(frozen=True)
class Event:
    """A typed event emitted by a contract, for clients that follow the ledger."""

    contract: str
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Receipt:
    """The outcome of one transaction: ``ok`` with its events, or ``failed`` with an error
    code and the message that says what was wrong."""

    tx_hash: bytes
    status: str
    error: str
    events: tuple[Event, ...] = field(default=())
    message: str = ""

    @cached_property
    def encoded(self) -> bytes:
        return encode(to_obj(self))


def encode_receipt(receipt: Receipt) -> bytes:
    return receipt.encoded


def decode_receipt(data: bytes) -> Receipt:
    return from_obj(Receipt, decode(data), "receipt")
