"""Grants from both ends: the owner makes and hands over a re-encryption key, the
recipient reads through a proxy (Armored Twins phases 2 and 4, M1)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twinledger.contracts.sharing import requires
from twinledger.core.attributes import twin_attribute
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.policy import Leaf, Policy, all_of
from twinledger.errors import TwinledgerError
from twinledger.sharing.proxy import device_request
from twinledger.store.client import StoreClient
from twinledger.store.documents import Unlock
from twinledger.store.items import AccessDenied, ItemAcl, ReadGrant, StoreError


@dataclass(frozen=True)
class GrantKey:
    policy: Policy
    """The policy as granted: the asked one, confined to the twin."""
    key: bytes
    """The encoded re-encryption key for the proxies."""

    @property
    def key_hash(self) -> bytes:
        return hashlib.sha256(self.key).digest()


def confined(policy: Policy, twin_id: str) -> Policy:
    """``policy``, made to require the twin's attribute if it does not already."""
    attribute = twin_attribute(twin_id)
    return policy if requires(policy, attribute) else all_of([Leaf(attribute), policy])


def make_grant_key(owner: kpcpre.SecretKey, twin_id: str, policy: Policy, recipient: kpcpre.PublicKey) -> GrantKey:
    """The owner's side of a grant: the re-encryption key for ``recipient`` and the twin-confined policy."""
    granted = confined(policy, twin_id)
    return GrantKey(granted, kpcpre.rkgen(owner, granted, recipient).to_bytes())


async def hand_over(client: StoreClient, proxies: Sequence[str], grant_id: bytes, key: bytes,
                    height: int) -> dict[str, str]:  # fmt: skip
    """Give each proxy node the grant's key; proxy label → "held" or why it refused.
    Raises if no proxy took it."""
    nodes = {node.label: node for node in client.nodes}
    results: dict[str, str] = {}
    for label in proxies:
        node = nodes.get(label)
        if node is None:
            results[label] = "not a store node the membership lists"
            continue
        try:
            await client.request(node, "proxy_key_put", {"grant": grant_id, "key": key, "height": height})
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
            if reencrypted.attributes != acl.attributes:
                raise StoreError("the proxy returned a capsule of other attributes than the item's", code="bad_proxy")
            return kpcpre.decrypt(secret, reencrypted)
        raise StoreError("no proxy of the grant re-encrypted the data key: " + "; ".join(refusals or ["none reachable"]),
                         code="proxy_unreachable")  # fmt: skip

    return unlock
