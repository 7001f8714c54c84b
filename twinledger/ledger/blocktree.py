"""The block tree (safe-UR-chain Figure 5): every known block header, its forks, and the
orphans waiting for their parent. Which leaf is the head is the consensus's choice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from twinledger.core.types import BlockHeader


@dataclass
class BlockTree:
    root: BlockHeader
    headers: dict[bytes, BlockHeader] = field(default_factory=dict)
    children: dict[bytes, set[bytes]] = field(default_factory=lambda: defaultdict(set))
    orphans: dict[bytes, dict[bytes, BlockHeader]] = field(default_factory=lambda: defaultdict(dict))

    def __post_init__(self) -> None:
        self.headers[self.root.hash] = self.root

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self.headers

    def add(self, header: BlockHeader) -> list[BlockHeader]:
        """Insert a header; returns the headers now connected to the root, in parent-first
        order (the header and any orphans it resolved), or [] if it waits as an orphan."""
        if header.hash in self.headers:
            return []
        if header.previous not in self.headers:
            self.orphans[header.previous][header.hash] = header
            return []
        connected: list[BlockHeader] = []
        queue = [header]
        while queue:
            current = queue.pop(0)
            self.headers[current.hash] = current
            self.children[current.previous].add(current.hash)
            connected.append(current)
            waiting = self.orphans.pop(current.hash, {})
            queue.extend(sorted(waiting.values(), key=lambda h: h.hash))
        return connected

    def discard(self, block_hash: bytes) -> set[bytes]:
        """Take a block and everything built on it out of the tree (a branch found invalid);
        returns their hashes. Orphans waiting for one of them go with it."""
        header = self.headers.get(block_hash)
        if header is not None:
            self.children[header.previous].discard(block_hash)
        gone: set[bytes] = set()
        stack = [block_hash]
        while stack:
            current = stack.pop()
            gone.add(current)
            self.headers.pop(current, None)
            stack.extend(self.children.pop(current, ()))
            stack.extend(self.orphans.pop(current, {}))
        return gone

    def orphan_count(self) -> int:
        return sum(len(v) for v in self.orphans.values())

    def leaves(self) -> list[BlockHeader]:
        return [h for h in self.headers.values() if not self.children.get(h.hash)]

    def path_from_root(self, block_hash: bytes) -> list[BlockHeader]:
        """Headers from the root to ``block_hash``, inclusive."""
        path = []
        current = self.headers[block_hash]
        while True:
            path.append(current)
            if current.hash == self.root.hash:
                break
            current = self.headers[current.previous]
        path.reverse()
        return path

    def common_ancestor(self, a: bytes, b: bytes) -> BlockHeader:
        ancestors = {h.hash for h in self.path_from_root(a)}
        for header in reversed(self.path_from_root(b)):
            if header.hash in ancestors:
                return header
        return self.root
