"""Shamir secret sharing of a secret among trustees, k of n needed to recover it.

The secret (any length) is encrypted with AES-256-GCM under a fresh 32-byte key, and
that key is split over the prime field of 2^521 − 1 with a random polynomial of degree
k − 1; every share carries the encrypted secret, so any k shares are all recovery needs.
Fewer than k shares reveal nothing about the key. A damaged share, or one of another
split, makes AES-GCM refuse the result; given more than k shares, recovery finds k that
agree and names the ones that do not.
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from twinledger.core.encoding import decode, encode
from twinledger.errors import DecodeError, TwinledgerError

PRIME = 2**521 - 1
MAX_SHARES = 255
FORMAT = "twinledger-share/1"


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
    label: str = ""
    """What was split (shown to trustees), bound into the ciphertext."""

    def to_bytes(self) -> bytes:
        return encode({"format": FORMAT, "split": self.split, "threshold": self.threshold, "count": self.count,
                       "index": self.index, "value": self.value.to_bytes(66, "big"), "sealed": self.sealed,
                       "label": self.label})  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        try:
            doc = decode(data, max_size=1 << 20)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or set(doc) != {
                    "format", "split", "threshold", "count", "index", "value", "sealed", "label"}:  # fmt: skip
                raise DecodeError("not a twinledger share")
            share = cls(doc["split"], doc["threshold"], doc["count"], doc["index"], int.from_bytes(doc["value"], "big"),
                        doc["sealed"], doc["label"])  # fmt: skip
        except (DecodeError, TypeError, KeyError) as exc:
            raise ShareError("not a twinledger key share (damaged or another file)") from exc
        if not (1 <= share.threshold <= share.count <= MAX_SHARES and 1 <= share.index <= share.count
                and share.value < PRIME and len(share.split) == 16):  # fmt: skip
            raise ShareError("not a twinledger key share (its numbers are out of range)")
        return share


def _associated(split: bytes, threshold: int, count: int, label: str) -> bytes:
    return encode([FORMAT, split, threshold, count, label])


def split_secret(secret: bytes, threshold: int, count: int, label: str = "") -> list[Share]:
    if not 1 <= threshold <= count <= MAX_SHARES:
        raise ShareError(f"need 1 ≤ threshold ≤ shares ≤ {MAX_SHARES}; got {threshold} of {count}")
    key, split, nonce = os.urandom(32), os.urandom(16), os.urandom(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, secret, _associated(split, threshold, count, label))
    coefficients = [int.from_bytes(key, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for index in range(1, count + 1):
        value = 0
        for coefficient in reversed(coefficients):
            value = (value * index + coefficient) % PRIME
        shares.append(Share(split, threshold, count, index, value, sealed, label))
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


def combine_shares(shares: list[Share]) -> tuple[bytes, list[int]]:
    """The secret, and the indices of given shares that do not fit it (damaged or foreign)."""
    if not shares:
        raise ShareError("no shares given")
    threshold = shares[0].threshold
    distinct = {share.index: share for share in shares}
    if len(distinct) < threshold:
        raise ShareError(f"{len(distinct)} distinct share(s) given; this split needs {threshold}")
    for chosen in itertools.combinations(sorted(distinct.values(), key=lambda s: s.index), threshold):
        if len({(s.split, s.threshold, s.count, s.sealed, s.label) for s in chosen}) != 1:
            continue
        secret = _open(chosen)
        if secret is not None:
            good = set(chosen)
            misfits = [s.index for s in distinct.values() if s not in good and not _fits(s, chosen)]
            return secret, sorted(misfits)
    raise ShareError(f"no {threshold} of the {len(distinct)} shares recover the key: shares are damaged or from "
                     "different splits")  # fmt: skip


def _fits(share: Share, chosen: tuple[Share, ...]) -> bool:
    """Whether ``share`` lies on the polynomial ``chosen`` define (and belongs to the same split)."""
    if (share.split, share.sealed) != (chosen[0].split, chosen[0].sealed):
        return False
    return _open((share, *chosen[1:])) is not None
