"""Which store nodes hold what: rendezvous (highest-random-weight) hashing over the
store nodes the membership contract lists. Every node knows the members, so any node
finds an object's replicas in one hop, and adding or removing a store node moves only
the objects whose top-r set it enters or leaves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twinledger.core.hashing import tagged_hash

RENDEZVOUS_TAG = "twinledger/store/rendezvous/v1"


@dataclass(frozen=True)
class StoreNode:
    organisation: str
    name: str
    signing_key: bytes
    endpoint: str
    """host:port of the node's store listener."""

    @property
    def label(self) -> str:
        return f"{self.organisation}/{self.name}"


@dataclass(frozen=True)
class Replication:
    """r copies of every object; a write counts once ``quorum`` of them acknowledged it."""

    factor: int = 3
    quorum: int = 2

    def effective(self, nodes: int) -> Replication:
        factor = max(1, min(self.factor, nodes))
        return Replication(factor, max(1, min(self.quorum, factor)))


def store_nodes(organisations: Iterable[Mapping[str, Any]]) -> tuple[StoreNode, ...]:
    """The store nodes among membership organisation records (as the contract stores
    them, or as the API returns them with keys in hex)."""
    nodes = []
    for org in organisations:
        for name, node in sorted(org["nodes"].items()):
            if "store" in node["roles"] and node.get("storage"):
                key = node["signing_key"]
                nodes.append(StoreNode(org["name"], name, key if isinstance(key, bytes) else bytes.fromhex(key),
                                       node["storage"]))  # fmt: skip
    return tuple(nodes)


def rank(key: bytes, nodes: Iterable[StoreNode]) -> list[StoreNode]:
    """All nodes, best home for ``key`` first; the first r are its replicas."""
    return sorted(nodes, key=lambda node: tagged_hash(RENDEZVOUS_TAG, node.signing_key, key), reverse=True)


def replicas(key: bytes, nodes: Sequence[StoreNode], replication: Replication) -> list[StoreNode]:
    """The nodes that hold ``key``: its r best homes among ``nodes``."""
    return rank(key, nodes)[: replication.effective(len(nodes)).factor]
