"""Revocation against a recipient that colludes with its proxy (security review, kp1.py #1).

A re-encryption key's leaves are a KP-ABE key for the owner's secret, blinded by T = H5(Σ);
the recipient opens Σ from (V, W) with its own key, so a recipient holding its key — or
a proxy's copy — unblinds the leaves and decrypts, without any proxy, every capsule the
key's policy covers. The attack is shown working on what the key covers, and failing on
what is written after the grant ended: capsules of the next access generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from twinledger.core.attributes import feed_attributes, generation_attribute
from twinledger.crypto import groups, kpcpre
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.policy import leaf_coefficients, leaves, parse_policy
from twinledger.sharing.grants import make_grant_keys, through_proxy
from twinledger.store.documents import CapsuleKey, new_acl, new_data_key
from twinledger.store.items import StoreError, key_commitment

TWIN = "p7"


def collude(key: kpcpre.ReEncryptionKey, recipient: kpcpre.SecretKey, capsule: kpcpre.Ciphertext,
            pretend: tuple[str, ...] = ()) -> bytes | None:  # fmt: skip
    """The data key the colluders compute from the unblinded leaves, combining them as if
    the capsule also carried ``pretend`` (a leaf whose attribute it lacks has no tag to
    pair with, so its term is left out). None: the leaves do not combine at all."""
    sigma = key.w / groups.pair(recipient._u_x, key.v)
    blinding = kpcpre._h5(sigma)
    unblinded = [(d - blinding, r) for d, r in key.leaves]
    coefficients = leaf_coefficients(key.policy, (*capsule.attributes, *pretend), groups.ORDER)
    if coefficients is None:
        return None
    names = leaves(key.policy)
    tags = dict(zip(capsule.attributes, capsule.tags, strict=True))
    usable = {i: c for i, c in coefficients.items() if names[i] in tags}
    numerator = groups.pair_product([(unblinded[i][0] * c, capsule.c1) for i, c in usable.items()])
    denominator = groups.pair_product([(tags[names[i]] * c, unblinded[i][1]) for i, c in usable.items()])
    return kpcpre._data_key(capsule.c2 / (numerator / denominator))


def capsule(owner: kpcpre.SecretKey, generation: int) -> tuple[bytes, kpcpre.Ciphertext]:
    secret, _, encoded = new_data_key(CapsuleKey(owner.public, generation), feed_attributes(TWIN, "level-sensor-1"))
    return secret, kpcpre.Ciphertext.from_bytes(encoded)


def test_a_recipient_with_its_proxy_s_key_opens_nothing_of_a_later_generation() -> None:
    owner, recipient = kpcpre.keygen(), kpcpre.keygen()
    made = make_grant_keys(owner, TWIN, parse_policy("kind:sensor"), recipient.public, 0)
    (encoded,) = made.keys
    key = kpcpre.ReEncryptionKey.from_bytes(encoded)
    assert generation_attribute(0) in leaves(key.policy)

    # the attack is real: on data of the generation the key was made for, the colluders
    # decrypt without a proxy
    old_secret, old_capsule = capsule(owner, 0)
    assert collude(key, recipient, old_capsule) == old_secret

    # after the grant ended the twin is in generation 1: the key's leaves do not combine
    # over a capsule of it, and combined as if it were of generation 0 — the generation
    # leaf left out, the others hold only shares of the owner's secret — they open nothing
    new_secret, new_capsule = capsule(owner, 1)
    assert generation_attribute(1) in new_capsule.attributes
    assert collude(key, recipient, new_capsule) is None
    pretended = collude(key, recipient, new_capsule, (generation_attribute(0),))
    assert pretended is not None and pretended != new_secret


def test_a_grant_made_later_has_one_key_per_generation_and_each_opens_only_its_own() -> None:
    owner, recipient = kpcpre.keygen(), kpcpre.keygen()
    made = make_grant_keys(owner, TWIN, parse_policy("kind:sensor"), recipient.public, 2)
    assert len(made.keys) == 3 and len(set(made.key_hashes)) == 3
    for generation, encoded in enumerate(made.keys):
        key = kpcpre.ReEncryptionKey.from_bytes(encoded)
        for written in range(3):
            secret, ciphertext = capsule(owner, written)
            if written == generation:
                assert kpcpre.decrypt(recipient, kpcpre.reencrypt(key, ciphertext)) == secret
            else:
                assert leaf_coefficients(key.policy, ciphertext.attributes, groups.ORDER) is None


# -- a proxy's answer is checked, not trusted (kp1.py #2) ----------------------------------------


def forged_answer(owner: kpcpre.PublicKey, recipient: kpcpre.PublicKey, attributes: tuple[str, ...]) -> bytes:
    """A re-encrypted ciphertext anyone holding the two public keys makes, for a key of its choosing."""
    chosen = groups.random_gt()
    c1 = groups.G2_GENERATOR * kpcpre._h1(chosen, attributes, owner)
    sigma, v = groups.random_gt(), groups.random_scalar()
    return kpcpre.ReEncryptedCiphertext(owner, recipient, attributes, c1, chosen / groups.pair(kpcpre._h5(sigma), c1),
                                        groups.G2_GENERATOR * v, sigma * recipient.pairing_value ** v).to_bytes()  # fmt: skip


class Proxies:
    """The store client as a reader sees it, with proxies that answer as the test says:
    the adversary stands in here, not a part a user runs."""

    def __init__(self, answers: dict[str, Callable[[bytes], bytes]]) -> None:
        self.answers = answers
        self.nodes = [SimpleNamespace(label=label) for label in answers]
        self.asked: list[str] = []

    async def request(self, node: SimpleNamespace, op: str, body: dict) -> dict:
        self.asked.append(node.label)
        return {"reencrypted": self.answers[node.label](body["capsule"])}


def test_a_lying_proxy_s_answer_is_refused_and_the_next_proxy_asked() -> None:
    owner, recipient = kpcpre.keygen(), kpcpre.keygen()
    secret, canonical, capsule = new_data_key(CapsuleKey(owner.public, 0), feed_attributes(TWIN, "level-sensor-1"))
    acl = new_acl(SigningKey.generate(), "owner", "feed", b"topic", secret, {}, canonical, capsule)
    key = kpcpre.ReEncryptionKey.from_bytes(make_grant_keys(owner, TWIN, parse_policy("kind:sensor"),
                                                            recipient.public, 0).keys[0])  # fmt: skip
    attributes = kpcpre.Ciphertext.from_bytes(capsule).attributes
    assert kpcpre.decrypt(recipient, kpcpre.ReEncryptedCiphertext.from_bytes(
        forged_answer(owner.public, recipient.public, attributes))) != secret, "the forgery decrypts — to its own key"

    def liar(_: bytes) -> bytes:
        return forged_answer(owner.public, recipient.public, attributes)

    def honest(sent: bytes) -> bytes:
        return kpcpre.reencrypt(key, kpcpre.Ciphertext.from_bytes(sent)).to_bytes()

    grant = {"id": "ab" * 32, "proxies": ["rogue/node-1", "fair/node-1"]}
    both = Proxies({"rogue/node-1": liar, "fair/node-1": honest})
    read = through_proxy(both, grant, recipient, 1)  # type: ignore[arg-type]
    assert asyncio.run(read(acl, key_commitment(secret))) == secret and both.asked == ["rogue/node-1", "fair/node-1"]

    alone = through_proxy(Proxies({"rogue/node-1": liar}), {**grant, "proxies": ["rogue/node-1"]}, recipient, 1)  # type: ignore[arg-type]
    with pytest.raises(StoreError) as refused:
        asyncio.run(alone(acl, key_commitment(secret)))
    assert refused.value.code == "bad_proxy" and "opens to another key than the data was sealed under" in refused.value.message
