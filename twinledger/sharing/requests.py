"""External requests (Armored Twins phase 5): a requester asks a twin's device something
without knowing the device or holding any of its keys.

The requester encrypts the request for the twin's *owner* with the attributes ``req``
and ``twin:<id>`` (and more, for finer routing): a KP-CPRE capsule for a fresh key and
the payload under that key, with a one-time X25519 key the answer is to be sealed to.
A proxy routes it by re-encryption under the owner's grant to a device whose policy
covers those attributes, after its rate and time limits; the device opens it, processes
it and seals the answer to the requester's one-time key. The proxy sees neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from twinledger.contracts.sharing import DEVICE_RECIPIENT, grant_is_active
from twinledger.core.attributes import request_attributes, with_generation
from twinledger.core.encoding import decode, encode
from twinledger.core.hashing import hash_obj
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import EncryptionKey, SigningKey
from twinledger.crypto.policy import from_obj as policy_from_obj
from twinledger.crypto.policy import satisfied
from twinledger.crypto.seal import seal, unseal
from twinledger.errors import DecodeError, DecryptionFailed
from twinledger.store.client import StoreClient
from twinledger.store.items import StoreError

MAX_PAYLOAD = 16 * 1024
ZERO_NONCE = bytes(12)
"""Each request has its own fresh key, used once."""
RESPONSE_CONTEXT = b"twinledger/request/response/v1"
DEVICE_MESSAGE_TAG = "twinledger/proxy/device-message/v1"
"""What a device signs to take and answer its requests (with the parts of each message)."""


@dataclass(frozen=True)
class ExternalRequest:
    capsule: bytes
    """A fresh key, KP-CPRE-encrypted for the twin's owner under ``req``, ``twin:<id>``, …"""
    body: bytes
    """AES-256-GCM under that key of {payload, reply key}, bound to the capsule."""

    @property
    def id(self) -> bytes:
        return hashlib.sha256(self.encoded()).digest()

    def encoded(self) -> bytes:
        return encode({"capsule": self.capsule, "body": self.body})

    @classmethod
    def from_bytes(cls, data: bytes) -> ExternalRequest:
        try:
            fields = decode(data, max_size=MAX_PAYLOAD + 32 * 1024)
            request = cls(fields["capsule"], fields["body"])
        except (DecodeError, KeyError, TypeError) as exc:
            raise DecryptionFailed() from exc
        if set(fields) != {"capsule", "body"} or not isinstance(request.capsule, bytes) or not isinstance(
                request.body, bytes):  # fmt: skip
            raise DecryptionFailed()
        return request


def make_request(owner: kpcpre.PublicKey, twin_id: str, generation: int, payload: bytes,
                 extra: Sequence[str] = ()) -> tuple[ExternalRequest, EncryptionKey]:  # fmt: skip
    """A request for ``owner``'s twin in its access ``generation``, and the one-time key its
    answer will be sealed to."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a request holds at most {MAX_PAYLOAD} bytes")
    reply = EncryptionKey.generate()
    key, capsule = kpcpre.encrypt(owner, with_generation(request_attributes(twin_id, extra), generation))
    body = AESGCM(key).encrypt(ZERO_NONCE, encode({"payload": payload, "reply_key": reply.public}),
                               capsule.associated_data())  # fmt: skip
    return ExternalRequest(capsule.to_bytes(), body), reply


def open_request(secret: kpcpre.SecretKey, routed_capsule: bytes, body: bytes) -> tuple[bytes, bytes]:
    """(payload, reply key) of a request the proxy routed to the device owning ``secret``."""
    capsule = kpcpre.ReEncryptedCiphertext.from_bytes(routed_capsule)
    key = kpcpre.decrypt(secret, capsule)
    try:
        fields = decode(AESGCM(key).decrypt(ZERO_NONCE, body, capsule.associated_data()))
        return fields["payload"], fields["reply_key"]
    except (InvalidTag, DecodeError, KeyError, TypeError) as exc:
        raise DecryptionFailed() from exc


def seal_response(reply_key: bytes, request_id: bytes, answer: bytes) -> bytes:
    return seal(reply_key, answer, RESPONSE_CONTEXT + request_id)


def open_response(reply: EncryptionKey, request_id: bytes, sealed: bytes) -> bytes:
    return unseal(reply, sealed, RESPONSE_CONTEXT + request_id)


# -- over the store protocol ------------------------------------------------------------------------


def routes(grants: Sequence[Mapping[str, Any]], twin_id: str, attributes: Sequence[str], now_ms: int) -> list[str]:
    """Proxies (ORG/NODE) of active grants that route requests of ``attributes`` to a device of the twin."""
    proxies: list[str] = []
    for grant in grants:
        if (grant["twin"] == twin_id and grant["recipient"].startswith(DEVICE_RECIPIENT) and grant_is_active(grant, now_ms)
                and satisfied(policy_from_obj(grant["policy"]), attributes)):  # fmt: skip
            proxies += [p for p in grant["proxies"] if p not in proxies]
    return proxies


async def send_request(client: StoreClient, proxies: Sequence[str], twin_id: str, request: ExternalRequest,
                       height: int) -> str:  # fmt: skip
    """Hand the request to the first proxy that routes it; returns that proxy (ORG/NODE)."""
    nodes = {node.label: node for node in client.nodes}
    refusals = []
    for label in proxies:
        if label not in nodes:
            continue
        try:
            await client.request(nodes[label], "request_put", {"twin": twin_id, "request": request.encoded(),
                                                               "height": height})  # fmt: skip
            return label
        except StoreError as exc:
            if exc.code in ("rate_limited", "replayed_request", "bad_request", "decryption_failed"):
                raise
            refusals.append(f"{label}: {exc.message}")
    raise StoreError("no proxy routed the request: " + "; ".join(refusals or ["none reachable"]), code="no_route")


def _signed(device: SigningKey, *parts: Any) -> bytes:
    return device.sign(hash_obj(DEVICE_MESSAGE_TAG, list(parts)))


async def take_requests(client: StoreClient, proxy: str, twin_id: str, device: SigningKey, secret: kpcpre.SecretKey,
                        after: int, height: int) -> list[dict[str, Any]]:  # fmt: skip
    """The requests ``proxy`` routed to this device after sequence ``after``, opened:
    sequence, id, requester, received, payload and reply key (both None for a request
    that does not decrypt: damaged or forged)."""
    node = next(n for n in client.nodes if n.label == proxy)
    answer = await client.request(node, "request_take", {
        "twin": twin_id, "device": device.public, "after": after, "height": height,
        "device_signature": _signed(device, "take", twin_id, after, height)})  # fmt: skip
    opened = []
    for entry in answer["requests"]:  # type: ignore[union-attr]
        view = {key: entry[key] for key in ("sequence", "id", "requester", "received")}
        try:
            view["payload"], view["reply_key"] = open_request(secret, entry["capsule"], entry["body"])
        except DecryptionFailed:  # a damaged or forged request must not block the ones after it
            view["payload"], view["reply_key"] = None, None
        opened.append(view)
    return opened


async def respond(client: StoreClient, proxy: str, twin_id: str, device: SigningKey, request_id: bytes,
                  reply_key: bytes, answer: bytes) -> None:  # fmt: skip
    node = next(n for n in client.nodes if n.label == proxy)
    sealed = seal_response(reply_key, request_id, answer)
    await client.request(node, "response_put", {
        "twin": twin_id, "device": device.public, "request_id": request_id, "response": sealed,
        "device_signature": _signed(device, "respond", request_id, hashlib.sha256(sealed).digest())})  # fmt: skip


async def collect_response(client: StoreClient, proxy: str, request_id: bytes, reply: EncryptionKey) -> bytes | None:
    """The device's answer, opened; None while it is pending."""
    node = next(n for n in client.nodes if n.label == proxy)
    answer = await client.request(node, "response_get", {"request_id": request_id})
    if answer.get("status") != "answered":
        return None
    return open_response(reply, request_id, answer["response"])  # type: ignore[arg-type]
