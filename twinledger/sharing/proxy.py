"""A proxy node: holds grants' re-encryption keys and re-encrypts capsules for recipients.

Served on the store listener (mutual TLS, so every request comes from a known node of a
known organisation) by nodes with the ``proxy`` role. The proxy never holds a data key
or plaintext: it receives capsules (data keys KP-CPRE-encrypted for the owner) and
returns them re-encrypted for the grant's recipient — only while the grant recorded on
chain is active, only for its recipient, and only when the capsule's attributes satisfy
the grant's policy (which the cryptography enforces, not just this code).

A grant has one key per access generation of its twin (contracts/sharing.py); the
proxy uses the one the capsule's ``generation:N`` names. Keys are kept in
``data/proxy-keys.db`` (SQLite, synchronous writes, readable by the node's user only)
and deleted when their grant is revoked or expires.

It also routes external requests (Armored Twins phase 5, ``sharing.requests``): a
request encrypted for the twin's owner under ``req`` and ``twin:<id>`` is re-encrypted
for the device an active grant of the owner routes it to, within a rate limit per
requesting organisation and twin, and queued until the device takes it (for at most an
hour); the device's answer, sealed to the requester, waits for the requester.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from twinledger.abc import StateReader
from twinledger.contracts.membership import organisation_key
from twinledger.contracts.sharing import (
    DEVICE_RECIPIENT,
    MAX_GENERATIONS,
    device_key,
    generation_policy,
    grant_is_active,
    grant_key,
)
from twinledger.contracts.twinstate import twin_key
from twinledger.core.attributes import REQUEST, generation_of, twin_attribute
from twinledger.core.hashing import hash_obj
from twinledger.core.sqlite import open_database
from twinledger.crypto import kpcpre
from twinledger.crypto.certs import NodeIdentity
from twinledger.crypto.keys import verify_signature
from twinledger.crypto.policy import from_obj as policy_from_obj
from twinledger.crypto.policy import satisfied
from twinledger.sharing.requests import DEVICE_MESSAGE_TAG, MAX_PAYLOAD, ExternalRequest
from twinledger.store.items import AccessDenied, StoreError

log = logging.getLogger("twinledger.proxy")

SCHEMA = """
DROP TABLE IF EXISTS keys;
CREATE TABLE IF NOT EXISTS grant_keys (grant_id BLOB NOT NULL, generation INTEGER NOT NULL, key BLOB NOT NULL,
    PRIMARY KEY (grant_id, generation));
CREATE TABLE IF NOT EXISTS requests (sequence INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB UNIQUE NOT NULL,
    twin TEXT NOT NULL, device BLOB NOT NULL, requester TEXT NOT NULL, received INTEGER NOT NULL,
    capsule BLOB NOT NULL, body BLOB NOT NULL, response BLOB);
"""
MAX_KEY_BYTES = 64 * 1024
MAX_CAPSULE_BYTES = 16 * 1024
HEIGHT_WAIT = 10.0
"""Seconds a request naming a newer height waits for this node to reach it."""
REQUESTS_PER_MINUTE = 20
"""External requests one organisation may send one twin through one proxy per minute."""
REQUEST_TTL_MS = 3_600_000
"""Routed requests no device took within an hour are dropped."""
MAX_REQUEST_BYTES = MAX_PAYLOAD + 32 * 1024


def device_request(grant_id: bytes, capsule: bytes, height: int) -> bytes:
    """What a device signs to have a capsule re-encrypted under a grant to it."""
    return hash_obj("twinledger/proxy/device-request/v1", [grant_id, hashlib.sha256(capsule).digest(), height])


class ProxyService:
    def __init__(self, path: Path, me: NodeIdentity, state: Callable[[], StateReader],
                 wait_for_height: Callable[[int, float], Awaitable[bool]],
                 grants: Callable[[], list[dict[str, Any]]] = list,
                 requests_per_minute: int = REQUESTS_PER_MINUTE) -> None:  # fmt: skip
        self.me = me
        self.grants = grants
        self.requests_per_minute = requests_per_minute
        self.name = f"{me.organisation}/{me.node}"
        self.state = state
        self.wait_for_height = wait_for_height
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = open_database(path, SCHEMA, shared=True)
        self._lock = threading.Lock()
        self._keys: dict[tuple[bytes, int], kpcpre.ReEncryptionKey] = {}
        """By grant id and generation."""
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="proxy")

    def handlers(self) -> dict[str, Callable[[NodeIdentity, dict[str, Any]], Awaitable[dict[str, Any]]]]:
        return {"proxy_key_put": self.put_key, "reencrypt": self.reencrypt, "request_put": self.put_request,
                "request_take": self.take_requests, "response_put": self.put_response, "response_get": self.get_response}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._db.close()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- requests ------------------------------------------------------------------------------
    async def put_key(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """The granting organisation hands over a grant's re-encryption key for one generation."""
        grant_id, key = _bytes(message, "grant", 32, 32), _bytes(message, "key", 1, MAX_KEY_BYTES)
        generation = message.get("generation")
        if not isinstance(generation, int) or isinstance(generation, bool) or not 0 <= generation < MAX_GENERATIONS:
            raise StoreError("'generation' must be a generation number", code="bad_request")
        await self._reach(message)
        state = self.state()
        grant = self._grant(state, grant_id)
        if identity.organisation != grant["owner"]:
            raise AccessDenied(f"only {grant['owner']}, which made grant {grant_id.hex()[:16]}…, hands over its key")
        if self.name not in grant["proxies"]:
            raise AccessDenied(f"grant {grant_id.hex()[:16]}… does not name proxy {self.name}")
        self._require_active(grant_id, grant)
        if not grant["recipient"].startswith(DEVICE_RECIPIENT) and state.get(organisation_key(grant["recipient"])) is None:
            raise AccessDenied(f"grant {grant_id.hex()[:16]}… is to {grant['recipient']}, which left the consortium")
        if generation >= len(grant["keys"]) or hashlib.sha256(key).digest() != grant["keys"][generation]:
            raise StoreError(f"the key's hash is not the one the grant records for generation {generation}",
                             code="key_mismatch")  # fmt: skip
        owner = state.get(organisation_key(grant["owner"]))
        decoded = await self._run(kpcpre.ReEncryptionKey.from_bytes, key)
        if (owner is None or decoded.owner.to_bytes() != owner["kpcpre_key"]
                or decoded.recipient.to_bytes() != grant["recipient_key"]
                or decoded.policy != generation_policy(policy_from_obj(grant["policy"]), generation)):  # fmt: skip
            raise StoreError("the key is not made for the grant's owner, recipient, policy and generation",
                             code="key_mismatch")  # fmt: skip
        await self._run(self._store, grant_id, generation, key)
        self._keys[grant_id, generation] = decoded
        log.info("holding the re-encryption key of grant %s for generation %d", grant_id.hex()[:16], generation)
        return {"held": True}

    async def reencrypt(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """A grant's recipient has a capsule re-encrypted for it."""
        grant_id = _bytes(message, "grant", 32, 32)
        capsule = _bytes(message, "capsule", 1, MAX_CAPSULE_BYTES)
        await self._reach(message)
        grant = self._grant(self.state(), grant_id)
        self._require_active(grant_id, grant)
        if grant["recipient"].startswith(DEVICE_RECIPIENT):
            device = bytes.fromhex(grant["recipient"].removeprefix(DEVICE_RECIPIENT))
            signature = message.get("device_signature")
            if identity.organisation != grant["owner"] or not isinstance(signature, bytes) or not verify_signature(
                    device, device_request(grant_id, capsule, message.get("height", 0)), signature):  # fmt: skip
                raise AccessDenied(f"grant {grant_id.hex()[:16]}… is for a device of {grant['owner']}: its requests "
                                   "come through that organisation's nodes, signed by the device")  # fmt: skip
        elif identity.organisation != grant["recipient"]:
            raise AccessDenied(f"grant {grant_id.hex()[:16]}… is for {grant['recipient']}, "
                               f"not {identity.organisation}")  # fmt: skip
        ciphertext = await self._run(kpcpre.Ciphertext.from_bytes, capsule)
        generation = generation_of(ciphertext.attributes)
        if generation is None:
            raise StoreError("the capsule names no generation of its twin's access", code="policy_not_satisfied")
        key = await self._key(grant_id, generation)
        if key is None:
            raise StoreError(f"proxy {self.name} holds no key of grant {grant_id.hex()[:16]}… for generation "
                             f"{generation}: the owner has not re-keyed the grant since access to the twin changed",
                             code="no_key")  # fmt: skip
        return {"reencrypted": await self._run(lambda: kpcpre.reencrypt(key, ciphertext).to_bytes())}

    async def _key(self, grant_id: bytes, generation: int) -> kpcpre.ReEncryptionKey | None:
        key = self._keys.get((grant_id, generation)) or await self._run(self._load, grant_id, generation)
        if key is not None:
            self._keys[grant_id, generation] = key
        return key

    # -- external requests ---------------------------------------------------------------------
    async def put_request(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """Route a request to the twin's device: re-encrypt it under the owner's grant to the
        device whose policy its attributes satisfy, within the rate limit."""
        twin = _text(message, "twin")
        raw = _bytes(message, "request", 1, MAX_REQUEST_BYTES)
        await self._reach(message)
        request = ExternalRequest.from_bytes(raw)
        capsule = await self._run(kpcpre.Ciphertext.from_bytes, request.capsule)
        if REQUEST not in capsule.attributes or twin_attribute(twin) not in capsule.attributes:
            raise StoreError(f"a request carries the attributes {REQUEST} and {twin_attribute(twin)}",
                             code="bad_request")  # fmt: skip
        now = int(time.time() * 1000)
        routes = [g for g in self.grants() if g["twin"] == twin and g["recipient"].startswith(DEVICE_RECIPIENT)
                  and self.name in g["proxies"] and grant_is_active(g, now)
                  and satisfied(policy_from_obj(g["policy"]), capsule.attributes)]  # fmt: skip
        generation = generation_of(capsule.attributes)
        keys = [(g, await self._key(g["id"], generation)) for g in routes] if generation is not None else []
        route = next(((g, key) for g, key in keys if key is not None), None)
        if route is None:
            raise StoreError(f"proxy {self.name} routes no requests of these attributes to a device of twin {twin}",
                             code="no_route")  # fmt: skip
        grant, key = route
        recent = await self._run(self._count_recent, identity.organisation, twin, now - 60_000)
        if recent >= self.requests_per_minute:
            raise StoreError(f"{identity.organisation} sent {recent} requests to twin {twin} in the last minute; "
                             f"the limit is {self.requests_per_minute}", code="rate_limited")  # fmt: skip
        routed = await self._run(lambda: kpcpre.reencrypt(key, capsule).to_bytes())
        device = bytes.fromhex(grant["recipient"].removeprefix(DEVICE_RECIPIENT))
        await self._run(self._queue, request.id, twin, device, identity.organisation, now, routed, request.body)
        return {"request_id": request.id}

    async def take_requests(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """A device takes the requests routed to it after sequence ``after`` (an hour at most old)."""
        twin, device = _text(message, "twin"), _bytes(message, "device", 32, 32)
        after = message.get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise StoreError("'after' must be a request sequence number", code="bad_request")
        await self._reach(message)
        self._require_device(identity, twin, device, message, ["take", twin, after, message.get("height", 0)])
        rows = await self._run(self._taken, twin, device, after, int(time.time() * 1000) - REQUEST_TTL_MS)
        return {"requests": [{"sequence": sequence, "id": request_id, "requester": requester, "received": received,
                              "capsule": capsule, "body": body}
                             for sequence, request_id, requester, received, capsule, body in rows]}  # fmt: skip

    async def put_response(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        request_id = _bytes(message, "request_id", 32, 32)
        response = _bytes(message, "response", 1, MAX_REQUEST_BYTES)
        twin, device = _text(message, "twin"), _bytes(message, "device", 32, 32)
        self._require_device(identity, twin, device, message, ["respond", request_id, hashlib.sha256(response).digest()])
        if not await self._run(self._answer, request_id, twin, device, response):
            raise StoreError(f"no request {request_id.hex()[:16]}… waits for device {device.hex()[:16]}…",
                             code="unknown_request")  # fmt: skip
        return {"stored": True}

    async def get_response(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        request_id = _bytes(message, "request_id", 32, 32)
        row = await self._run(self._response, request_id)
        if row is None or row[0] != identity.organisation:
            raise StoreError(f"no request {request_id.hex()[:16]}… of {identity.organisation} on proxy {self.name}",
                             code="unknown_request")  # fmt: skip
        return {"status": "answered", "response": row[1]} if row[1] is not None else {"status": "pending"}

    def _require_device(self, identity: NodeIdentity, twin: str, device: bytes, message: dict[str, Any],
                        signed: list[Any]) -> None:  # fmt: skip
        """The request comes through a node of the twin's owner, signed by an active device of the twin."""
        state = self.state()
        entry = state.get(device_key(twin, device))
        owner = (state.get(twin_key(twin)) or {}).get("owner")
        signature = message.get("device_signature")
        if (entry is None or entry["status"] != "active" or identity.organisation != owner
                or not isinstance(signature, bytes)
                or not verify_signature(device, hash_obj(DEVICE_MESSAGE_TAG, signed), signature)):  # fmt: skip
            raise AccessDenied(f"only an active device of twin {twin}, through a node of its owner, takes and answers "
                               "its requests")  # fmt: skip

    def _count_recent(self, requester: str, twin: str, since: int) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM requests WHERE requester = ? AND twin = ? AND received > ?",
                                        (requester, twin, since)).fetchone()[0])  # fmt: skip

    def _queue(self, request_id: bytes, twin: str, device: bytes, requester: str, received: int, capsule: bytes,
               body: bytes) -> None:  # fmt: skip
        with self._lock:
            try:
                self._db.execute("INSERT INTO requests (id, twin, device, requester, received, capsule, body) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (request_id, twin, device, requester, received, capsule, body))  # fmt: skip
            except sqlite3.IntegrityError:
                raise StoreError(f"request {request_id.hex()[:16]}… was sent before", code="replayed_request") from None

    def _taken(self, twin: str, device: bytes, after: int, oldest: int) -> list[tuple[Any, ...]]:
        with self._lock:
            self._db.execute("DELETE FROM requests WHERE received < ?", (oldest,))
            return self._db.execute("SELECT sequence, id, requester, received, capsule, body FROM requests WHERE twin = ? "
                                    "AND device = ? AND sequence > ? AND response IS NULL ORDER BY sequence LIMIT 100",
                                    (twin, device, after)).fetchall()  # fmt: skip

    def _answer(self, request_id: bytes, twin: str, device: bytes, response: bytes) -> bool:
        with self._lock:
            return self._db.execute("UPDATE requests SET response = ? WHERE id = ? AND twin = ? AND device = ? AND "
                                    "response IS NULL", (response, request_id, twin, device)).rowcount == 1  # fmt: skip

    def _response(self, request_id: bytes) -> tuple[str, bytes | None] | None:
        with self._lock:
            return self._db.execute("SELECT requester, response FROM requests WHERE id = ?", (request_id,)).fetchone()

    # -- grants ----------------------------------------------------------------------------------
    async def _reach(self, message: dict[str, Any]) -> None:
        """Wait until this node has the block the caller saw (the grant may be that new)."""
        height = message.get("height", 0)
        if not isinstance(height, int) or isinstance(height, bool) or height < 0:
            raise StoreError("'height' must be a block height", code="bad_request")
        if height and not await self.wait_for_height(height, HEIGHT_WAIT):
            raise StoreError(f"proxy {self.name} has not reached height {height} yet", code="behind")

    @staticmethod
    def _grant(state: StateReader, grant_id: bytes) -> dict[str, Any]:
        grant = state.get(grant_key(grant_id))
        if grant is None:
            raise StoreError(f"no grant {grant_id.hex()[:16]}… on chain", code="unknown_grant")
        return grant

    def _require_active(self, grant_id: bytes, grant: dict[str, Any]) -> None:
        if not grant_is_active(grant, int(time.time() * 1000)):
            self._forget(grant_id)
            raise AccessDenied(f"grant {grant_id.hex()[:16]}… is {grant['status']}"
                               f"{'' if grant['status'] != 'active' else ' and expired'}")  # fmt: skip

    def sweep(self, state: StateReader) -> list[bytes]:
        """Delete the keys of grants that are no longer active; returns their ids."""
        now = int(time.time() * 1000)
        with self._lock:
            held = [row[0] for row in self._db.execute("SELECT DISTINCT grant_id FROM grant_keys")]
        ended = [grant_id for grant_id in held if not grant_is_active(state.get(grant_key(grant_id)) or
                                                                      {"status": "unknown"}, now)]  # fmt: skip
        for grant_id in ended:
            self._forget(grant_id)
        return ended

    # -- storage ---------------------------------------------------------------------------------
    def _store(self, grant_id: bytes, generation: int, key: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO grant_keys (grant_id, generation, key) VALUES (?, ?, ?)",
                             (grant_id, generation, key))  # fmt: skip

    def _load(self, grant_id: bytes, generation: int) -> kpcpre.ReEncryptionKey | None:
        with self._lock:
            row = self._db.execute("SELECT key FROM grant_keys WHERE grant_id = ? AND generation = ?",
                                   (grant_id, generation)).fetchone()  # fmt: skip
        return kpcpre.ReEncryptionKey.from_bytes(row[0]) if row else None

    def _forget(self, grant_id: bytes) -> None:
        for cached in [k for k in self._keys if k[0] == grant_id]:
            del self._keys[cached]
        with self._lock:
            deleted = self._db.execute("DELETE FROM grant_keys WHERE grant_id = ?", (grant_id,)).rowcount
        if deleted:
            log.info("deleted the %d re-encryption key(s) of ended grant %s", deleted, grant_id.hex()[:16])



def _text(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise StoreError(f"'{name}' must be a short text", code="bad_request")
    return value


def _bytes(message: dict[str, Any], name: str, minimum: int, maximum: int) -> bytes:
    value = message.get(name)
    if not isinstance(value, bytes) or not minimum <= len(value) <= maximum:
        raise StoreError(f"'{name}' must be {minimum}–{maximum} bytes", code="bad_request")
    return value
