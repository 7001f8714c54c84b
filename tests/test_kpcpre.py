"""KP-CPRE on its own: re-encryption works exactly when the policy holds, and every way
to cheat (a proxy interpolating over leaves it may not use, leaves mixed from two keys,
the wrong recipient, tampered bytes or fields, points outside the group) fails."""

from __future__ import annotations

import hashlib
from dataclasses import fields, replace

import pymcl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc.bls.hash_to_curve import map_to_curve_G2
from py_ecc.fields import optimized_bls12_381_FQ2 as FQ2
from py_ecc.optimized_bls12_381 import FQ, add, multiply, normalize

from twinledger.core.encoding import decode, encode
from twinledger.crypto import groups
from twinledger.crypto.kpcpre import (
    Ciphertext,
    PolicyNotSatisfied,
    ReEncryptedCiphertext,
    ReEncryptionKey,
    SecretKey,
    decrypt,
    encrypt,
    keygen,
    reencrypt,
    rkgen,
)
from twinledger.crypto.policy import Leaf, Policy, any_of, gate, leaves, parse_policy
from twinledger.errors import DecryptionFailed

OWNER = keygen()
AUDITOR = keygen()
OTHER = keygen()
POLICY = parse_policy("twin:plant-7 and (kind:sensor or kind:document)")
GRANT = rkgen(OWNER, POLICY, AUDITOR.public)
KEY, CIPHERTEXT = encrypt(OWNER.public, ["twin:plant-7", "kind:sensor", "component:level-1"])
REENCRYPTED = reencrypt(GRANT, CIPHERTEXT)


class SeededRandom:
    """A test-only deterministic byte stream for known-answer vectors."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self.counter = seed, 0

    def __call__(self, size: int) -> bytes:
        self.counter += 1
        return hashlib.shake_256(self.seed + self.counter.to_bytes(8, "big")).digest(size)


def holds(policy: Policy, attributes: set[str]) -> bool:
    """The boolean meaning of a policy, written independently of the scheme's leaf selection."""
    if isinstance(policy, Leaf):
        return policy.attribute in attributes
    return sum(holds(child, attributes) for child in policy.children) >= policy.threshold


# --- the scheme works ---------------------------------------------------------------------


def test_owner_and_recipient_get_the_same_data_key() -> None:
    assert decrypt(OWNER, CIPHERTEXT) == KEY
    assert decrypt(AUDITOR, REENCRYPTED) == KEY
    assert len(KEY) == 32
    assert CIPHERTEXT.associated_data() == REENCRYPTED.associated_data()


def test_every_object_round_trips_through_bytes() -> None:
    for value in (OWNER.public, CIPHERTEXT, REENCRYPTED, GRANT):
        assert type(value).from_bytes(value.to_bytes()) == value
    assert SecretKey.from_bytes(OWNER.to_bytes()).public == OWNER.public


def test_each_encryption_is_fresh() -> None:
    key, ciphertext = encrypt(OWNER.public, ["twin:plant-7", "kind:sensor", "component:level-1"])
    assert key != KEY and ciphertext.c1 != CIPHERTEXT.c1


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_reencryption_succeeds_exactly_when_the_policy_holds(data: st.DataObject) -> None:
    universe = ["a", "b", "c", "d", "e"]
    policy = data.draw(policies(universe))
    attributes = data.draw(st.sets(st.sampled_from(universe), min_size=1))
    key = rkgen(OWNER, policy, AUDITOR.public)
    data_key, ciphertext = encrypt(OWNER.public, attributes)
    if holds(policy, attributes):
        assert decrypt(AUDITOR, reencrypt(key, ciphertext)) == data_key
    else:
        with pytest.raises(PolicyNotSatisfied):
            reencrypt(key, ciphertext)


def policies(universe: list[str], depth: int = 3) -> st.SearchStrategy[Policy]:
    leaf = st.sampled_from(universe).map(Leaf)
    if depth == 0:
        return leaf

    @st.composite
    def gates(draw: st.DrawFn) -> Policy:
        children = draw(st.lists(policies(universe, depth - 1), min_size=1, max_size=3))
        return gate(draw(st.integers(1, len(children))), children)

    return st.one_of(leaf, gates())


# --- the cryptography refuses cheats (not an if-statement) ----------------------------------


def cheating_reencrypt(key: ReEncryptionKey, ciphertext: Ciphertext, coefficients: dict[int, int],
                       tag_for: dict[str, pymcl.G1]) -> ReEncryptedCiphertext:  # fmt: skip
    """A proxy that skips every policy check and interpolates over the leaves it chooses."""
    combined, denominator = pymcl.G1(), pymcl.GT()
    names = leaves(key.policy)
    for index, coefficient in coefficients.items():
        c = groups.scalar(coefficient)
        d, r = key.leaves[index]
        combined = combined + d * c
        denominator = denominator * groups.pair(tag_for[names[index]] * c, r)
    k = groups.pair(combined, ciphertext.c1) / denominator
    return ReEncryptedCiphertext(ciphertext.owner, key.recipient, ciphertext.attributes, ciphertext.c1,
                                 ciphertext.c2 / k, key.v, key.w)  # fmt: skip


def test_the_honest_path_of_the_cheating_proxy_decrypts() -> None:
    """The stand-in proxy is right when it is given what the policy needs."""
    key = rkgen(OWNER, parse_policy("a and b"), AUDITOR.public)
    data_key, ciphertext = encrypt(OWNER.public, ["a", "b"])
    tags = dict(zip(ciphertext.attributes, ciphertext.tags, strict=True))
    lagrange = {0: 2, 1: groups.ORDER - 1}  # λ1 = 2, λ2 = -1 for the inputs at positions 1 and 2
    assert decrypt(AUDITOR, cheating_reencrypt(key, ciphertext, lagrange, tags)) == data_key


def test_a_proxy_interpolating_over_a_leaf_the_data_lacks_fails_at_decryption() -> None:
    key = rkgen(OWNER, parse_policy("a and b"), AUDITOR.public)
    _, ciphertext = encrypt(OWNER.public, ["a", "c"])
    tags = dict(zip(ciphertext.attributes, ciphertext.tags, strict=True))
    lagrange = {0: 2, 1: groups.ORDER - 1}
    for substitute in ("a", "c"):  # E_b is missing: use another attribute's tag in its place
        forged = cheating_reencrypt(key, ciphertext, lagrange, {"a": tags["a"], "b": tags[substitute]})
        with pytest.raises(DecryptionFailed):
            decrypt(AUDITOR, forged)
    only_a = cheating_reencrypt(key, ciphertext, {0: 1}, tags)  # treat the AND as if leaf a were enough
    with pytest.raises(DecryptionFailed):
        decrypt(AUDITOR, only_a)


def test_leaves_mixed_from_two_keys_fail() -> None:
    first = rkgen(OWNER, parse_policy("a and b"), AUDITOR.public)
    second = rkgen(OWNER, parse_policy("c and d"), AUDITOR.public)
    data_key, ciphertext = encrypt(OWNER.public, ["a", "d"])
    for key in (first, second):
        with pytest.raises(PolicyNotSatisfied):
            reencrypt(key, ciphertext)
    mixed = ReEncryptionKey(OWNER.public, AUDITOR.public, parse_policy("a and d"),
                            (first.leaves[0], second.leaves[1]), first.v, first.w)  # fmt: skip
    with pytest.raises(DecryptionFailed):
        decrypt(AUDITOR, reencrypt(mixed, ciphertext))
    # two keys for the very same policy: their leaves do not combine either
    again = rkgen(OWNER, parse_policy("a and b"), AUDITOR.public)
    _, both = encrypt(OWNER.public, ["a", "b"])
    assert decrypt(AUDITOR, reencrypt(again, both)) == decrypt(OWNER, both)
    for v, w in ((first.v, first.w), (again.v, again.w)):
        crossed = replace(first, leaves=(first.leaves[0], again.leaves[1]), v=v, w=w)
        with pytest.raises(DecryptionFailed):
            decrypt(AUDITOR, reencrypt(crossed, both))


def test_a_key_with_a_weaker_policy_written_into_it_fails() -> None:
    weakened = replace(GRANT, policy=any_of([Leaf("twin:plant-7"), Leaf("kind:sensor"), Leaf("kind:document")]))
    with pytest.raises(DecryptionFailed):
        decrypt(AUDITOR, reencrypt(weakened, CIPHERTEXT))


def test_the_wrong_recipient_cannot_decrypt() -> None:
    with pytest.raises(DecryptionFailed):
        decrypt(OTHER, REENCRYPTED)
    with pytest.raises(DecryptionFailed):  # relabelled for the other party, still its key cannot open it
        decrypt(OTHER, replace(REENCRYPTED, recipient=OTHER.public))
    with pytest.raises(DecryptionFailed):  # nor can anyone open the owner's ciphertext directly
        decrypt(AUDITOR, CIPHERTEXT)
    with pytest.raises(DecryptionFailed):  # a grant of another owner does not apply
        reencrypt(rkgen(OTHER, POLICY, AUDITOR.public), CIPHERTEXT)


# --- tampering ----------------------------------------------------------------------------


DOCUMENT_KEY, DOCUMENT = encrypt(OWNER.public, ["twin:plant-7", "kind:document"])
PRODUCTION = encrypt(OWNER.public, ["twin:plant-7", "kind:production"])[1]


Encoded = Ciphertext | ReEncryptedCiphertext | ReEncryptionKey


def assert_unusable(original: Encoded, tampered: bytes) -> None:
    """Decoding ``tampered`` or every use its holder makes of it fails with the generic error.

    A grant key is a set of per-leaf parts, and a ciphertext uses only the leaves it
    satisfies: a tampered key must fail for at least one ciphertext it covered and must
    never open one it did not. A policy changed into another valid one may also be
    refused as unsatisfied. (On a proxy, the key's hash recorded with the grant catches
    any change before use.)
    """
    try:
        value = type(original).from_bytes(tampered)
    except DecryptionFailed:
        return
    if isinstance(value, Ciphertext):
        for attempt in (lambda: decrypt(OWNER, value), lambda: reencrypt(GRANT, value)):
            with pytest.raises(DecryptionFailed):
                attempt()
    elif isinstance(value, ReEncryptedCiphertext):
        with pytest.raises(DecryptionFailed):
            decrypt(AUDITOR, value)
    else:
        with pytest.raises((DecryptionFailed, PolicyNotSatisfied)):
            decrypt(AUDITOR, reencrypt(value, PRODUCTION))
        opened = []
        for ciphertext, data_key in ((CIPHERTEXT, KEY), (DOCUMENT, DOCUMENT_KEY)):
            try:
                opened.append(decrypt(AUDITOR, reencrypt(value, ciphertext)) == data_key)
            except (DecryptionFailed, PolicyNotSatisfied) as error:
                assert isinstance(error, DecryptionFailed) or value.policy != POLICY
                opened.append(False)
        assert not all(opened)


@pytest.mark.parametrize("original", [CIPHERTEXT, REENCRYPTED, GRANT], ids=["ciphertext", "re-encrypted", "grant-key"])
def test_every_flipped_byte_fails_with_the_one_generic_error(original: Encoded) -> None:
    encoded = original.to_bytes()
    for position in range(len(encoded)):
        tampered = bytearray(encoded)
        tampered[position] ^= 1 << (position % 8)
        assert_unusable(original, bytes(tampered))


@pytest.mark.parametrize("original", [CIPHERTEXT, REENCRYPTED, GRANT], ids=["ciphertext", "re-encrypted", "grant-key"])
def test_every_field_replaced_with_a_valid_value_fails(original: Encoded) -> None:
    _, stranger = encrypt(OTHER.public, ["twin:plant-7", "kind:sensor", "component:level-2"])
    other_grant = rkgen(OWNER, POLICY, AUDITOR.public)
    donors = {Ciphertext: stranger, ReEncryptedCiphertext: reencrypt(other_grant, DOCUMENT), ReEncryptionKey: other_grant}
    donor = donors[type(original)]
    for field in fields(original):  # type: ignore[arg-type]
        if field.name in ("recipient", "policy"):
            continue  # covered by the recipient and weakened-policy tests
        if getattr(original, field.name) == getattr(donor, field.name):
            continue
        tampered = replace(original, **{field.name: getattr(donor, field.name)})  # type: ignore[type-var]
        assert_unusable(original, tampered.to_bytes())


def test_attribute_lists_must_be_canonical() -> None:
    obj = decode(CIPHERTEXT.to_bytes())
    for attributes in (list(reversed(obj["attributes"])), obj["attributes"] + obj["attributes"][:1], [], [" kind:sensor"]):
        with pytest.raises(DecryptionFailed):
            Ciphertext.from_bytes(encode({**obj, "attributes": attributes}))


def test_objects_of_another_kind_or_suite_are_refused() -> None:
    obj = decode(CIPHERTEXT.to_bytes())
    for change in ({"type": "re-encrypted"}, {"suite": "twinledger-kpcpre/bls12-381/0"}, {"extra": b""}):
        with pytest.raises(DecryptionFailed):
            Ciphertext.from_bytes(encode({**obj, **change}))
    with pytest.raises(DecryptionFailed):
        ReEncryptedCiphertext.from_bytes(CIPHERTEXT.to_bytes())
    for junk in (b"", b"\x00" * 40, b"\xc1"):
        with pytest.raises(DecryptionFailed):
            ReEncryptionKey.from_bytes(junk)


# --- points ---------------------------------------------------------------------------------

P = 0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB
SIGN = 1 << 383  # mcl's flag for the larger y in a compressed point


def compressed_g1(x: int) -> list[bytes]:
    return [(x | flag).to_bytes(48, "little") for flag in (0, SIGN)]


def test_g1_points_outside_the_subgroup_are_refused() -> None:
    x = next(x for x in range(1, 100) if pow((x**3 + 4) % P, (P - 1) // 2, P) == 1)  # on the curve
    for encoded in compressed_g1(x):
        with pytest.raises(DecryptionFailed):
            groups.decode_g1(encoded)
    double = groups.G1_GENERATOR * groups.scalar(2)
    x_double = int(str(double).split()[1])
    assert double in [groups.decode_g1(encoded) for encoded in compressed_g1(x_double)]  # the encoding is right


def test_g2_points_outside_the_subgroup_are_refused() -> None:
    point = normalize(map_to_curve_G2(FQ2([5, 7])))  # on the curve, not yet multiplied by the cofactor
    x0, x1 = (int(c) for c in point[0].coeffs)
    candidates = [(x0.to_bytes(48, "little") + (x1 | flag).to_bytes(48, "little")) for flag in (0, SIGN)]
    for encoded in candidates:
        with pytest.raises(DecryptionFailed):
            groups.decode_g2(encoded)
    double = groups.G2_GENERATOR * groups.scalar(2)
    _, a, b, *_ = (int(part) for part in str(double).split())
    assert double in [groups.decode_g2(a.to_bytes(48, "little") + (b | flag).to_bytes(48, "little")) for flag in (0, SIGN)]


def test_gt_elements_of_the_wrong_order_are_refused() -> None:
    one = bytearray(pymcl.GT().serialize())
    two = bytes([2]) + bytes(one[1:])  # the field element 2: not of order r
    pymcl.GT.deserialize(two)  # mcl alone takes it
    with pytest.raises(DecryptionFailed):
        groups.decode_gt(two)
    with pytest.raises(DecryptionFailed):
        groups.decode_gt(bytes(len(one)))


def test_identity_and_out_of_range_scalars_are_refused() -> None:
    for decoder, size in ((groups.decode_g1, 48), (groups.decode_g2, 96)):
        identity = bytes(size)
        with pytest.raises(DecryptionFailed):
            decoder(identity)
    for value in (0, groups.ORDER, 2**256 - 1):
        with pytest.raises(DecryptionFailed):
            groups.decode_scalar(value.to_bytes(32, "little"))


# --- hashing to the curve, checked against an independent implementation --------------------

FT_C1 = 0xBE32CE5FBEED9CA374D38C0ED41EEFD5BB675277CDF12D11BC2FB026C41400045C03FFFFFFFDFFFD
FT_C2 = 0x5F19672FDF76CE51BA69C6076A0F77EADDB3A93BE6F89688DE17D813620A00022E01FFFFFFFEFFFE
G1_COFACTOR = 0x396C8C005555E1568C00AAAB0000AAAB


def fouque_tibouchi(message: bytes) -> tuple:
    """mcl's encoding to G1, written from the paper (Fouque–Tibouchi 2012) with py_ecc's arithmetic."""
    t = int.from_bytes(hashlib.sha512(message).digest()[:48], "little") & ((1 << 381) - 1)
    if t >= P:
        t &= (1 << 380) - 1
    negative = pow(t, (P - 1) // 2, P) == P - 1
    w = FT_C1 * t * pow(t * t + 5, -1, P) % P
    first = (FT_C2 - t * w) % P
    for x in (first, (-first - 1) % P, (pow(w * w, -1, P) + 1) % P):
        y = pow((x**3 + 4) % P, (P + 1) // 4, P)
        if y * y % P == (x**3 + 4) % P:
            break
    return multiply((FQ(x), FQ(-y if negative else y), FQ(1)), G1_COFACTOR)


@pytest.mark.parametrize("message", [b"", b"abc", b"twinledger/kpcpre/attribute:kind:sensor"])
def test_hash_to_g1_matches_an_independent_implementation(message: bytes) -> None:
    tagged = encode(["test", [message]])
    expected = normalize(add(fouque_tibouchi(b"\x00" + tagged), fouque_tibouchi(b"\x01" + tagged)))
    _, x, y = (int(part) for part in str(groups.hash_to_g1("test", message)).split())
    assert (x, y) == (int(expected[0]), int(expected[1]))


# --- known answers --------------------------------------------------------------------------


def test_known_answer_vectors_from_a_seeded_generator() -> None:
    """Pins the encoding and the algorithms: any change to either shows up here."""
    random = SeededRandom(b"twinledger kpcpre vectors")
    owner, recipient = keygen(random), keygen(random)
    policy = parse_policy("twin:plant-7 and (kind:sensor or kind:document)")
    key = rkgen(owner, policy, recipient.public, random)
    data_key, ciphertext = encrypt(owner.public, ["twin:plant-7", "kind:sensor"], random)
    reencrypted = reencrypt(key, ciphertext)
    digests = {name: hashlib.sha256(value).hexdigest()[:16] for name, value in (
        ("owner", owner.public.to_bytes()), ("key", key.to_bytes()), ("ciphertext", ciphertext.to_bytes()),
        ("reencrypted", reencrypted.to_bytes()), ("data_key", data_key))}  # fmt: skip
    assert digests == KNOWN_ANSWERS
    assert decrypt(recipient, reencrypted) == data_key


KNOWN_ANSWERS = {
    "owner": "e3835950fd23e6d7",
    "key": "c1da53dc471d7fb6",
    "ciphertext": "c925679587d83518",
    "reencrypted": "de84e850a050fb0d",
    "data_key": "17eecad3a88cfeff",
}
