"""KP-CPRE on its own: re-encryption works exactly when the policy holds, and every way
to cheat (a proxy interpolating over leaves it may not use, leaves mixed from two keys,
the wrong recipient, tampered bytes or fields, points outside the group) fails."""

from __future__ import annotations

import hashlib
from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc.bls.hash_to_curve import hash_to_G1, map_to_curve_G2
from py_ecc.bls.point_compression import compress_G1, compress_G2
from py_ecc.fields import optimized_bls12_381_FQ as FQ
from py_ecc.fields import optimized_bls12_381_FQ2 as FQ2

from twinledger.core.encoding import decode, encode
from twinledger.crypto import groups, kpcpre
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
                       tag_for: dict[str, groups.G1]) -> ReEncryptedCiphertext:  # fmt: skip
    """A proxy that skips every policy check and interpolates over the leaves it chooses."""
    names = leaves(key.policy)
    k = groups.GT.one()
    for index, coefficient in coefficients.items():
        d, r = key.leaves[index]
        k = k * groups.pair(d * coefficient, ciphertext.c1) / groups.pair(tag_for[names[index]] * coefficient, r)
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

P = FQ.field_modulus


def test_g1_points_outside_the_subgroup_are_refused() -> None:
    x = next(x for x in range(1, 100) if pow((x**3 + 4) % P, (P - 1) // 2, P) == 1)
    y = pow((x**3 + 4) % P, (P + 1) // 4, P)
    point = (FQ(x), FQ(y), FQ(1))  # on the curve, outside the subgroup of order r
    for candidate in (point, (FQ(x), -FQ(y), FQ(1))):
        with pytest.raises(DecryptionFailed):
            groups.decode_g1(compress_G1(candidate).to_bytes(48, "big"))
    double = groups.G1_GENERATOR * 2
    assert groups.decode_g1(double.serialize()) == double


def test_g2_points_outside_the_subgroup_are_refused() -> None:
    point = map_to_curve_G2(FQ2([5, 7]))  # on the curve, not yet multiplied by the cofactor
    high, low = compress_G2(point)
    with pytest.raises(DecryptionFailed):
        groups.decode_g2(high.to_bytes(48, "big") + low.to_bytes(48, "big"))
    double = groups.G2_GENERATOR * 2
    assert groups.decode_g2(double.serialize()) == double


def test_gt_elements_of_the_wrong_order_are_refused() -> None:
    one = groups.GT.one().serialize()
    assert one.count(1) == 1
    two = one.replace(b"\x01", b"\x02")  # the field element 2: not of order r
    assert groups.GT._parse(two) is not None  # mcl alone takes it
    with pytest.raises(DecryptionFailed):
        groups.decode_gt(two)
    with pytest.raises(DecryptionFailed):
        groups.decode_gt(bytes(len(one)))
    with pytest.raises(DecryptionFailed):  # found by review: the identity has order 1, which divides r
        groups.decode_gt(one)
    assert groups.decode_gt(groups.GT_GENERATOR.serialize()) == groups.GT_GENERATOR


def test_the_proxy_refuses_a_ciphertext_whose_tags_are_not_its_attributes_to_r() -> None:
    """Found by review (kp1.py #3): the Fujisaki–Okamoto check covered the tags only as
    hash input, so an encryptor could put any E_a in, keep a valid C4, and the proxy
    transformed it — answering as an oracle. Each tag must be Ha(a)^r to C1's r."""
    r_value = groups.random_gt()
    attributes = CIPHERTEXT.attributes
    r = kpcpre._h1(r_value, attributes, OWNER.public)
    c1 = groups.G2_GENERATOR * r
    c2 = r_value * OWNER.public.pairing_value**r
    made_up = tuple(groups.hash_to_g1("junk", bytes([i])) for i in range(len(attributes)))
    forged = Ciphertext(OWNER.public, attributes, c1, c2, made_up, kpcpre._h4(c1, c2, attributes, made_up) * r)
    with pytest.raises(DecryptionFailed):
        reencrypt(GRANT, forged)
    honest_tags = tuple(kpcpre._attribute_point(a) * r for a in attributes)
    honest = Ciphertext(OWNER.public, attributes, c1, c2, honest_tags, kpcpre._h4(c1, c2, attributes, honest_tags) * r)
    assert decrypt(AUDITOR, reencrypt(GRANT, honest)) == kpcpre._data_key(r_value)
    one_off = (honest_tags[0], made_up[1], *honest_tags[2:])  # one tag wrong, C4 made over the wrong one
    with pytest.raises(DecryptionFailed):
        reencrypt(GRANT, Ciphertext(OWNER.public, attributes, c1, c2, one_off, kpcpre._h4(c1, c2, attributes, one_off) * r))


def test_identity_and_out_of_range_scalars_are_refused() -> None:
    for decoder, size in ((groups.decode_g1, 48), (groups.decode_g2, 96)):
        identity = bytes([0xC0]) + bytes(size - 1)
        with pytest.raises(DecryptionFailed):
            decoder(identity)
    for value in (0, groups.ORDER, 2**256 - 1):
        with pytest.raises(DecryptionFailed):
            groups.decode_scalar(value.to_bytes(32, "big"))


# --- hashing to the curve, checked against an independent implementation --------------------


@pytest.mark.parametrize("parts", [[], [b"abc"], [b"kind:sensor", b"\x00" * 100]])
def test_hash_to_g1_is_rfc_9380_as_computed_by_py_ecc(parts: list[bytes]) -> None:
    expected = hash_to_G1(encode(parts), groups.hash_dst("TEST"), hashlib.sha256)
    assert groups.hash_to_g1("TEST", *parts).serialize() == compress_G1(expected).to_bytes(48, "big")


def test_the_standard_test_vector_of_rfc_9380() -> None:
    """RFC 9380 J.9.1, msg "abc", through mcl with the RFC's own domain tag."""
    dst = b"QUUX-V01-CS02-with-BLS12381G1_XMD:SHA-256_SSWU_RO_"
    expected_x = 0x03567BC5EF9C690C2AB2ECDF6A96EF1C139CC0B2F284DCA0A9A7943388A49A3AEE664BA5379A7655D3C68900BE2F6903
    point = groups.G1()
    assert groups._lib.mclBnG1_hashAndMapToWithDst(point.raw, b"abc", 3, dst, len(dst)) == 0
    assert int.from_bytes(point.serialize(), "big") & ((1 << 381) - 1) == expected_x


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
    "owner": "31a3925c94010bab",
    "key": "9b766aeb91d8cdb4",
    "ciphertext": "f2d10faecf184eda",
    "reencrypted": "fe9abe66615b19b0",
    "data_key": "98344c96605e96e0",
}
