"""The reference client of the TCP ingest protocol, and tier-2 (sender-only) encryption.

The client keeps every record it sent until the node answers it. When the connection
breaks (the node restarted, the network dropped) it reconnects and sends the unanswered
records again with their sequence numbers; the node's journal makes a record sent twice
one record. So a client that keeps its records until they are acknowledged loses
nothing and duplicates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from twinledger.crypto.certs import CertificateError
from twinledger.crypto.keys import read_secret_file, write_secret_file
from twinledger.errors import DecryptionFailed, TwinledgerError
from twinledger.ingest.protocol import (
    DEFAULT_MAX_RECORD,
    NODE_MESSAGES,
    PROTOCOL,
    IngestError,
    IngestRecord,
    frame,
    max_frame,
    read_message,
    record_message,
)
from twinledger.store.protocol import HANDSHAKE_TIMEOUT, Pin, StoreTls, peer_identity

RETRYABLE = frozenset({"node_failure"})
"""Rejections that say "send it again later", not "this record is wrong"."""
TIER2_MAGIC = b"TLI3"
TIER2_MAGIC_V1 = b"TLI2"
TIER2_AAD = b"twinledger/ingest/tier-2/v1"
TIER2_KIND = "ingest-tier2"


class IngestUnavailable(TwinledgerError):
    code = "ingest_unreachable"


@dataclass(frozen=True)
class Answer:
    seq: int
    record: bytes | None
    """The record id (its transaction's hash) when acknowledged."""
    height: int | None = None
    code: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.record is not None


@dataclass(frozen=True)
class Welcome:
    node: str
    organisation: str
    window: int
    max_record: int
    next_seq: int
    attributes: tuple[str, ...]
    """What the stream's records are shared under (empty: private)."""


class IngestSender:
    def __init__(self, endpoint: Callable[[], str | None], tls: StoreTls, stream: bytes, *,
                 attributes: Sequence[str] = (), reconnect_for: float = 120.0,
                 on_event: Callable[[str], None] | None = None, pin: Pin | None = None) -> None:  # fmt: skip
        self.endpoint = endpoint
        """Where the node listens now (read again before every reconnection; None while
        it is not known, e.g. while the node restarts)."""
        self.tls = tls
        self.pin = pin or Pin(tls.own.organisation)
        """Whom the payloads are for: by default any node of the sender's own organisation
        (the node signs the records as the organisation's); a node of another member at
        the address is refused before a byte of payload leaves."""
        self.stream = stream
        self.attributes = list(attributes)
        """Shares the stream under these (docs/ingest-protocol.md); the stream's first hello fixes them."""
        self.reconnect_for = reconnect_for
        self.on_event = on_event or (lambda _: None)
        self.welcome: Welcome | None = None
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __aenter__(self) -> IngestSender:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._connection is not None:
            writer = self._connection[1]
            self._connection = None
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):  # already gone
                await writer.wait_closed()

    async def connect(self) -> Welcome:
        """Connect, retrying for ``reconnect_for`` seconds while the node cannot be reached;
        a refusal by the node (an ``error``) is raised at once."""
        deadline = time.monotonic() + self.reconnect_for
        delay = 0.2
        told = False
        while True:
            try:
                return await self._open()
            except (OSError, TimeoutError, ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
                if time.monotonic() + delay > deadline:
                    raise IngestUnavailable(f"cannot reach the ingest listener at {self.endpoint()}: "
                                            f"{exc or type(exc).__name__}") from None  # fmt: skip
                if not told:
                    self.on_event(f"node unreachable ({exc or type(exc).__name__}); retrying for up to "
                                  f"{self.reconnect_for:.0f} s")  # fmt: skip
                    told = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _open(self) -> Welcome:
        await self.close()
        endpoint = self.endpoint()
        if endpoint is None:
            raise ConnectionError("the node's ingest address is not known (is it running?)")
        host, port = endpoint.rsplit(":", 1)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port), ssl=self.tls.client, server_hostname=None,
                                    limit=1 << 20),  # fmt: skip
            HANDSHAKE_TIMEOUT,
        )
        try:
            hello = {"type": "hello", "protocol": PROTOCOL, "stream": self.stream,
                     "organisation_certificate": self.tls.org_cert_der}
            writer.write(frame({**hello, "attributes": self.attributes} if self.attributes else hello))
            answer = await asyncio.wait_for(read_message(reader, 1 << 16, NODE_MESSAGES), HANDSHAKE_TIMEOUT)
            if answer["type"] == "error":
                raise IngestError(str(answer.get("message")), code=str(answer.get("code")))
            if answer["type"] != "welcome":
                raise IngestError(f"expected welcome, got {answer['type']}", code="handshake")
            identity = peer_identity(writer, answer, self.tls, PROTOCOL)
            self.pin.check(identity, f"the ingest listener at {endpoint}")
            if answer.get("organisation") != identity.organisation or answer.get("node") != identity.node:
                raise CertificateError(f"the ingest listener at {endpoint} says it is {answer.get('node')} of "
                                       f"{answer.get('organisation')}, but its certificate is {identity.node} of "
                                       f"{identity.organisation}", code="wrong_peer")  # fmt: skip
            self.welcome = Welcome(str(answer["node"]), str(answer["organisation"]), int(answer["window"]),
                                   int(answer["max_record"]), int(answer["next"]),
                                   tuple(str(a) for a in answer.get("attributes") or ()))  # fmt: skip
        except BaseException:
            writer.close()
            raise
        self._connection = (reader, writer)
        return self.welcome

    async def send(self, records: Iterable[IngestRecord],
                   on_answer: Callable[[Answer], None] | None = None) -> list[Answer]:  # fmt: skip
        """Send ``records`` (in ``seq`` order) and return every answer, in the order they came."""
        source = iter(records)
        unanswered: dict[int, IngestRecord] = {}
        answers: list[Answer] = []
        exhausted = False
        while True:
            if self._connection is None:
                await self.connect()
                self.on_event(f"connected; sending {len(unanswered)} unanswered records again" if unanswered
                              else "connected")  # fmt: skip
            assert self._connection is not None and self.welcome is not None
            reader, writer = self._connection
            limit = max_frame(max(self.welcome.max_record, DEFAULT_MAX_RECORD))
            try:
                for seq in sorted(unanswered):
                    writer.write(frame(record_message(unanswered[seq])))
                while True:
                    while not exhausted and len(unanswered) < self.welcome.window:
                        record = next(source, None)
                        if record is None:
                            exhausted = True
                            break
                        unanswered[record.seq] = record
                        writer.write(frame(record_message(record)))
                    await writer.drain()
                    if exhausted and not unanswered:
                        return answers
                    message = await read_message(reader, limit, NODE_MESSAGES)
                    if message["type"] == "busy":
                        self.on_event(f"record {message.get('seq')} held up: {message.get('reason')}")
                        continue
                    answer = _answer(message)
                    if answer is None:
                        continue
                    if answer.code in RETRYABLE:
                        raise ConnectionError(f"record {answer.seq}: {answer.message}")
                    unanswered.pop(answer.seq, None)
                    answers.append(answer)
                    if on_answer is not None:
                        on_answer(answer)
            except IngestError:
                await self.close()
                raise
            except (OSError, TimeoutError, ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
                self.on_event(f"connection lost ({exc or type(exc).__name__}); reconnecting")
                await self.close()


def _answer(message: dict[str, Any]) -> Answer | None:
    """An ack or a rejection; IngestError for the node's fatal error."""
    kind = message["type"]
    if kind == "error":
        raise IngestError(str(message.get("message")), code=str(message.get("code")))
    if kind == "ack":
        return Answer(int(message["seq"]), bytes(message["record"]), int(message["height"]))
    if kind == "rejected":
        return Answer(int(message["seq"]), None, code=str(message.get("code")), message=str(message.get("message")))
    return None


# -- tier 2: a key only the sender holds ------------------------------------------------------------
@dataclass(frozen=True)
class SenderKey:
    """Tier-2 encryption: payloads sealed with AES-256-GCM under a key that never leaves
    the sender, so neither the node nor any reader of the record can open them.

    The file's secret is never used as a key itself: HKDF derives the AES key and the
    nonce key apart, and each payload is bound to its record (stream and sequence number)
    as associated data, so a sealed payload moved to another record does not open there."""

    secret: bytes

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"twinledger/ingest/tier-2/key-id" + self.secret).hexdigest()[:16]

    def _derived(self, purpose: str) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=None, info=f"{TIER2_AAD.decode()}/{purpose}".encode()).derive(self.secret)

    def seal(self, payload: bytes, context: bytes) -> bytes:
        """Sealed for the record ``context`` names (``record_context``), with a synthetic
        nonce (HMAC of the context and the payload): the same record sealed again is the
        same bytes, so a resend after a crash is recognised as the same record, and a nonce
        never repeats with other content."""
        nonce = hmac.new(self._derived("nonce"), context + payload, hashlib.sha256).digest()[:12]
        sealed = AESGCM(self._derived("aes")).encrypt(nonce, payload, TIER2_AAD + context)
        return TIER2_MAGIC + bytes.fromhex(self.key_id) + nonce + sealed

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """The payload sealed for the record ``context`` names; DecryptionFailed for any
        other key, record or change. Payloads of the first format (one key for both uses,
        no record bound) still open."""
        if sealed[4:12] != bytes.fromhex(self.key_id) or sealed[:4] not in (TIER2_MAGIC, TIER2_MAGIC_V1):
            raise DecryptionFailed()
        first = sealed[:4] == TIER2_MAGIC_V1
        key, associated = (self.secret, TIER2_AAD) if first else (self._derived("aes"), TIER2_AAD + context)
        try:
            return AESGCM(key).decrypt(sealed[12:24], sealed[24:], associated)
        except InvalidTag:
            raise DecryptionFailed() from None


def record_context(stream: bytes, seq: int) -> bytes:
    """What binds a tier-2 payload to its record: the stream's id and the sequence number."""
    return stream + seq.to_bytes(8, "big")


def sender_key(path: Path, passphrase: str | None, create: bool) -> SenderKey:
    """The sender's tier-2 key in ``path``, made on first use if ``create``."""
    if not path.exists():
        if not create:
            raise TwinledgerError(f"no tier-2 key at {path}: records sealed with it cannot be opened here",
                                  code="no_tier2_key")  # fmt: skip
        write_secret_file(path, TIER2_KIND, os.urandom(32), passphrase)
    return SenderKey(read_secret_file(path, TIER2_KIND, passphrase))
