from __future__ import annotations

import hashlib

import pytest

from twinledger.core.merkle import EMPTY_ROOT, leaf_hash, merkle_path, merkle_root, node_hash, root_from_path
from twinledger.errors import InvalidProof


def items(n: int) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


def test_known_shapes():
    a, b, c = items(3)
    assert merkle_root([]) == EMPTY_ROOT
    assert merkle_root([a]) == leaf_hash(a)
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))


def test_leaf_and_node_hashes_are_domain_separated():
    a, b = items(2)
    # A node's preimage reused as a leaf gives another hash (no second-preimage by level confusion).
    assert leaf_hash(leaf_hash(a) + leaf_hash(b)) != node_hash(leaf_hash(a), leaf_hash(b))


def test_no_duplicate_last_leaf_ambiguity():
    a, b, c = items(3)
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])


@pytest.mark.parametrize("n", [*range(1, 34), 100, 257])
def test_every_path_verifies(n):
    xs = items(n)
    root = merkle_root(xs)
    for i in range(n):
        assert root_from_path(xs[i], i, n, merkle_path(xs, i)) == root


def test_wrong_index_size_item_or_sibling_fails():
    xs = items(13)
    root = merkle_root(xs)
    path = merkle_path(xs, 5)
    assert root_from_path(xs[5], 6, 13, path) != root
    assert root_from_path(xs[4], 5, 13, path) != root
    bad = list(path)
    bad[1] = bytes(32)
    assert root_from_path(xs[5], 5, 13, bad) != root
    with pytest.raises(InvalidProof):
        root_from_path(xs[5], 5, 13, path[:-1])
    with pytest.raises(InvalidProof):
        root_from_path(xs[5], 5, 13, [*path, bytes(32)])
    with pytest.raises(InvalidProof):
        root_from_path(xs[5], 13, 13, path)
    with pytest.raises(InvalidProof):
        root_from_path(xs[5], 5, 13, [b"short"] * len(path))
