"""Access policies over public attributes: trees of AND, OR and k-of-n gates.

An attribute is a short string such as ``twin:plant-7``, ``kind:sensor`` or ``sync``:
NFC-normalised, no white space, parentheses, commas or quotes unless written in double
quotes, at most 128 UTF-8 bytes. Policies are parsed from text::

    twin:plant-7 and (kind:sensor or kind:document)
    2 of (site:linz, site:graz, site:wels)
    "component:level sensor 1" or kind:report

``and`` binds tighter than ``or``; keywords are case-insensitive. A chain ``a and b and
c`` is one 3-of-3 gate; parentheses keep the structure written. Every policy has one
canonical form (gate children sorted by their encoding, one-child gates removed), which
is what is encoded, hashed and shown, so equal policies are equal bytes.

The module also holds the arithmetic KP-CPRE needs from a policy, over the integers
modulo a prime: sharing a secret down the tree (Goyal–Pandey–Sahai–Waters 2006) and the
Lagrange coefficients of a smallest set of leaves that satisfies the policy.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twinledger.core.encoding import encode
from twinledger.errors import TwinledgerError

MAX_ATTRIBUTE_BYTES = 128
MAX_ATTRIBUTES = 64
MAX_LEAVES = 64
MAX_DEPTH = 8
MAX_POLICY_TEXT = 4096
KEYWORDS = frozenset({"and", "or", "of"})
_BARE = re.compile(r'[^\s(),"]+')
_TOKEN = re.compile(r'\s*(?:(?P<open>\()|(?P<close>\))|(?P<comma>,)|"(?P<quoted>[^"]*)"|(?P<bare>[^\s(),"]+))')


class PolicyError(TwinledgerError):
    code = "bad_policy"


@dataclass(frozen=True)
class Leaf:
    attribute: str


@dataclass(frozen=True)
class Gate:
    """Satisfied when at least ``threshold`` of ``children`` are."""

    threshold: int
    children: tuple[Policy, ...]


Policy = Leaf | Gate


def normalise_attribute(text: str) -> str:
    if not isinstance(text, str):
        raise PolicyError("an attribute must be text")
    attribute = unicodedata.normalize("NFC", text)
    if not attribute or attribute != attribute.strip() or not all(ch.isprintable() for ch in attribute):
        raise PolicyError(f"attribute {text!r} is empty, padded or has unprintable characters")
    if '"' in attribute:
        raise PolicyError(f"attribute {text!r} contains a double quote")
    if len(attribute.encode("utf-8")) > MAX_ATTRIBUTE_BYTES:
        raise PolicyError(f"attribute {text[:40]!r}… is longer than {MAX_ATTRIBUTE_BYTES} bytes")
    if attribute.lower() in KEYWORDS:
        raise PolicyError(f"{text!r} is a keyword, not an attribute")
    return attribute


def attribute_set(attributes: Iterable[str]) -> tuple[str, ...]:
    """The canonical attribute set: normalised, de-duplicated, sorted by UTF-8 bytes."""
    normalised = {normalise_attribute(attribute) for attribute in attributes}
    if not normalised:
        raise PolicyError("data needs at least one attribute")
    if len(normalised) > MAX_ATTRIBUTES:
        raise PolicyError(f"more than {MAX_ATTRIBUTES} attributes")
    return tuple(sorted(normalised, key=lambda attribute: attribute.encode("utf-8")))


# --- building and checking -----------------------------------------------------------


def gate(threshold: int, children: Iterable[Policy]) -> Policy:
    """The canonical gate: children sorted, a one-child gate replaced by its child."""
    ordered = tuple(sorted(children, key=_sort_key))
    if not ordered:
        raise PolicyError("a gate needs at least one input")
    if not 1 <= threshold <= len(ordered):
        raise PolicyError(f"threshold {threshold} is not between 1 and the {len(ordered)} inputs")
    if len(ordered) == 1:
        return ordered[0]
    return Gate(threshold, ordered)


def all_of(children: Iterable[Policy]) -> Policy:
    listed = list(children)
    return gate(len(listed), listed)


def any_of(children: Iterable[Policy]) -> Policy:
    return gate(1, children)


def _sort_key(policy: Policy) -> bytes:
    return encode(to_obj(policy))


def check_policy(policy: Policy) -> Policy:
    """Raise PolicyError unless ``policy`` is canonical and within the size and depth limits."""
    if leaf_count(policy) > MAX_LEAVES:
        raise PolicyError(f"policy has more than {MAX_LEAVES} attributes")
    if depth(policy) > MAX_DEPTH:
        raise PolicyError(f"policy nests deeper than {MAX_DEPTH} gates")
    return policy


@functools.lru_cache(maxsize=4096)
def leaf_count(policy: Policy) -> int:
    if isinstance(policy, Leaf):
        return 1
    return sum(leaf_count(child) for child in policy.children)


@functools.lru_cache(maxsize=4096)
def depth(policy: Policy) -> int:
    if isinstance(policy, Leaf):
        return 0
    return 1 + max(depth(child) for child in policy.children)


def leaves(policy: Policy) -> list[str]:
    """Leaf attributes in tree order: the order of a re-encryption key's leaf components."""
    if isinstance(policy, Leaf):
        return [policy.attribute]
    return [attribute for child in policy.children for attribute in leaves(child)]


# --- text ------------------------------------------------------------------------------


def parse_policy(text: str) -> Policy:
    if not isinstance(text, str) or not text.strip():
        raise PolicyError("the policy is empty")
    if len(text) > MAX_POLICY_TEXT:
        raise PolicyError(f"the policy is longer than {MAX_POLICY_TEXT} characters")
    tokens = _tokens(text)
    parser = _Parser(tokens)
    policy = parser.disjunction(0)
    if parser.position != len(tokens):
        raise PolicyError(f"unexpected {tokens[parser.position][1]!r} in the policy")
    return check_policy(policy)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    text, position = text.rstrip(), 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise PolicyError(f"unclosed quote in the policy at character {position + 1}")
        position = match.end()
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "bare" and value.lower() in KEYWORDS:
            kind = value.lower()
        tokens.append((kind, value))
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> str | None:
        return self.tokens[self.position][0] if self.position < len(self.tokens) else None

    def _expect(self, kind: str) -> str:
        if self._peek() != kind:
            found = repr(self.tokens[self.position][1]) if self.position < len(self.tokens) else "the end"
            raise PolicyError(f"expected {kind if kind in KEYWORDS else repr(_SYMBOLS[kind])} but found {found} in the policy")
        self.position += 1
        return self.tokens[self.position - 1][1]

    def disjunction(self, level: int) -> Policy:
        if level > MAX_DEPTH:
            raise PolicyError(f"policy nests deeper than {MAX_DEPTH} gates")
        terms = [self.conjunction(level)]
        while self._peek() == "or":
            self.position += 1
            terms.append(self.conjunction(level))
        return any_of(terms) if len(terms) > 1 else terms[0]

    def conjunction(self, level: int) -> Policy:
        terms = [self.term(level)]
        while self._peek() == "and":
            self.position += 1
            terms.append(self.term(level))
        return all_of(terms) if len(terms) > 1 else terms[0]

    def term(self, level: int) -> Policy:
        kind = self._peek()
        if kind == "open":
            self.position += 1
            inner = self.disjunction(level + 1)
            self._expect("close")
            return inner
        if kind == "quoted":
            return Leaf(normalise_attribute(self._expect("quoted")))
        if kind == "bare":
            word = self._expect("bare")
            if word.isascii() and word.isdigit() and self._peek() == "of":
                return self.threshold(int(word), level)
            return Leaf(normalise_attribute(word))
        found = repr(self.tokens[self.position][1]) if kind else "the end"
        raise PolicyError(f"expected an attribute or '(' but found {found} in the policy")

    def threshold(self, threshold: int, level: int) -> Policy:
        self._expect("of")
        self._expect("open")
        children = [self.disjunction(level + 1)]
        while self._peek() == "comma":
            self.position += 1
            children.append(self.disjunction(level + 1))
        self._expect("close")
        return gate(threshold, children)


_SYMBOLS = {"open": "(", "close": ")", "comma": ",", "bare": "attribute", "quoted": "attribute"}


def policy_text(policy: Policy) -> str:
    """The canonical text of ``policy``; parsing it gives ``policy`` back."""
    if isinstance(policy, Leaf):
        attribute = policy.attribute
        return attribute if _BARE.fullmatch(attribute) and attribute.lower() not in KEYWORDS else f'"{attribute}"'
    parts = [policy_text(child) if isinstance(child, Leaf) else f"({policy_text(child)})" for child in policy.children]
    if policy.threshold == len(parts):
        return " and ".join(parts)
    if policy.threshold == 1:
        return " or ".join(parts)
    return f"{policy.threshold} of ({', '.join(parts)})"


# --- canonical encoding ------------------------------------------------------------------


def to_obj(policy: Policy) -> list:
    if isinstance(policy, Leaf):
        return [policy.attribute]
    return [policy.threshold, [to_obj(child) for child in policy.children]]


def from_obj(obj: object) -> Policy:
    """The policy encoded as ``obj``; PolicyError unless it is exactly the canonical form."""
    policy = check_policy(_from_obj(obj, 0))
    if to_obj(policy) != obj:
        raise PolicyError("the policy is not in canonical form")
    return policy


def _from_obj(obj: object, level: int) -> Policy:
    if level > MAX_DEPTH or not isinstance(obj, list):
        raise PolicyError("malformed policy")
    if len(obj) == 1 and isinstance(obj[0], str):
        return Leaf(normalise_attribute(obj[0]))
    if len(obj) == 2 and type(obj[0]) is int and isinstance(obj[1], list) and len(obj[1]) <= MAX_LEAVES:
        return gate(obj[0], [_from_obj(child, level + 1) for child in obj[1]])
    raise PolicyError("malformed policy")


# --- evaluation and the arithmetic of KP-CPRE ------------------------------------------


def satisfied(policy: Policy, attributes: Iterable[str]) -> bool:
    return _cover(policy, frozenset(attributes)) is not None


@functools.lru_cache(maxsize=4096)
def _offsets(policy: Gate) -> tuple[int, ...]:
    offsets, total = [], 0
    for child in policy.children:
        offsets.append(total)
        total += leaf_count(child)
    return tuple(offsets)


Step = tuple[int, tuple[int, ...]]  # (child position, positions chosen at that gate)


def _cover(policy: Policy, attributes: frozenset[str]) -> list[tuple[int, list[Step]]] | None:
    """A smallest set of leaves satisfying ``policy``: (leaf index, the child positions chosen above it)."""
    if isinstance(policy, Leaf):
        return [(0, [])] if policy.attribute in attributes else None
    options = []
    for position, (child, offset) in enumerate(zip(policy.children, _offsets(policy), strict=True), start=1):
        cover = _cover(child, attributes)
        if cover is not None:
            options.append((len(cover), position, offset, cover))
    if len(options) < policy.threshold:
        return None
    chosen = sorted(options, key=lambda option: option[0])[: policy.threshold]
    positions = tuple(sorted(position for _, position, _, _ in chosen))
    return [
        (offset + index, [(position, positions), *path])
        for _, position, offset, cover in chosen
        for index, path in cover
    ]


def leaf_coefficients(policy: Policy, attributes: Iterable[str], modulus: int) -> dict[int, int] | None:
    """Leaf index → combined Lagrange coefficient for a smallest satisfying leaf set, or None.

    Summing coefficient × share over these leaves gives back the secret that was shared
    down the tree; the coefficients themselves sum to 1.
    """
    cover = _cover(policy, frozenset(attributes))
    if cover is None:
        return None
    coefficients = {}
    for index, path in cover:
        coefficient = 1
        for position, positions in path:
            coefficient = coefficient * _lagrange_at_zero(position, positions, modulus) % modulus
        coefficients[index] = coefficient
    return coefficients


def _lagrange_at_zero(position: int, positions: tuple[int, ...], modulus: int) -> int:
    numerator, denominator = 1, 1
    for other in positions:
        if other != position:
            numerator = numerator * other % modulus
            denominator = denominator * (other - position) % modulus
    return numerator * pow(denominator, -1, modulus) % modulus


def share_secret(policy: Policy, secret: int, modulus: int, random_value: Callable[[], int]) -> list[int]:
    """Shares of ``secret`` for each leaf in tree order: a k-of-n gate gets a random polynomial of degree k-1."""
    if isinstance(policy, Leaf):
        return [secret % modulus]
    coefficients = [secret] + [random_value() for _ in range(policy.threshold - 1)]
    shares: list[int] = []
    for position, child in enumerate(policy.children, start=1):
        value = 0
        for coefficient in reversed(coefficients):
            value = (value * position + coefficient) % modulus
        shares.extend(share_secret(child, value, modulus, random_value))
    return shares
