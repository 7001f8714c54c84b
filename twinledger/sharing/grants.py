"""Grants from both ends: the owner makes and hands over a re-encryption key, the
recipient reads through a proxy (Armored Twins phases 2 and 4, M1)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twinledger.contracts.sharing import generation_policy, requires
from twinledger.core.attributes import generation_of, twin_attribute, without_generation
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.policy import Leaf, Policy, all_of
from twinledger.crypto.policy import from_obj as policy_from_obj
from twinledger.errors import TwinledgerError
from twinledger.sharing.proxy import device_request
from twinledger.store.client import StoreClient
from twinledger.store.documents import Unlock
from twinledger.store.items import AccessDenied, ItemAcl, ReadGrant, StoreError


def key_hash(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


@dataclass(frozen=True)
class GrantKeys:
    policy: Policy
    """The policy as granted: the asked one, confined to the twin."""
    keys: tuple[bytes, ...]
    """The encoded re-encryption keys for the proxies, one per generation of the twin."""

    @property
    def key_hashes(self) -> list[bytes]:
        return [key_hash(key) for key in self.keys]


def confined(policy: Policy, twin_id: str) -> Policy:
    """``policy``, made to require the twin's attribute if it does not already."""
    attribute = twin_attribute(twin_id)
    return policy if requires(policy, attribute) else all_of([Leaf(attribute), policy])


def generation_key(owner: kpcpre.SecretKey, policy: Policy, recipient: kpcpre.PublicKey, generation: int) -> bytes:
    """A grant's re-encryption key for one generation: its policy and ``generation:N``, so
    it covers no capsule of another generation."""
    return kpcpre.rkgen(owner, generation_policy(policy, generation), recipient).to_bytes()


def make_grant_keys(owner: kpcpre.SecretKey, twin_id: str, policy: Policy, recipient: kpcpre.PublicKey,
                    generation: int) -> GrantKeys:  # fmt: skip
    """The owner's side of a grant made in ``generation``: the twin-confined policy, and a
    key for ``recipient`` for every generation so far (the data written in each)."""
    granted = confined(policy, twin_id)
    return GrantKeys(granted, tuple(generation_key(owner, granted, recipient, g) for g in range(generation + 1)))


def rekeyed(owner: kpcpre.SecretKey, grant: Mapping[str, Any], generation: int) -> bytes:
    """The key of an active ``grant`` (as the API lists it) for the twin's new ``generation``."""
    return generation_key(owner, policy_from_obj(grant["policy"]),
                          kpcpre.PublicKey.from_bytes(bytes.fromhex(grant["recipient_key"])), generation)  # fmt: skip


async def hand_over(client: StoreClient, proxies: Sequence[str], grant_id: bytes, keys: Mapping[int, bytes],
                    height: int) -> dict[str, str]:  # fmt: skip
    """Give each proxy node the grant's keys (generation → key); proxy label → "held" or
    why it refused. Raises if no proxy took them."""
    nodes = {node.label: node for node in client.nodes}
    results: dict[str, str] = {}
    for label in proxies:
        node = nodes.get(label)
        if node is None:
            results[label] = "not a store node the membership lists"
            continue
        try:
            for generation, key in sorted(keys.items()):
                await client.request(node, "proxy_key_put", {"grant": grant_id, "generation": generation, "key": key,
                                                             "height": height})  # fmt: skip
            results[label] = "held"
        except StoreError as exc:
            results[label] = exc.message
    if "held" not in results.values():
        raise TwinledgerError("no proxy took the grant's key: " + "; ".join(f"{k}: {v}" for k, v in results.items()),
                              code="proxies_refused")  # fmt: skip
    return results


def covering_grant(grants: Iterable[Mapping[str, Any]], acl: ItemAcl, organisation: str,
                   now_ms: int) -> Mapping[str, Any] | None:  # fmt: skip
    """An active grant (as GET /v1/grants lists them) that lets ``organisation`` read ``acl``'s item."""
    return next((g for g in grants if g["status"] == "active" and ReadGrant.of(g).covers(acl, organisation, now_ms)),
                None)


def through_proxy(client: StoreClient, grant: Mapping[str, Any], secret: kpcpre.SecretKey, height: int,
                  device: SigningKey | None = None) -> Unlock:  # fmt: skip
    """Unlock items as ``grant``'s recipient: a proxy re-encrypts the capsule, ``secret``
    opens it. A device recipient signs its requests with its ``device`` key."""

    async def unlock(acl: ItemAcl, commitment: bytes | None) -> bytes:
        capsule = acl.epoch(commitment).capsule
        if not capsule:
            raise AccessDenied(f"item {acl.item.hex()[:16]}… has no capsule: only the readers it names can read it")
        nodes = {node.label: node for node in client.nodes}
        refusals: list[str] = []
        for label in grant["proxies"]:
            if label not in nodes:
                continue
            body: dict[str, object] = {"grant": bytes.fromhex(grant["id"]), "capsule": capsule, "height": height}
            if device is not None:
                body["device_signature"] = device.sign(device_request(bytes.fromhex(grant["id"]), capsule, height))
            try:
                response = await client.request(nodes[label], "reencrypt", body)
            except StoreError as exc:
                if exc.code in ("access_denied", "policy_not_satisfied", "decryption_failed"):
                    raise
                refusals.append(f"{label}: {exc.message}")
                continue
            reencrypted = kpcpre.ReEncryptedCiphertext.from_bytes(response["reencrypted"])  # type: ignore[arg-type]
            if (without_generation(reencrypted.attributes) != acl.attributes
                    or generation_of(reencrypted.attributes) is None):  # fmt: skip
                raise StoreError("the proxy returned a capsule of other attributes than the item's", code="bad_proxy")
            return kpcpre.decrypt(secret, reencrypted)
        raise StoreError("no proxy of the grant re-encrypted the data key: " + "; ".join(refusals or ["none reachable"]),
                         code="proxy_unreachable")  # fmt: skip

    return unlock
