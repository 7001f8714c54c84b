"""A stored specification cut into its skeleton and its large class libraries, so a
library is stored once by content: a tool embeds the same libraries in every export
(70–99 % of a mid-size file's bytes), and an edit to the plant changes none of them.

The cut is made on the stored (canonical) form, where every child of ``<CAEXFile>``
starts a line of its own, indented two spaces; libraries are the file's last children
in both CAEX schemas. ``join(*split(data)) == data`` holds for every document ``split``
parses: where the cut lands only decides what is shared, never what is read back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from lxml import etree

from twinledger.aml.document import local, parse_xml

LIBRARY_KINDS = frozenset({"InterfaceClassLib", "RoleClassLib", "SystemUnitClassLib", "AttributeTypeLib"})
MIN_LIBRARY_BYTES = 4096
"""Smaller libraries stay in the skeleton: a stored part costs a store item."""
MAX_LIBRARIES = 1000
NAME_CHARS = 256
"""A library's name is kept for messages only, at most this long."""


@dataclass(frozen=True)
class Library:
    """A library's bytes, cut from the stored form where the skeleton's ``offset`` is."""

    name: str
    offset: int
    data: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.data).digest()


def split(stored: bytes) -> tuple[bytes, tuple[Library, ...]]:
    """The skeleton of a stored specification and the libraries cut out of it, in order."""
    root = parse_xml(stored, "the specification")
    starts: list[tuple[int, etree._Element]] = []
    position = 0
    for child in root.iterchildren(etree.Element):
        name = f"{child.prefix}:{local(child)}" if child.prefix else local(child)
        found = _line_start(stored, b"\n  <" + name.encode(), position)
        if found < 0:
            return stored, ()  # not a stored form: nothing is cut, nothing is lost
        starts.append((found, child))
        position = found
    end = stored.rfind(b"\n</") + 1
    skeleton, libraries, taken = bytearray(), [], 0
    for index, (start, child) in enumerate(starts):
        stop = starts[index + 1][0] if index + 1 < len(starts) else end
        if local(child) not in LIBRARY_KINDS or stop - start < MIN_LIBRARY_BYTES or len(libraries) >= MAX_LIBRARIES:
            continue
        skeleton += stored[taken:start]
        libraries.append(Library((child.get("Name") or local(child))[:NAME_CHARS], len(skeleton), stored[start:stop]))
        taken = stop
    skeleton += stored[taken:]
    return bytes(skeleton), tuple(libraries)


def _line_start(data: bytes, marker: bytes, position: int) -> int:
    """Where the line holding the start tag ``marker`` names begins (after ``position``), or -1."""
    while (found := data.find(marker, position)) >= 0:
        after = data[found + len(marker):found + len(marker) + 1]
        if after in (b" ", b">", b"/"):
            return found + 1
        position = found + 1
    return -1


def join(skeleton: bytes, libraries: tuple[Library, ...] | list[Library]) -> bytes:
    """The stored form back from its skeleton and libraries (offsets ascending)."""
    out, taken = bytearray(), 0
    for library in libraries:
        out += skeleton[taken:library.offset]
        out += library.data
        taken = library.offset
    out += skeleton[taken:]
    return bytes(out)
