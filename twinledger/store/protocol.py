"""The store protocol: requests and responses over mutual TLS 1.3 between members.

Frames are the peer-to-peer framing (a 4-byte length and a canonical map). A request is
``{"id": n, "op": name, ...}``, its response ``{"id": n, "ok": true, ...}`` or
``{"id": n, "ok": false, "code": c, "message": m}``. Requests on one connection run
concurrently, so responses may come out of order; the id pairs them.

The first exchange is ``hello``: each side sends its organisation certificate, and
checks the other's TLS certificate chain up to the consortium CA, so every request is
made by a known node of a known organisation (the identity ACLs are checked against).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from twinledger.core.encoding import decode, encode
from twinledger.crypto.certs import CertificateError, NodeIdentity, read_certificate, verify_node_chain
from twinledger.crypto.tls import client_context, server_context
from twinledger.errors import DecodeError
from twinledger.net.wire import read_payload
from twinledger.store.items import CHUNK_SIZE, StoreError

if TYPE_CHECKING:
    from twinledger.config import NodeConfig

PROTOCOL = "twinledger-store/1"
MAX_STORE_FRAME = CHUNK_SIZE + (1 << 20)
HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0
"""How long closing waits for the peer's TLS goodbye (asyncio would wait 30 s): a node
stopping must not outlast the launcher's patience for want of a courtesy."""
OPS = frozenset({
    "put",  # a chunk of an item (with the item's ACL): written durably, then acknowledged
    "get",  # a chunk of an item, for a reader the ACL allows
    "acl_put",  # a newer owner-signed ACL
    "acl_get",  # an item's ACL
    "have",  # store nodes: which of these chunks do you hold?
    "fetch",  # store nodes: a chunk you should hold a replica of
    "acl_sync",  # store nodes: which of these ACL versions are newer than yours?
    "feed_put",  # an owner-signed feed update that follows the feed's head
    "feed_get",  # a feed's updates after a sequence, optionally in a time range or waiting for new ones
    "feed_sync",  # store nodes: of these feed heads, which are you behind on?
})  # fmt: skip
PROXY_OPS = frozenset({
    "proxy_key_put",  # the granting organisation hands a proxy node a grant's re-encryption key
    "reencrypt",  # the grant's recipient has a capsule re-encrypted for it
    "request_put",  # an external request for a twin, routed to its device by re-encryption
    "request_take",  # a device takes the requests routed to it
    "response_put",  # a device answers a request (sealed to the requester)
    "response_get",  # the requester collects the answer
})  # fmt: skip
"""Served on the store listener by nodes with the proxy role (twinledger.sharing.proxy)."""


class StoreUnavailable(StoreError):
    code = "store_unreachable"


@dataclass(frozen=True)
class StoreTls:
    """What a party needs to speak the store protocol: TLS contexts with its node
    certificate, the consortium CA, and its organisation certificate for the hello."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    ca_cert: x509.Certificate
    org_cert_der: bytes
    own: NodeIdentity
    """Who this party is: what its own certificate chain proves."""

    @classmethod
    def load(cls, ca: Path, chain: Path, key: Path, org_cert: Path, passphrase: str | None) -> StoreTls:
        ca_cert, organisation = read_certificate(ca), read_certificate(org_cert)
        own = verify_node_chain(read_certificate(chain), organisation, ca_cert)
        return cls(server_context(ca, chain, key, passphrase),
                   client_context(ca, chain, key, passphrase, check_hostname=False),
                   ca_cert, organisation.public_bytes(Encoding.DER), own)  # fmt: skip

    @classmethod
    def of_home(cls, config: NodeConfig) -> StoreTls:
        """The mutual-TLS identity of a home's node, for the store and ingest protocols."""
        from twinledger.config import passphrase

        return cls.load(config.cert("consortium-ca"), config.cert("node-chain"), config.key("tls"),
                        config.cert("organisation"), passphrase())  # fmt: skip


def frame(message: dict[str, Any]) -> bytes:
    payload = encode(message)
    if len(payload) > MAX_STORE_FRAME:
        raise StoreError(f"store message of {len(payload)} bytes exceeds {MAX_STORE_FRAME}", code="too_large")
    return len(payload).to_bytes(4, "big") + payload


def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write ``data``, or raise ConnectionResetError once the connection is closing: a
    closed TLS transport drops writes, and one closed twice fails on them with an
    AttributeError from inside asyncio."""
    if writer.is_closing():
        raise ConnectionResetError("the connection is closed")
    writer.write(data)


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    message = decode(await read_payload(reader, MAX_STORE_FRAME), max_size=MAX_STORE_FRAME)
    if not isinstance(message, dict) or not isinstance(message.get("id"), int):
        raise DecodeError("store message: expected a map with an integer id")
    return message


def hello(tls: StoreTls) -> dict[str, Any]:
    return {"id": 0, "op": "hello", "protocol": PROTOCOL, "organisation_certificate": tls.org_cert_der}


@dataclass(frozen=True)
class Pin:
    """Whom a client means to reach: a node of ``organisation`` — and, if given, the node
    of that name and Ed25519 key. Any consortium certificate is not enough: another
    member's node at the address would otherwise receive what was meant for one's own."""

    organisation: str
    node: str | None = None
    signing_key: bytes | None = None

    @classmethod
    def node_of(cls, identity: NodeIdentity) -> Pin:
        return cls(identity.organisation, identity.node, identity.signing_key)

    def check(self, identity: NodeIdentity, where: str) -> None:
        if (identity.organisation != self.organisation or (self.node is not None and identity.node != self.node)
                or (self.signing_key is not None and identity.signing_key != self.signing_key)):  # fmt: skip
            meant = f"{self.organisation}/{self.node}" if self.node is not None else f"a node of {self.organisation}"
            raise CertificateError(f"{where} is {identity.organisation}/{identity.node}, not {meant}: refusing to "
                                   "send it anything", code="wrong_peer")  # fmt: skip


def peer_identity(writer: asyncio.StreamWriter, message: dict[str, Any], tls: StoreTls,
                  protocol: str = PROTOCOL) -> NodeIdentity:  # fmt: skip
    """The identity the other side's TLS certificate and hello prove."""
    ssl_object = writer.get_extra_info("ssl_object")
    leaf = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if leaf is None:
        raise CertificateError("the other side presented no certificate")
    if message.get("protocol") != protocol:
        raise DecodeError(f"hello: expected protocol {protocol}")
    try:
        org_cert = x509.load_der_x509_certificate(bytes(message["organisation_certificate"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("hello: malformed organisation certificate") from exc
    return verify_node_chain(x509.load_der_x509_certificate(leaf), org_cert, tls.ca_cert)


class Connection:
    """A client connection: concurrent requests, answered in any order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: NodeIdentity) -> None:
        self.reader, self.writer, self.identity = reader, writer, identity
        self._next = 1
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._receiver = asyncio.ensure_future(self._receive())
        self.closed = False

    @classmethod
    async def open(cls, endpoint: str, tls: StoreTls, timeout: float = HANDSHAKE_TIMEOUT) -> Connection:
        host, port = endpoint.rsplit(":", 1)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port), ssl=tls.client, server_hostname=None,
                                    limit=MAX_STORE_FRAME),  # fmt: skip
            timeout,
        )
        try:
            writer.write(frame(hello(tls)))
            answer = await asyncio.wait_for(read_message(reader), timeout)
            if not answer.get("ok"):
                raise StoreError(str(answer.get("message", "hello refused")), code=str(answer.get("code", "store")))
            identity = peer_identity(writer, answer, tls)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, identity)

    async def _receive(self) -> None:
        try:
            while True:
                message = await read_message(self.reader)
                waiter = self._pending.pop(message["id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, DecodeError) as exc:
            failure: BaseException = exc
        except asyncio.CancelledError:
            failure = StoreUnavailable("connection closed")
        self.closed = True
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(StoreUnavailable(f"connection to {self.identity.node} lost: {failure}"))
        self._pending.clear()

    async def request(self, op: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The successful response's fields; StoreError with the other side's reason otherwise."""
        if self.closed:
            raise StoreUnavailable(f"connection to {self.identity.node} is closed")
        number = self._next
        self._next += 1
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = waiter
        try:
            write_frame(self.writer, frame({**body, "id": number, "op": op}))
            await self.writer.drain()
            answer = await asyncio.wait_for(waiter, timeout)
        except (OSError, ssl.SSLError) as exc:
            raise StoreUnavailable(f"connection to {self.identity.node} lost: {exc}") from None
        except TimeoutError:
            raise StoreUnavailable(f"{self.identity.node} did not answer {op} within {timeout:.0f} s") from None
        finally:
            self._pending.pop(number, None)
        if not answer.get("ok"):
            raise StoreError(str(answer.get("message", "refused")), code=str(answer.get("code", "store")))
        return answer

    async def close(self) -> None:
        self._receiver.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):  # already gone, or no goodbye within the bound
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_TIMEOUT)
