"""Revocation against a recipient that colludes with its proxy (security review, kp1.py #1).

A re-encryption key's leaves are a KP-ABE key for the owner's secret, blinded by T = H5(Σ);
the recipient opens Σ from (V, W) with its own key, so a recipient holding its key — or
a proxy's copy — unblinds the leaves and decrypts, without any proxy, every capsule the
key's policy covers. The attack is shown working on what the key covers, and failing on
what is written after the grant ended: capsules of the next access generation.
"""

from __future__ import annotations

from twinledger.core.attributes import feed_attributes, generation_attribute
from twinledger.crypto import groups, kpcpre
from twinledger.crypto.policy import leaf_coefficients, leaves, parse_policy
from twinledger.sharing.grants import make_grant_keys
from twinledger.store.documents import CapsuleKey, new_data_key

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
