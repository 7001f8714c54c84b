"""Shamir secret sharing of a secret among trustees, k of n needed to recover it.

The secret (any length) is encrypted with AES-256-GCM under a fresh 32-byte key, and
that key is split over the prime field of 2^521 − 1 with a random polynomial of degree
k − 1; every share carries the encrypted secret, so any k shares are all recovery needs.
Fewer than k shares reveal nothing about the key. A damaged share, or one of another
split, makes AES-GCM refuse the result; given more than k shares, recovery finds k that
agree and names the ones that do not.

Trustees are not trusted: the organisation signs every share, over everything in it
and a commitment to the secret, with its operator key. Recovery counts only shares
signed by a key the caller trusts (the organisation's operators, as the consortium
records them), takes the threshold from those, and checks what it opens against the
commitment; a forged or altered share is named and left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from twinledger.core.encoding import decode, encode
from twinledger.crypto.keys import SigningKey, verify_signature
from twinledger.errors import DecodeError, TwinledgerError

PRIME = 2**521 - 1
MAX_SHARES = 255
FORMAT = "twinledger-share/2"
FIELDS = {"format", "split", "threshold", "count", "index", "value", "sealed", "label", "commitment", "signer",
          "signature"}  # fmt: skip


class ShareError(TwinledgerError):
    code = "bad_shares"


@dataclass(frozen=True)
class Share:
    split: bytes
    """Random id of the split this share belongs to."""
    threshold: int
    count: int
    index: int
    value: int
    sealed: bytes
    """The secret under the split's key (nonce ‖ AES-256-GCM ciphertext)."""
    label: str
    """What was split (shown to trustees), bound into the ciphertext."""
    commitment: bytes
    """SHA-256 of the secret (tagged): what recovery must open."""
    signer: bytes
    """The public key that signed the share (the organisation's operator key)."""
    signature: bytes = b""

    def signed_part(self) -> bytes:
        return encode([FORMAT, self.split, self.threshold, self.count, self.index, self.value.to_bytes(66, "big"),
                       self.sealed, self.label, self.commitment, self.signer])  # fmt: skip

    def signed_by(self, trusted: Collection[bytes]) -> bool:
        return self.signer in trusted and verify_signature(self.signer, self.signed_part(), self.signature)

    def to_bytes(self) -> bytes:
        return encode({"format": FORMAT, "split": self.split, "threshold": self.threshold, "count": self.count,
                       "index": self.index, "value": self.value.to_bytes(66, "big"), "sealed": self.sealed,
                       "label": self.label, "commitment": self.commitment, "signer": self.signer,
                       "signature": self.signature})  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        try:
            doc = decode(data, max_size=1 << 20)
            if isinstance(doc, dict) and doc.get("format") == "twinledger-share/1":
                raise ShareError("a share made before shares were signed (twinledger-share/1) cannot be verified: "
                                 "split the keys again and have the trustees destroy their old shares")  # fmt: skip
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or set(doc) != FIELDS:
                raise DecodeError("not a twinledger share")
            share = cls(doc["split"], doc["threshold"], doc["count"], doc["index"], int.from_bytes(doc["value"], "big"),
                        doc["sealed"], doc["label"], doc["commitment"], doc["signer"], doc["signature"])  # fmt: skip
            typed = (bytes, int, int, int, int, bytes, str, bytes, bytes, bytes)
            values = [getattr(share, f.name) for f in dataclasses.fields(share)]
            if not all(type(value) is kind for value, kind in zip(values, typed, strict=True)):
                raise DecodeError("a field of the wrong type")
        except (DecodeError, TypeError, KeyError) as exc:
            raise ShareError("not a twinledger key share (damaged or another file)") from exc
        if not (1 <= share.threshold <= share.count <= MAX_SHARES and 1 <= share.index <= share.count
                and share.value < PRIME and len(share.split) == 16 and len(share.commitment) == 32
                and len(share.signer) == 32 and len(share.signature) == 64):  # fmt: skip
            raise ShareError("not a twinledger key share (its numbers are out of range)")
        return share


def commitment_of(secret: bytes) -> bytes:
    return hashlib.sha256(b"twinledger/share-commitment/v1\0" + secret).digest()


def _associated(split: bytes, threshold: int, count: int, label: str) -> bytes:
    return encode([FORMAT, split, threshold, count, label])


def split_secret(secret: bytes, threshold: int, count: int, label: str, signer: SigningKey) -> list[Share]:
    """``count`` shares of ``secret``, any ``threshold`` of which recover it, each signed by ``signer``."""
    if not 1 <= threshold <= count <= MAX_SHARES:
        raise ShareError(f"need 1 ≤ threshold ≤ shares ≤ {MAX_SHARES}; got {threshold} of {count}")
    key, split, nonce = os.urandom(32), os.urandom(16), os.urandom(12)
    commitment = commitment_of(secret)
    sealed = nonce + AESGCM(key).encrypt(nonce, secret, _associated(split, threshold, count, label))
    coefficients = [int.from_bytes(key, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for index in range(1, count + 1):
        value = 0
        for coefficient in reversed(coefficients):
            value = (value * index + coefficient) % PRIME
        unsigned = Share(split, threshold, count, index, value, sealed, label, commitment, signer.public)
        shares.append(dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_part())))
    return shares


def _interpolate_at_zero(points: list[tuple[int, int]]) -> int:
    total = 0
    for i, (x_i, y_i) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(points):
            if i != j:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        total = (total + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def _open(chosen: tuple[Share, ...]) -> bytes | None:
    first = chosen[0]
    key = _interpolate_at_zero([(share.index, share.value) for share in chosen])
    if key >= 2**256:
        return None
    associated = _associated(first.split, first.threshold, first.count, first.label)
    try:
        return AESGCM(key.to_bytes(32, "big")).decrypt(first.sealed[:12], first.sealed[12:], associated)
    except InvalidTag:
        return None


def combine_shares(shares: list[Share], trusted: Collection[bytes],
                   accept: Callable[[bytes], bool] = lambda secret: True) -> tuple[bytes, list[int]]:  # fmt: skip
    """The secret, and the positions in ``shares`` of those left out: not signed by a
    ``trusted`` key, damaged, or of another split. The threshold is the signed shares'
    own; a split whose secret ``accept`` refuses (a genuine older one, say) is passed over."""
    if not shares:
        raise ShareError("no shares given")
    signed = [share for share in shares if share.signed_by(trusted)]
    if not signed:
        raise ShareError("none of the shares is signed by the organisation's operator key as the consortium records "
                         "it: forged, or shares of another organisation")  # fmt: skip
    splits: dict[tuple[bytes, bytes], dict[int, Share]] = {}
    for share in signed:
        splits.setdefault((share.split, share.commitment), {})[share.index] = share
    for distinct in sorted(splits.values(), key=len, reverse=True):
        recovered = _recover(distinct)
        if recovered is not None and accept(recovered[0]):
            secret, chosen = recovered
            good = chosen[0]
            left_out = [position for position, s in enumerate(shares)
                        if (s.split, s.commitment) != (good.split, good.commitment)
                        or s not in signed or not _fits(s, secret, chosen)]  # fmt: skip
            return secret, left_out
    largest = max(splits.values(), key=len)
    threshold = next(iter(largest.values())).threshold
    if len(largest) < threshold:
        raise ShareError(f"{len(largest)} distinct signed share(s) given; this split needs {threshold}")
    raise ShareError(f"no {threshold} of the {len(largest)} signed shares recover the organisation's keys as recorded")


def _recover(distinct: dict[int, Share]) -> tuple[bytes, tuple[Share, ...]] | None:
    """The secret the first ``threshold`` of these shares of one split open, and those
    shares. Shares the organisation signed lie on one polynomial, so any ``threshold``
    of them open it; one try per split (a signer's inconsistent shares cannot make
    recovery try every combination)."""
    threshold = next(iter(distinct.values())).threshold
    chosen = tuple(sorted(distinct.values(), key=lambda s: s.index)[:threshold])
    if len(chosen) < threshold:
        return None
    secret = _open(chosen)
    if secret is None or commitment_of(secret) != chosen[0].commitment:
        return None
    return secret, chosen


def _fits(share: Share, secret: bytes, chosen: tuple[Share, ...]) -> bool:
    """Whether ``share`` lies on the polynomial through ``chosen``, which opened ``secret``."""
    return share in chosen or _open((share, *chosen[1:])) == secret
