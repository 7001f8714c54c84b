"""BLS12-381 behind the few operations KP-CPRE needs, so the backend can be swapped.

The backend is mcl (herumi/mcl), the fastest pairing library reachable from Python
here. It comes compiled inside the ``pymcl`` wheel, whose extension module exports mcl's
whole C API; this module calls that API through ctypes rather than using pymcl's
classes, which offer one pairing at a time and only mcl's legacy map to the curve. The C
API gives what the scheme wants: RFC 9380 hash-to-curve with our own domain tags, and a
product of pairings sharing one final exponentiation (ReEnc needs |L| + 1 of them).

* Points are encoded in the standard compressed form (ZCash / IETF: big-endian, flag
  bits). Decoding refuses anything but the canonical encoding of a point of the
  prime-order subgroup other than the identity; GT elements are checked for order r.
* Scalars are Python ints modulo r; random ones come from 64 random bytes, so their
  bias is below 2^-128.
* No point is ever derived as g^H(m).

ctypes releases the GIL during each call, so these operations run in parallel threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable, Sequence

import pymcl._pymcl as _extension

from twinledger.core.encoding import encode
from twinledger.errors import DecryptionFailed

ORDER = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
SCALAR_SIZE = 32
G1_SIZE = 48
G2_SIZE = 96
GT_SIZE = 576
MCL_BLS12_381 = 5
MCL_MAP_TO_MODE_HASH_TO_CURVE = 5

RandomBytes = Callable[[int], bytes]

_U64 = ctypes.c_uint64
_FrRaw = _U64 * 4
_G1Raw = _U64 * 18
_G2Raw = _U64 * 36
_GTRaw = _U64 * 72


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_extension.__file__)
    if (lib.mclBn_getCurveType(), lib.mclBn_getOpUnitSize(), lib.mclBn_getFrByteSize()) != (MCL_BLS12_381, 6, 32):
        raise ImportError("the mcl library in pymcl is not set up for BLS12-381 with 384-bit fields")
    size, pointer, c_int = ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int
    signatures = {
        "mclBnFr_setLittleEndianMod": (c_int, [pointer, pointer, size]),
        "mclBn_pairing": (None, [pointer, pointer, pointer]),
        "mclBn_millerLoopVec": (None, [pointer, pointer, pointer, size]),
        "mclBn_finalExp": (None, [pointer, pointer]),
        "mclBnG1_hashAndMapToWithDst": (c_int, [pointer, pointer, size, pointer, size]),
        "mclBnG1_mulVec": (None, [pointer, pointer, pointer, size]),
        "mclBnGT_setInt": (None, [pointer, ctypes.c_int64]),
        "mclBnGT_pow": (None, [pointer, pointer, pointer]),
    }
    for group in ("G1", "G2", "GT"):
        signatures |= {
            f"mclBn{group}_serialize": (size, [pointer, size, pointer]),
            f"mclBn{group}_deserialize": (size, [pointer, pointer, size]),
            f"mclBn{group}_isEqual": (c_int, [pointer, pointer]),
            f"mclBn{group}_isZero": (c_int, [pointer]),
            f"mclBn{group}_mul": (None, [pointer, pointer, pointer]),
        }
    for group in ("G1", "G2"):
        signatures |= {f"mclBn{group}_{op}": (None, [pointer, pointer, pointer]) for op in ("add", "sub")}
        signatures[f"mclBn{group}_neg"] = (None, [pointer, pointer])
    signatures["mclBnGT_div"] = (None, [pointer, pointer, pointer])
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    lib.mclBn_setETHserialization(1)
    lib.mclBn_verifyOrderG1(1)
    lib.mclBn_verifyOrderG2(1)
    if lib.mclBn_setMapToMode(MCL_MAP_TO_MODE_HASH_TO_CURVE) != 0:
        raise ImportError("the mcl library in pymcl has no RFC 9380 hash-to-curve")
    return lib


_lib = _load()


def _fr(value: int) -> _FrRaw:
    raw = _FrRaw()
    _lib.mclBnFr_setLittleEndianMod(raw, (value % ORDER).to_bytes(SCALAR_SIZE, "little"), SCALAR_SIZE)
    return raw


class _Element:
    """An element of one of the three groups: immutable, compared and hashed by value."""

    __slots__ = ("raw",)
    _raw_type: type[ctypes.Array[ctypes.c_uint64]]
    _name: str
    _size: int

    def __init__(self, raw: ctypes.Array[ctypes.c_uint64] | None = None) -> None:
        self.raw = raw if raw is not None else self._raw_type()

    def serialize(self) -> bytes:
        buffer = ctypes.create_string_buffer(self._size)
        written = getattr(_lib, f"mclBn{self._name}_serialize")(buffer, self._size, self.raw)
        return buffer.raw[:written]

    @classmethod
    def _parse(cls, data: bytes) -> _Element | None:
        element = cls()
        if getattr(_lib, f"mclBn{cls._name}_deserialize")(element.raw, data, len(data)) != len(data):
            return None
        return element

    def is_zero(self) -> bool:
        return bool(getattr(_lib, f"mclBn{self._name}_isZero")(self.raw))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(getattr(_lib, f"mclBn{self._name}_isEqual")(self.raw, other.raw))  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self._name, self.serialize()))

    def __repr__(self) -> str:
        return f"{self._name}({self.serialize().hex()[:16]}…)"


class _Point(_Element):
    __slots__ = ()

    def _op(self, name: str, other: _Point) -> _Point:
        out = type(self)()
        getattr(_lib, f"mclBn{self._name}_{name}")(out.raw, self.raw, other.raw)
        return out

    def __add__(self, other: _Point) -> _Point:
        return self._op("add", other)

    def __sub__(self, other: _Point) -> _Point:
        return self._op("sub", other)

    def __neg__(self) -> _Point:
        out = type(self)()
        getattr(_lib, f"mclBn{self._name}_neg")(out.raw, self.raw)
        return out

    def __mul__(self, scalar: int) -> _Point:
        out = type(self)()
        getattr(_lib, f"mclBn{self._name}_mul")(out.raw, self.raw, _fr(scalar))
        return out


class G1(_Point):
    __slots__ = ()
    _raw_type, _name, _size = _G1Raw, "G1", G1_SIZE


class G2(_Point):
    __slots__ = ()
    _raw_type, _name, _size = _G2Raw, "G2", G2_SIZE


class GT(_Element):
    __slots__ = ()
    _raw_type, _name, _size = _GTRaw, "GT", GT_SIZE

    @classmethod
    def one(cls) -> GT:
        out = cls()
        _lib.mclBnGT_setInt(out.raw, 1)
        return out

    def __mul__(self, other: GT) -> GT:
        out = GT()
        _lib.mclBnGT_mul(out.raw, self.raw, other.raw)
        return out

    def __truediv__(self, other: GT) -> GT:
        out = GT()
        _lib.mclBnGT_div(out.raw, self.raw, other.raw)
        return out

    def __pow__(self, scalar: int) -> GT:
        out = GT()
        _lib.mclBnGT_pow(out.raw, self.raw, _fr(scalar))
        return out


def _generator(group: type[G1] | type[G2], hex_encoding: str) -> G1 | G2:
    point = group._parse(bytes.fromhex(hex_encoding))
    assert point is not None
    return point  # type: ignore[return-value]


G1_GENERATOR: G1 = _generator(G1, "97f1d3a73197d7942695638c4fa9ac0fc3688c4f9774b905a14e3a3f171bac586c55e83ff97a1aeffb3af00adb22c6bb")  # type: ignore[assignment]  # noqa: E501
G2_GENERATOR: G2 = _generator(G2, "93e02b6052719f607dacd3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf11213945d57e5ac7d055d042b7e024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02b4510b647ae3d1770bac0326a805bbefd48056c8c121bdb8")  # type: ignore[assignment]  # noqa: E501


def pair(a: G1, b: G2) -> GT:
    out = GT()
    _lib.mclBn_pairing(out.raw, a.raw, b.raw)
    return out


def pair_product(pairs: Sequence[tuple[G1, G2]]) -> GT:
    """∏ e(a_i, b_i) with one final exponentiation for all of them."""
    count = len(pairs)
    left = (_G1Raw * count)(*(a.raw for a, _ in pairs))
    right = (_G2Raw * count)(*(b.raw for _, b in pairs))
    loop, out = GT(), GT()
    _lib.mclBn_millerLoopVec(loop.raw, left, right, count)
    _lib.mclBn_finalExp(out.raw, loop.raw)
    return out


def g1_multi_mul(points: Sequence[G1], scalars: Sequence[int]) -> G1:
    """∏ points_i ^ scalars_i in one multi-exponentiation."""
    count = len(points)
    bases = (_G1Raw * count)(*(point.raw for point in points))
    exponents = (_FrRaw * count)(*(_fr(value) for value in scalars))
    out = G1()
    _lib.mclBnG1_mulVec(out.raw, bases, exponents, count)
    return out


GT_GENERATOR: GT = pair(G1_GENERATOR, G2_GENERATOR)


def random_scalar(random_bytes: RandomBytes = os.urandom) -> int:
    """A uniformly random non-zero scalar."""
    while True:
        value = int.from_bytes(random_bytes(64), "big") % ORDER
        if value:
            return value


def random_gt(random_bytes: RandomBytes = os.urandom) -> GT:
    return GT_GENERATOR ** random_scalar(random_bytes)


def hash_to_scalar(tag: str, *parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(encode([tag, list(parts)])).digest(), "big") % ORDER


def hash_to_g1(purpose: str, *parts: bytes) -> G1:
    """RFC 9380 hash_to_curve, suite BLS12381G1_XMD:SHA-256_SSWU_RO_, one domain tag per purpose."""
    dst = hash_dst(purpose)
    message = encode(list(parts))
    out = G1()
    if _lib.mclBnG1_hashAndMapToWithDst(out.raw, message, len(message), dst, len(dst)) != 0:
        raise RuntimeError("hash to curve failed")
    return out


def hash_dst(purpose: str) -> bytes:
    return f"TWINLEDGER-V01-CS01-{purpose}-with-BLS12381G1_XMD:SHA-256_SSWU_RO_".encode("ascii")


def decode_scalar(data: bytes) -> int:
    if type(data) is not bytes or len(data) != SCALAR_SIZE:
        raise DecryptionFailed()
    value = int.from_bytes(data, "big")
    if not 0 < value < ORDER:
        raise DecryptionFailed()
    return value


def encode_scalar(value: int) -> bytes:
    return (value % ORDER).to_bytes(SCALAR_SIZE, "big")


def decode_g1(data: bytes) -> G1:
    return _decode(G1, data)  # type: ignore[return-value]


def decode_g2(data: bytes) -> G2:
    return _decode(G2, data)  # type: ignore[return-value]


def decode_gt(data: bytes) -> GT:
    """A GT element of order r, not the identity: mcl parses any element of the field, so
    the order is checked here."""
    element = _decode(GT, data)
    if element == GT.one() or element ** (ORDER - 1) * element != GT.one():  # type: ignore[operator]
        raise DecryptionFailed()  # the identity too: no honest encoding holds it, and it erases what it multiplies
    return element  # type: ignore[return-value]


def _decode(group: type[_Element], data: bytes) -> _Element:
    if type(data) is not bytes or len(data) != group._size:
        raise DecryptionFailed()
    element = group._parse(data)
    if element is None or element.is_zero() or element.serialize() != data:
        raise DecryptionFailed()
    return element
