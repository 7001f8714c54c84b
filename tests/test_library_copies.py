"""The rules for reusing a specification's library copies, and the shape checks on a
stored skeleton: what a writer may reuse, and what a reader refuses."""

from __future__ import annotations

import asyncio
import os

import pytest

from twinledger.crypto.keys import EncryptionKey, SigningKey
from twinledger.services import library_copies as copies
from twinledger.services.specification import LAYOUT_FORMAT, SpecificationMismatch, decode_layout, encode_layout
from twinledger.store.documents import new_acl
from twinledger.store.items import MAX_READERS

OWNER = SigningKey.generate()
REFERENCE = f"store:{'a' * 64}/{'b' * 64}"


def _acl(readers: dict[str, bytes], owner: SigningKey = OWNER):
    return new_acl(owner, "owner", "document", os.urandom(16), os.urandom(32), readers)


def _keys(*names: str) -> dict[str, bytes]:
    return {name: EncryptionKey.generate().public for name in names}


def test_a_copy_is_unsealed_for_a_reader_missing_or_holding_a_new_key():
    readers = _keys("owner", "maintainer")
    acl = _acl(readers)
    assert copies.unsealed(acl, readers) == []
    rotated = {**readers, "maintainer": EncryptionKey.generate().public}
    assert copies.unsealed(acl, rotated) == ["maintainer"], "a key changed since: the copy is not readable with it"
    assert copies.unsealed(acl, {**readers, **_keys("auditor")}) == ["auditor"]


def test_readers_are_added_only_to_this_keys_unshared_copies_with_room():
    readers = _keys("owner", "maintainer")
    assert copies.extendable(_acl(readers), OWNER.public, ["auditor"], shared=False)
    assert not copies.extendable(_acl(readers, SigningKey.generate()), OWNER.public, ["auditor"], shared=False), \
        "another key's copy: its owner could take the reader away again"
    assert not copies.extendable(_acl(readers), OWNER.public, ["auditor"], shared=True), \
        "another twin uses it: its ACL would tell that twin's readers who reads this one"
    full = _acl(_keys(*(f"org-{n}" for n in range(MAX_READERS))))
    assert not copies.extendable(full, OWNER.public, ["one-more"], shared=False), "the store takes 64 readers"
    assert copies.extendable(full, OWNER.public, ["org-1"], shared=False), "a new key for a reader it has is room enough"


def test_one_digest_for_a_set_of_readers_and_their_keys():
    readers = _keys("owner", "maintainer")
    assert copies.readers_digest(readers) == copies.readers_digest(dict(reversed(list(readers.items()))))
    assert copies.readers_digest(readers) != copies.readers_digest({**readers, "owner": os.urandom(32)})


@pytest.mark.parametrize(("places", "complaint"), [
    ([["RoleClassLib", 0, b"\0" * 32, REFERENCE + "\n"]], "place is malformed"),
    ([["x" * 5000, 0, b"\0" * 32, REFERENCE]], "place is malformed"),
    ([["RoleClassLib", True, b"\0" * 32, REFERENCE]], "place is malformed"),
    ([["RoleClassLib", 99, b"\0" * 32, REFERENCE]], "place is malformed"),
    ([["A", 3, b"\0" * 32, REFERENCE], ["B", 2, b"\0" * 32, REFERENCE]], "place is malformed"),
    ([["RoleClassLib", 0, b"\0" * 31, REFERENCE]], "place is malformed"),
    ([["RoleClassLib", 0, b"\0" * 32, REFERENCE]] * 1001, "not a stored specification"),
    ([["RoleClassLib", 0, b"\0" * 32]], "malformed"),
])  # fmt: skip
def test_a_malformed_skeleton_is_refused_with_one_line(places, complaint):
    from twinledger.core.encoding import encode

    data = encode({"format": LAYOUT_FORMAT, "skeleton": b"<CAEXFile>", "libraries": places})
    with pytest.raises(SpecificationMismatch, match=complaint):
        decode_layout(data, "version 2 of the specification")


def test_a_skeleton_reads_back_as_written_and_nothing_else_is_one():
    layout = [copies.Placed("RoleClassLib", 3, b"\1" * 32, REFERENCE)]
    assert decode_layout(encode_layout(b"<CAEXFile/>", layout), "v") == (b"<CAEXFile/>", layout)
    with pytest.raises(SpecificationMismatch, match="not a stored specification"):
        decode_layout(b"<CAEXFile/>", "version 1 of the specification")


def test_concurrent_work_fails_with_its_own_first_error_and_stops_the_rest():
    stopped: list[bool] = []

    async def slow() -> int:
        try:
            await asyncio.Event().wait()  # never set: runs until cancelled
        except asyncio.CancelledError:
            stopped.append(True)
            raise
        return 1

    async def failing() -> int:
        raise SpecificationMismatch("library 'X' is not the one its skeleton names")

    with pytest.raises(SpecificationMismatch, match="library 'X'"):
        asyncio.run(copies.all_of({"slow": slow(), "bad": failing()}))
    assert stopped == [True]
