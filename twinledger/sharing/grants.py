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
from twinledger.errors import DecryptionFailed, TwinledgerError
from twinledger.sharing.proxy import device_request
from twinledger.store.client import StoreClient
from twinledger.store.documents import Unlock
from twinledger.store.items import AccessDenied, ItemAcl, ReadGrant, StoreError, key_commitment


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


DEFINITE_REFUSALS = ("access_denied", "policy_not_satisfied", "decryption_failed")
"""Refusals that say "not for you", as opposed to "not now" or "not here"."""


def through_proxy(client: StoreClient, grant: Mapping[str, Any], secret: kpcpre.SecretKey, height: int,
                  device: SigningKey | None = None) -> Unlock:  # fmt: skip
    """Unlock items as ``grant``'s recipient: a proxy re-encrypts the capsule, ``secret``
    opens it. A device recipient signs its requests with its ``device`` key.

    A proxy's answer is trusted for nothing: anyone holding the two public keys can make
    a re-encrypted ciphertext the recipient decrypts (security review, kp1.py #2), so the
    key it opens to must be the one the item's data was sealed under (its commitment);
    an answer that is not is skipped, and the grant's next proxy asked."""

    async def unlock(acl: ItemAcl, commitment: bytes | None) -> bytes:
        capsule = acl.epoch(commitment).capsule
        if not capsule:
            raise AccessDenied(f"item {acl.item.hex()[:16]}… has no capsule: only the readers it names can read it")
        nodes = {node.label: node for node in client.nodes}
        refusals: list[tuple[str, str]] = []
        for label in grant["proxies"]:
            if label not in nodes:
                continue
            body: dict[str, object] = {"grant": bytes.fromhex(grant["id"]), "capsule": capsule, "height": height}
            if device is not None:
                body["device_signature"] = device.sign(device_request(bytes.fromhex(grant["id"]), capsule, height))
            try:
                response = await client.request(nodes[label], "reencrypt", body)
                return opened(acl, response.get("reencrypted"), secret, commitment)
            except StoreError as exc:
                refusals.append((exc.code, f"{label}: {exc.message}"))
        definite = next((code for code, _ in refusals if code in DEFINITE_REFUSALS), None)
        raise StoreError("no proxy of the grant re-encrypted the data key: "
                         + "; ".join(message for _, message in refusals or [("", "none reachable")]),
                         code=definite or (refusals[0][0] if refusals else "proxy_unreachable"))  # fmt: skip

    return unlock


def opened(acl: ItemAcl, answer: object, secret: kpcpre.SecretKey, commitment: bytes | None) -> bytes:
    """The data key in a proxy's answer, if the answer is what an honest proxy returns:
    the item's attributes and one generation, opening to the key the data was sealed
    under (``commitment``; None: the caller checks it)."""
    try:
        reencrypted = kpcpre.ReEncryptedCiphertext.from_bytes(answer)  # type: ignore[arg-type]
        if without_generation(reencrypted.attributes) != acl.attributes or generation_of(reencrypted.attributes) is None:
            raise StoreError("it returned a capsule of other attributes than the item's", code="bad_proxy")
        key = kpcpre.decrypt(secret, reencrypted)
    except (DecryptionFailed, TypeError, ValueError) as exc:
        raise StoreError("its answer does not open with this recipient's key", code="bad_proxy") from exc
    if commitment is not None and key_commitment(key) != commitment:
        raise StoreError("its answer opens to another key than the data was sealed under", code="bad_proxy")
    return key
