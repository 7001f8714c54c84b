"""A proxy node: holds grants' re-encryption keys and re-encrypts capsules for recipients.

Served on the store listener (mutual TLS, so every request comes from a known node of a
known organisation) by nodes with the ``proxy`` role. The proxy never holds a data key
or plaintext: it receives capsules (data keys KP-CPRE-encrypted for the owner) and
returns them re-encrypted for the grant's recipient — only while the grant recorded on
chain is active, only for its recipient, and only when the capsule's attributes satisfy
the grant's policy (which the cryptography enforces, not just this code).

Keys are kept in ``data/proxy-keys.db`` (SQLite, synchronous writes, readable by the
node's user only) and deleted when their grant is revoked or expires.
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
from twinledger.contracts.sharing import DEVICE_RECIPIENT, grant_is_active, grant_key
from twinledger.core.hashing import hash_obj
from twinledger.crypto import kpcpre
from twinledger.crypto.certs import NodeIdentity
from twinledger.crypto.keys import verify_signature
from twinledger.crypto.policy import from_obj as policy_from_obj
from twinledger.store.records import AccessDenied, StoreError

log = logging.getLogger("twinledger.proxy")
MAX_KEY_BYTES = 64 * 1024
MAX_CAPSULE_BYTES = 16 * 1024
HEIGHT_WAIT = 10.0
"""Seconds a request naming a newer height waits for this node to reach it."""


def device_request(grant_id: bytes, capsule: bytes, height: int) -> bytes:
    """What a device signs to have a capsule re-encrypted under a grant to it."""
    return hash_obj("twinledger/proxy/device-request/v1", [grant_id, hashlib.sha256(capsule).digest(), height])


class ProxyService:
    def __init__(self, path: Path, me: NodeIdentity, state: Callable[[], StateReader],
                 wait_for_height: Callable[[int, float], Awaitable[bool]]) -> None:  # fmt: skip
        self.me = me
        self.name = f"{me.organisation}/{me.node}"
        self.state = state
        self.wait_for_height = wait_for_height
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS keys (grant_id BLOB PRIMARY KEY, key BLOB NOT NULL)")
        self._lock = threading.Lock()
        self._keys: dict[bytes, kpcpre.ReEncryptionKey] = {}
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="proxy")

    def handlers(self) -> dict[str, Callable[[NodeIdentity, dict[str, Any]], Awaitable[dict[str, Any]]]]:
        return {"proxy_key_put": self.put_key, "reencrypt": self.reencrypt}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._db.close()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- requests ------------------------------------------------------------------------------
    async def put_key(self, identity: NodeIdentity, message: dict[str, Any]) -> dict[str, Any]:
        """The granting organisation hands over a grant's re-encryption key."""
        grant_id, key = _bytes(message, "grant", 32, 32), _bytes(message, "key", 1, MAX_KEY_BYTES)
        await self._reach(message)
        state = self.state()
        grant = self._grant(state, grant_id)
        if identity.organisation != grant["owner"]:
            raise AccessDenied(f"only {grant['owner']}, which made grant {grant_id.hex()[:16]}…, hands over its key")
        if self.name not in grant["proxies"]:
            raise AccessDenied(f"grant {grant_id.hex()[:16]}… does not name proxy {self.name}")
        self._require_active(grant_id, grant)
        if hashlib.sha256(key).digest() != grant["key_hash"]:
            raise StoreError("the key's hash is not the one the grant records", code="key_mismatch")
        owner = state.get(organisation_key(grant["owner"]))
        decoded = await self._run(kpcpre.ReEncryptionKey.from_bytes, key)
        if (owner is None or decoded.owner.to_bytes() != owner["kpcpre_key"]
                or decoded.recipient.to_bytes() != grant["recipient_key"]
                or decoded.policy != policy_from_obj(grant["policy"])):  # fmt: skip
            raise StoreError("the key is not made for the grant's owner, recipient and policy", code="key_mismatch")
        await self._run(self._store, grant_id, key)
        self._keys[grant_id] = decoded
        log.info("holding the re-encryption key of grant %s", grant_id.hex()[:16])
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
        key = self._keys.get(grant_id) or await self._run(self._load, grant_id)
        if key is None:
            raise StoreError(f"proxy {self.name} holds no key for grant {grant_id.hex()[:16]}…", code="no_key")
        self._keys[grant_id] = key

        def transform() -> bytes:
            return kpcpre.reencrypt(key, kpcpre.Ciphertext.from_bytes(capsule)).to_bytes()

        return {"reencrypted": await self._run(transform)}

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
            held = [row[0] for row in self._db.execute("SELECT grant_id FROM keys")]
        ended = [grant_id for grant_id in held if not grant_is_active(state.get(grant_key(grant_id)) or
                                                                      {"status": "unknown"}, now)]  # fmt: skip
        for grant_id in ended:
            self._forget(grant_id)
        return ended

    # -- storage ---------------------------------------------------------------------------------
    def _store(self, grant_id: bytes, key: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO keys (grant_id, key) VALUES (?, ?)", (grant_id, key))

    def _load(self, grant_id: bytes) -> kpcpre.ReEncryptionKey | None:
        with self._lock:
            row = self._db.execute("SELECT key FROM keys WHERE grant_id = ?", (grant_id,)).fetchone()
        return kpcpre.ReEncryptionKey.from_bytes(row[0]) if row else None

    def _forget(self, grant_id: bytes) -> None:
        self._keys.pop(grant_id, None)
        with self._lock:
            deleted = self._db.execute("DELETE FROM keys WHERE grant_id = ?", (grant_id,)).rowcount
        if deleted:
            log.info("deleted the re-encryption key of ended grant %s", grant_id.hex()[:16])

    def held(self) -> list[bytes]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT grant_id FROM keys ORDER BY grant_id")]


def _bytes(message: dict[str, Any], name: str, minimum: int, maximum: int) -> bytes:
    value = message.get(name)
    if not isinstance(value, bytes) or not minimum <= len(value) <= maximum:
        raise StoreError(f"'{name}' must be {minimum}–{maximum} bytes", code="bad_request")
    return value
