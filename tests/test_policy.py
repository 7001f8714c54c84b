"""The policy language: parsing, one canonical form, limits, and the secret-sharing
arithmetic that KP-CPRE builds on."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinledger.core.encoding import decode, encode
from twinledger.crypto.groups import ORDER
from twinledger.crypto.policy import (
    MAX_DEPTH,
    MAX_LEAVES,
    Leaf,
    Policy,
    PolicyError,
    attribute_set,
    from_obj,
    gate,
    leaf_coefficients,
    leaves,
    parse_policy,
    policy_text,
    satisfied,
    share_secret,
    to_obj,
)

UNIVERSE = ["twin:plant-7", "kind:sensor", "kind:document", "component:level 1", "sync", "é"]


def trees(depth: int = 3) -> st.SearchStrategy[Policy]:
    leaf = st.sampled_from(UNIVERSE).map(Leaf)
    if depth == 0:
        return leaf

    @st.composite
    def gates(draw: st.DrawFn) -> Policy:
        children = draw(st.lists(trees(depth - 1), min_size=1, max_size=4))
        return gate(draw(st.integers(1, len(children))), children)

    return st.one_of(leaf, gates())


def holds(policy: Policy, attributes: set[str]) -> bool:
    if isinstance(policy, Leaf):
        return policy.attribute in attributes
    return sum(holds(child, attributes) for child in policy.children) >= policy.threshold


def test_the_example_policy() -> None:
    policy = parse_policy("twin:plant-7 AND (kind:sensor Or kind:document)")
    assert policy_text(policy) == "twin:plant-7 and (kind:sensor or kind:document)"
    assert satisfied(policy, {"twin:plant-7", "kind:document"})
    assert not satisfied(policy, {"twin:plant-7", "kind:production"})
    assert not satisfied(policy, {"kind:sensor", "kind:document"})


def test_thresholds_quotes_and_precedence() -> None:
    policy = parse_policy('2 of (site:linz, site:graz, "site:st pölten") or auditor')
    assert satisfied(policy, {"site:graz", "site:st pölten"})
    assert satisfied(policy, {"auditor"})
    assert not satisfied(policy, {"site:graz"})
    assert parse_policy("a or b and c") == parse_policy("a or (b and c)")
    assert parse_policy("1 of (a)") == Leaf("a")
    assert parse_policy("a and (b and c)") != parse_policy("a and b and c")  # parentheses keep the shape
    assert parse_policy("a and b and c") == parse_policy("c and b and a")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("a and", "found the end"),
        ("(a or b", "expected ')'"),
        ("a or or b", "found 'or'"),
        ("3 of (a, b)", "threshold 3"),
        ("0 of (a, b)", "threshold 0"),
        ('a and "b', "unclosed quote"),
        ("a b", "unexpected 'b'"),
        ("x" * 129, "longer than 128 bytes"),
        (" and ".join(f"a{i}" for i in range(MAX_LEAVES + 1)), f"more than {MAX_LEAVES}"),
        ("(" * (MAX_DEPTH + 2) + "a" + ")" * (MAX_DEPTH + 2), "deeper"),
        ("a" * 5000, "longer than 4096"),
    ],
)
def test_bad_policies_are_named(text: str, complaint: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(complaint)):
        parse_policy(text)


def test_attributes_are_normalised_and_checked() -> None:
    assert attribute_set(["kind:sensor", "e\u0301", "kind:sensor"]) == ("kind:sensor", "é")
    for bad in ["", " padded", "tab\there", 'quote"d', "AND", "x" * 129]:
        with pytest.raises(PolicyError):
            attribute_set([bad])
    with pytest.raises(PolicyError, match="at least one"):
        attribute_set([])


@settings(max_examples=300, deadline=None)
@given(trees())
def test_text_and_encoding_round_trip_to_one_canonical_form(policy: Policy) -> None:
    assert parse_policy(policy_text(policy)) == policy
    assert from_obj(decode(encode(to_obj(policy)))) == policy


def test_non_canonical_encodings_are_refused() -> None:
    obj = to_obj(parse_policy("a and (b or c)"))
    assert obj == [2, [["a"], [1, [["b"], ["c"]]]]]
    for bad in ([2, [[1, [["b"], ["c"]]], ["a"]]], [1, [["a"]]], [3, [["a"], ["b"]]], [2, []], ["a", "b"], {"a": 1}):
        with pytest.raises(PolicyError):
            from_obj(bad)


@settings(max_examples=300, deadline=None)
@given(trees(), st.sets(st.sampled_from(UNIVERSE)), st.integers(1, ORDER - 1), st.randoms(use_true_random=False))
def test_shares_recombine_to_the_secret_exactly_when_the_policy_holds(
    policy: Policy, attributes: set[str], secret: int, rng: random.Random
) -> None:
    shares = share_secret(policy, secret, ORDER, lambda: rng.randrange(ORDER))
    assert len(shares) == len(leaves(policy))
    coefficients = leaf_coefficients(policy, attributes, ORDER)
    assert (coefficients is not None) == holds(policy, attributes)
    if coefficients is not None:
        assert all(leaves(policy)[index] in attributes for index in coefficients)
        assert sum(shares[index] * c for index, c in coefficients.items()) % ORDER == secret
        assert sum(coefficients.values()) % ORDER == 1


def test_the_smallest_satisfying_leaf_set_is_chosen() -> None:
    policy = parse_policy("(a and b and c) or d")
    coefficients = leaf_coefficients(policy, {"a", "b", "c", "d"}, ORDER)
    assert coefficients is not None and [leaves(policy)[i] for i in coefficients] == ["d"]
