"""BLS12-381 behind the few operations KP-CPRE needs, so the backend can be swapped.

The backend is mcl through ``pymcl``: the fastest pairing available to Python here, with
full G1/G2/GT arithmetic. Everything that touches the backend's types is in this module.

* Decoding checks every point: mcl refuses G1/G2 points outside the prime-order
  subgroup (tests/test_kpcpre.py shows it with a point of the full curve), identity is
  refused here, and GT elements are checked for order r, which mcl does not do.
* Hashing to G1 adds two of mcl's Fouque–Tibouchi encodings of independent hashes of
  the message: one encoding alone is not indifferentiable from a random oracle, the sum
  is (Fouque and Tibouchi 2012). No point is ever derived as g^H(m).
* Scalars come from 64 random bytes reduced modulo r, so their bias is below 2^-128.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pymcl
from pymcl import G1, G2, GT, Fr

from twinledger.core.encoding import encode
from twinledger.errors import DecryptionFailed

__all__ = ["G1", "G2", "GT", "Fr"]

ORDER: int = pymcl.r
SCALAR_SIZE = 32
G1_SIZE = 48
G2_SIZE = 96
GT_SIZE = 576

RandomBytes = Callable[[int], bytes]

G1_GENERATOR: G1 = pymcl.g1
G2_GENERATOR: G2 = pymcl.g2
_ORDER_MINUS_ONE = Fr(str(ORDER - 1), 10)


def scalar(value: int) -> Fr:
    return Fr(str(value % ORDER), 10)


def scalar_value(value: Fr) -> int:
    return int(str(value))


def random_scalar(random_bytes: RandomBytes = os.urandom) -> Fr:
    """A uniformly random non-zero scalar."""
    while True:
        value = int.from_bytes(random_bytes(64), "big") % ORDER
        if value:
            return scalar(value)


def hash_to_scalar(tag: str, *parts: bytes) -> Fr:
    digest = hashlib.sha512(encode([tag, list(parts)])).digest()
    return scalar(int.from_bytes(digest, "big"))


def hash_to_g1(tag: str, *parts: bytes) -> G1:
    message = encode([tag, list(parts)])
    return G1.hash(b"\x00" + message) + G1.hash(b"\x01" + message)


def pair(a: G1, b: G2) -> GT:
    return pymcl.pairing(a, b)


GT_GENERATOR: GT = pair(G1_GENERATOR, G2_GENERATOR)


def random_gt(random_bytes: RandomBytes = os.urandom) -> GT:
    return GT_GENERATOR ** random_scalar(random_bytes)


def decode_scalar(data: bytes) -> Fr:
    if type(data) is not bytes or len(data) != SCALAR_SIZE:
        raise DecryptionFailed()
    value = int.from_bytes(data, "little")
    if not 0 < value < ORDER:
        raise DecryptionFailed()
    return scalar(value)


def encode_scalar(value: Fr) -> bytes:
    return scalar_value(value).to_bytes(SCALAR_SIZE, "little")


def decode_g1(data: bytes) -> G1:
    return _decode_point(G1, G1_SIZE, data)


def decode_g2(data: bytes) -> G2:
    return _decode_point(G2, G2_SIZE, data)


def _decode_point(group: type[G1] | type[G2], size: int, data: bytes) -> G1 | G2:
    if type(data) is not bytes or len(data) != size:
        raise DecryptionFailed()
    try:
        point = group.deserialize(data)
    except ValueError as exc:
        raise DecryptionFailed() from exc
    if point.is_zero() or point.serialize() != data:
        raise DecryptionFailed()
    return point


def decode_gt(data: bytes) -> GT:
    """A GT element of order r: mcl parses any element of the field, so the order is checked here."""
    if type(data) is not bytes or len(data) != GT_SIZE:
        raise DecryptionFailed()
    try:
        element = GT.deserialize(data)
    except ValueError as exc:
        raise DecryptionFailed() from exc
    if element.is_zero() or element.serialize() != data or element**_ORDER_MINUS_ONE != ~element:
        raise DecryptionFailed()
    return element
