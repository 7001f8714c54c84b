"""Key-policy conditional proxy re-encryption (KP-CPRE), the sharing primitive of Armored Twins.

The owner encrypts a data key for itself under a set of public attributes. Later it
hands a proxy a re-encryption key for a recipient and a policy; the proxy can turn
exactly those ciphertexts whose attributes satisfy the policy into ciphertexts the
recipient decrypts, and learns nothing itself. Unidirectional, single-hop,
non-interactive, no attribute authority.

**This construction has no published security proof.** Armored Twins instantiates
Zhao–Feng–Zhang 2010, whose text is not available; this one is assembled from published
parts: Weng et al. 2009 conditional PRE (structure and Fujisaki–Okamoto checks), the
key-policy access trees of Goyal–Pandey–Sahai–Waters 2006 (the owner's key shared over
the policy tree) and the blinding of the re-encryption key by a value sent encrypted to
the recipient (Green–Ateniese 2007). It is tested adversarially (tests/test_kpcpre.py):
re-encryption works iff the policy holds, a proxy interpolating over leaves the
ciphertext does not satisfy, leaves mixed from two keys, the wrong recipient and every
tampered byte all fail. See docs/sharing.md.

Notation as in the design note: h generates G2, u = H("u") in G1, X = h^x, Y = e(u, X).

* Enc(X, A):  R random in GT, r = H1(R, A, X); C1 = h^r, C2 = R·Y^r, E_a = Ha(a)^r,
  C4 = H4(C1, C2, A, E)^r; the data key is HKDF(R).
* RKGen(x, P, X_B): Σ random in GT, T = H5(Σ); x shared over P; per leaf ℓ:
  D_ℓ = u^{q_ℓ(0)}·T·Ha(att_ℓ)^{ρ_ℓ}, R_ℓ = h^{ρ_ℓ}; V = h^v, W = Σ·Y_B^v.
* ReEnc: check e(C4, h) = e(H4(…), C1); K = e(∏D_ℓ^{c_ℓ}, C1) / ∏e(E_ℓ^{c_ℓ}, R_ℓ)
  = Y^r·e(T, C1) over a smallest satisfying leaf set; C2' = C2/K. Both are products of
  pairings computed with one final exponentiation each.
* Dec (recipient): Σ = W/e(u^{x_B}, V), R = C2'·e(H5(Σ), C1), check C1 = h^{H1(R, A, X)}.
* Dec (owner): R = C2/e(u^x, C1), check C1 and C4.

Every failure to decode, re-encrypt or decrypt is the one generic DecryptionFailed,
except a policy the attributes do not satisfy (PolicyNotSatisfied): policies and
attributes are public by design, so the proxy may say so.
"""

from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from twinledger.core.encoding import decode, encode
from twinledger.crypto import groups
from twinledger.crypto.groups import G1, G2, GT, RandomBytes
from twinledger.crypto.policy import (
    Policy,
    PolicyError,
    attribute_set,
    check_policy,
    leaf_coefficients,
    leaves,
    share_secret,
)
from twinledger.crypto.policy import from_obj as policy_from_obj
from twinledger.crypto.policy import to_obj as policy_to_obj
from twinledger.errors import DecryptionFailed, TwinledgerError

SUITE = "twinledger-kpcpre/bls12-381/1"
MAX_ENCODED = 64 * 1024

H = groups.G2_GENERATOR
U = groups.hash_to_g1("KPCPRE-U")


class PolicyNotSatisfied(TwinledgerError):
    code = "policy_not_satisfied"
    http_status = 403


def _h1(r: GT, attributes: tuple[str, ...], owner: PublicKey) -> int:
    return groups.hash_to_scalar("twinledger/kpcpre/h1", r.serialize(), encode(list(attributes)), owner.to_bytes())


@functools.lru_cache(maxsize=4096)
def _attribute_point(attribute: str) -> G1:
    return groups.hash_to_g1("KPCPRE-ATTRIBUTE", attribute.encode("utf-8"))


def _h4(c1: G2, c2: GT, attributes: tuple[str, ...], tags: tuple[G1, ...]) -> G1:
    return groups.hash_to_g1(
        "KPCPRE-H4", c1.serialize(), c2.serialize(), encode(list(attributes)), *(tag.serialize() for tag in tags)
    )


def _h5(sigma: GT) -> G1:
    return groups.hash_to_g1("KPCPRE-H5", sigma.serialize())


def _data_key(r: GT) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=f"{SUITE}/data-key".encode()).derive(r.serialize())


# --- keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    point: G2

    @cached_property
    def pairing_value(self) -> GT:
        """Y = e(u, X), used by every encryption to this key."""
        return groups.pair(U, self.point)

    def to_bytes(self) -> bytes:
        return self.point.serialize()

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        return cls(groups.decode_g2(data))

    def __repr__(self) -> str:
        return f"PublicKey({self.to_bytes().hex()[:16]}…)"


@dataclass(frozen=True)
class SecretKey:
    x: int

    @classmethod
    def generate(cls, random_bytes: RandomBytes = os.urandom) -> SecretKey:
        return cls(groups.random_scalar(random_bytes))

    @cached_property
    def public(self) -> PublicKey:
        return PublicKey(H * self.x)

    @cached_property
    def _u_x(self) -> G1:
        return U * self.x

    def to_bytes(self) -> bytes:
        return groups.encode_scalar(self.x)

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretKey:
        return cls(groups.decode_scalar(data))

    def __repr__(self) -> str:
        return f"SecretKey(public={self.public!r})"


def keygen(random_bytes: RandomBytes = os.urandom) -> SecretKey:
    return SecretKey.generate(random_bytes)


# --- objects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ciphertext:
    """A data key encrypted for ``owner`` under public ``attributes``."""

    owner: PublicKey
    attributes: tuple[str, ...]
    c1: G2
    c2: GT
    tags: tuple[G1, ...]  # E_a, one per attribute, in attribute order
    c4: G1

    def associated_data(self) -> bytes:
        return _associated_data(self.owner, self.attributes, self.c1)

    def to_bytes(self) -> bytes:
        return _encode("ciphertext", {
            "owner": self.owner.to_bytes(),
            "attributes": list(self.attributes),
            "c1": self.c1.serialize(),
            "c2": self.c2.serialize(),
            "tags": [tag.serialize() for tag in self.tags],
            "c4": self.c4.serialize(),
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> Ciphertext:
        fields = _decode("ciphertext", data, ("owner", "attributes", "c1", "c2", "tags", "c4"))
        attributes = _attributes(fields["attributes"])
        tags = fields["tags"]
        if not isinstance(tags, list) or len(tags) != len(attributes):
            raise DecryptionFailed()
        return cls(
            PublicKey.from_bytes(fields["owner"]),
            attributes,
            groups.decode_g2(fields["c1"]),
            groups.decode_gt(fields["c2"]),
            tuple(groups.decode_g1(tag) for tag in tags),
            groups.decode_g1(fields["c4"]),
        )


@dataclass(frozen=True)
class ReEncryptedCiphertext:
    """A ciphertext a proxy transformed for ``recipient``."""

    owner: PublicKey
    recipient: PublicKey
    attributes: tuple[str, ...]
    c1: G2
    c2: GT  # C2' = C2 / K
    v: G2
    w: GT

    def associated_data(self) -> bytes:
        return _associated_data(self.owner, self.attributes, self.c1)

    def to_bytes(self) -> bytes:
        return _encode("re-encrypted", {
            "owner": self.owner.to_bytes(),
            "recipient": self.recipient.to_bytes(),
            "attributes": list(self.attributes),
            "c1": self.c1.serialize(),
            "c2": self.c2.serialize(),
            "v": self.v.serialize(),
            "w": self.w.serialize(),
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> ReEncryptedCiphertext:
        fields = _decode("re-encrypted", data, ("owner", "recipient", "attributes", "c1", "c2", "v", "w"))
        return cls(
            PublicKey.from_bytes(fields["owner"]),
            PublicKey.from_bytes(fields["recipient"]),
            _attributes(fields["attributes"]),
            groups.decode_g2(fields["c1"]),
            groups.decode_gt(fields["c2"]),
            groups.decode_g2(fields["v"]),
            groups.decode_gt(fields["w"]),
        )


@dataclass(frozen=True)
class ReEncryptionKey:
    """Lets a proxy re-encrypt ``owner``'s ciphertexts satisfying ``policy`` for ``recipient``."""

    owner: PublicKey
    recipient: PublicKey
    policy: Policy
    leaves: tuple[tuple[G1, G2], ...]  # (D_ℓ, R_ℓ) in the policy's leaf order
    v: G2
    w: GT

    def to_bytes(self) -> bytes:
        return _encode("re-encryption-key", {
            "owner": self.owner.to_bytes(),
            "recipient": self.recipient.to_bytes(),
            "policy": policy_to_obj(self.policy),
            "leaves": [[d.serialize(), r.serialize()] for d, r in self.leaves],
            "v": self.v.serialize(),
            "w": self.w.serialize(),
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> ReEncryptionKey:
        fields = _decode("re-encryption-key", data, ("owner", "recipient", "policy", "leaves", "v", "w"))
        try:
            policy = policy_from_obj(fields["policy"])
        except PolicyError as exc:
            raise DecryptionFailed() from exc
        parts = fields["leaves"]
        if not isinstance(parts, list) or len(parts) != len(leaves(policy)):
            raise DecryptionFailed()
        if not all(isinstance(part, list) and len(part) == 2 for part in parts):
            raise DecryptionFailed()
        return cls(
            PublicKey.from_bytes(fields["owner"]),
            PublicKey.from_bytes(fields["recipient"]),
            policy,
            tuple((groups.decode_g1(d), groups.decode_g2(r)) for d, r in parts),
            groups.decode_g2(fields["v"]),
            groups.decode_gt(fields["w"]),
        )


def _associated_data(owner: PublicKey, attributes: tuple[str, ...], c1: G2) -> bytes:
    """What AES-GCM binds data to: only what survives re-encryption."""
    return encode([SUITE, owner.to_bytes(), list(attributes), c1.serialize()])


def _encode(kind: str, fields: dict[str, Any]) -> bytes:
    return encode({"suite": SUITE, "type": kind, **fields})


def _decode(kind: str, data: bytes, names: tuple[str, ...]) -> dict[str, Any]:
    try:
        fields = decode(data, max_size=MAX_ENCODED)
    except TwinledgerError as exc:
        raise DecryptionFailed() from exc
    if not isinstance(fields, dict) or set(fields) != {"suite", "type", *names}:
        raise DecryptionFailed()
    if fields["suite"] != SUITE or fields["type"] != kind:
        raise DecryptionFailed()
    return fields


def _attributes(value: object) -> tuple[str, ...]:
    """The attribute list of a decoded object, which must already be in canonical form."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DecryptionFailed()
    try:
        canonical = attribute_set(value)
    except PolicyError as exc:
        raise DecryptionFailed() from exc
    if list(canonical) != value:
        raise DecryptionFailed()
    return canonical


# --- the five algorithms -------------------------------------------------------------------


def encrypt(owner: PublicKey, attributes: Any, random_bytes: RandomBytes = os.urandom) -> tuple[bytes, Ciphertext]:
    """A fresh 32-byte data key and its encryption for ``owner`` under ``attributes`` (Enc)."""
    attribute_tuple = attribute_set(attributes)
    r_value = groups.random_gt(random_bytes)
    r = _h1(r_value, attribute_tuple, owner)
    c1 = H * r
    c2 = r_value * owner.pairing_value**r
    tags = tuple(_attribute_point(attribute) * r for attribute in attribute_tuple)
    c4 = _h4(c1, c2, attribute_tuple, tags) * r
    return _data_key(r_value), Ciphertext(owner, attribute_tuple, c1, c2, tags, c4)


def rkgen(
    owner: SecretKey, policy: Policy, recipient: PublicKey, random_bytes: RandomBytes = os.urandom
) -> ReEncryptionKey:
    """A re-encryption key from ``owner`` to ``recipient`` for data satisfying ``policy`` (RKGen)."""
    check_policy(policy)
    sigma = groups.random_gt(random_bytes)
    blind = _h5(sigma)
    shares = share_secret(policy, owner.x, groups.ORDER, lambda: groups.random_scalar(random_bytes))
    parts = []
    for attribute, share in zip(leaves(policy), shares, strict=True):
        rho = groups.random_scalar(random_bytes)
        parts.append((U * share + blind + _attribute_point(attribute) * rho, H * rho))
    v = groups.random_scalar(random_bytes)
    return ReEncryptionKey(owner.public, recipient, policy, tuple(parts), H * v, sigma * recipient.pairing_value**v)


def check_ciphertext(ciphertext: Ciphertext) -> None:
    """The proxy's checks before it transforms anything: C4 = H4(C1, C2, A, E)^r (the
    Fujisaki–Okamoto tag) and each E_a = Ha(a)^r, to the r of C1 = h^r. They are checked
    as one random linear combination, two pairings in all; a ciphertext that fails any
    of them passes with probability below 2^-127. Without the tags' check a proxy
    transformed ciphertexts with made-up tags, answering as an oracle."""
    if len(ciphertext.tags) != len(ciphertext.attributes):
        raise DecryptionFailed()
    weights = [secrets.randbits(128) | 1 for _ in range(len(ciphertext.tags) + 1)]
    expected = _h4(ciphertext.c1, ciphertext.c2, ciphertext.attributes, ciphertext.tags)
    claimed = groups.g1_multi_mul([ciphertext.c4, *ciphertext.tags], weights)
    derived = groups.g1_multi_mul([expected, *(_attribute_point(a) for a in ciphertext.attributes)], weights)
    if groups.pair_product([(claimed, H), (-derived, ciphertext.c1)]) != GT.one():
        raise DecryptionFailed()


def reencrypt(key: ReEncryptionKey, ciphertext: Ciphertext) -> ReEncryptedCiphertext:
    """Transform ``ciphertext`` for the key's recipient if its attributes satisfy the key's policy (ReEnc)."""
    if ciphertext.owner != key.owner:
        raise DecryptionFailed()
    check_ciphertext(ciphertext)
    coefficients = leaf_coefficients(key.policy, ciphertext.attributes, groups.ORDER)
    if coefficients is None:
        raise PolicyNotSatisfied("the data's attributes do not satisfy the grant's policy")
    tags = dict(zip(ciphertext.attributes, ciphertext.tags, strict=True))
    names = leaves(key.policy)
    used = list(coefficients.items())
    combined = groups.g1_multi_mul([key.leaves[index][0] for index, _ in used], [c for _, c in used])
    k = groups.pair_product(
        [(combined, ciphertext.c1)] + [(tags[names[index]] * (groups.ORDER - c), key.leaves[index][1]) for index, c in used]
    )
    return ReEncryptedCiphertext(
        ciphertext.owner, key.recipient, ciphertext.attributes, ciphertext.c1, ciphertext.c2 / k, key.v, key.w
    )


def decrypt(secret: SecretKey, ciphertext: Ciphertext | ReEncryptedCiphertext) -> bytes:
    """The data key: the owner decrypts its own ciphertexts, a recipient re-encrypted ones (Dec)."""
    if isinstance(ciphertext, ReEncryptedCiphertext):
        if ciphertext.recipient != secret.public:
            raise DecryptionFailed()
        sigma = ciphertext.w / groups.pair(secret._u_x, ciphertext.v)
        r_value = ciphertext.c2 * groups.pair(_h5(sigma), ciphertext.c1)
    else:
        if ciphertext.owner != secret.public:
            raise DecryptionFailed()
        r_value = ciphertext.c2 / groups.pair(secret._u_x, ciphertext.c1)
    r = _h1(r_value, ciphertext.attributes, ciphertext.owner)
    if H * r != ciphertext.c1:
        raise DecryptionFailed()
    if isinstance(ciphertext, Ciphertext):
        expected = _h4(ciphertext.c1, ciphertext.c2, ciphertext.attributes, ciphertext.tags) * r
        if expected != ciphertext.c4:
            raise DecryptionFailed()
    return _data_key(r_value)
