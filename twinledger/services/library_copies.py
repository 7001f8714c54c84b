"""Where a specification's class libraries are stored: one copy per content, owner key
and readers, reused by the versions and twins that need it (``aml.libraries`` cuts them
out; ``services.specification`` stores the rest).

A copy is an item of the store like any document. It is reused only if this session's
key owns it (so nobody else can later take a reader away from versions this key wrote),
and only if each reader of the new version reads it with its current key:

- the copies the version before names may gain the readers they miss (the twin's new
  organisations), unless another twin reuses them too;
- a copy the home stored for another twin is reused only for exactly the same readers,
  so its ACL tells no reader of one twin who reads another.

The home remembers its copies in ``HOME/data/libraries.sqlite``, by hash, owner key and
readers, and which of them more than one twin uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twinledger.aml.libraries import Library
from twinledger.core.encoding import encode
from twinledger.core.sqlite import open_database
from twinledger.errors import TwinledgerError
from twinledger.services import access
from twinledger.services.session import Progress, Session
from twinledger.store.documents import download_document, parse_reference, upload_document
from twinledger.store.items import MAX_READERS, ItemAcl

K = TypeVar("K")
T = TypeVar("T")
AT_ONCE = 4
"""Library copies uploaded or fetched at once."""
CACHE_BYTES = 64 * 1024 * 1024
"""Libraries read and checked, kept for the next read (history and diffs read many versions)."""


@dataclass(frozen=True)
class Placed:
    """A library as a skeleton lists it: where it goes, its hash, where its copy is."""

    name: str
    offset: int
    digest: bytes
    reference: str


class LibraryIndex:
    """The home's library copies: (hash, owner key, readers) → store reference, and the
    copies more than one twin uses (which gain no readers)."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS copy (digest BLOB, owner BLOB, readers BLOB, reference TEXT NOT NULL,
                                         PRIMARY KEY (digest, owner, readers));
        CREATE TABLE IF NOT EXISTS shared (reference TEXT PRIMARY KEY);
    """

    def __init__(self, home: Path) -> None:
        self.db = open_database(home / "data" / "libraries.sqlite", self.SCHEMA, synchronous="NORMAL")

    def find(self, digest: bytes, owner: bytes, readers: bytes) -> str | None:
        row = self.db.execute("SELECT reference FROM copy WHERE digest = ? AND owner = ? AND readers = ?",
                              (digest, owner, readers)).fetchone()  # fmt: skip
        return str(row[0]) if row else None

    def remember(self, digest: bytes, owner: bytes, readers: bytes, reference: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO copy VALUES (?, ?, ?, ?)", (digest, owner, readers, reference))

    def mark_shared(self, reference: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO shared VALUES (?)", (reference,))

    def is_shared(self, reference: str) -> bool:
        return self.db.execute("SELECT 1 FROM shared WHERE reference = ?", (reference,)).fetchone() is not None

    def close(self) -> None:
        self.db.close()


def index_of(session: Session) -> contextlib.closing[LibraryIndex]:
    return contextlib.closing(LibraryIndex(session.config.home))


def readers_digest(readers: dict[str, bytes]) -> bytes:
    """One value for a set of readers with their keys."""
    return hashlib.sha256(encode(sorted([name, key] for name, key in readers.items()))).digest()


async def store(session: Session, readers: dict[str, bytes], libraries: tuple[Library, ...],
                before: dict[bytes, str]) -> list[Placed]:  # fmt: skip
    """Where each library's copy is: reused from the version before (``before``: hash →
    reference) or from the home, else uploaded for ``readers``."""
    wanted = readers_digest(readers)
    owner = session.signer.public
    slots = asyncio.Semaphore(AT_ONCE)
    uploaded: dict[bytes, str] = {}

    async def copy_of(library: Library, index: LibraryIndex) -> str:
        async with slots:
            earlier = before.get(library.digest)
            if earlier is not None and await _extended(session, earlier, readers, index):
                return earlier
            same = index.find(library.digest, owner, wanted)
            if same is not None and same != earlier and await _exactly(session, same, readers):
                index.mark_shared(same)
                return same
            stored = await upload_document(await session.store(), library.data, session.signer, session.organisation,
                                           readers)  # fmt: skip
            uploaded[library.digest] = stored.reference
            return stored.reference

    unique = {library.digest: library for library in libraries}
    if not unique:
        return []
    with index_of(session) as index:
        copies = await all_of({digest: copy_of(library, index) for digest, library in unique.items()})
        for digest, reference in uploaded.items():
            index.remember(digest, owner, wanted, reference)
    return [Placed(library.name, library.offset, library.digest, copies[library.digest]) for library in libraries]


async def _acl(session: Session, reference: str) -> ItemAcl | None:
    try:
        return await (await session.store()).get_acl(parse_reference(reference)[0])
    except TwinledgerError:
        return None


def unsealed(acl: ItemAcl, readers: dict[str, bytes]) -> list[str]:
    """Readers the copy does not seal its key to, or seals to a key they no longer hold."""
    return sorted(name for name, key in readers.items() if (r := acl.reader(name)) is None or r.key != key)


async def _exactly(session: Session, reference: str, readers: dict[str, bytes]) -> bool:
    """Whether this key's copy is read by exactly ``readers``, with their keys now."""
    acl = await _acl(session, reference)
    return (acl is not None and acl.owner == session.signer.public and not unsealed(acl, readers)
            and len(acl.readers) == len(readers))  # fmt: skip


def extendable(acl: ItemAcl, owner: bytes, missing: list[str], shared: bool) -> bool:
    """Whether ``missing`` readers may be sealed into a copy: ``owner`` (this key) owns it,
    no other twin uses it (its ACL would tell that twin's readers who reads this one), and
    the ACL has room for them."""
    return (acl.owner == owner and not shared
            and len({r.organisation for r in acl.readers} | set(missing)) <= MAX_READERS)  # fmt: skip


async def _extended(session: Session, reference: str, readers: dict[str, bytes], index: LibraryIndex) -> bool:
    """Whether this key's copy is read by every one of ``readers``, after sealing its key
    to those it misses where it may (``extendable``)."""
    acl = await _acl(session, reference)
    if acl is None or acl.owner != session.signer.public:
        return False
    missing = unsealed(acl, readers)
    if not missing:
        return True
    if not extendable(acl, session.signer.public, missing, index.is_shared(reference)):
        return False
    try:
        await access.change_readers(session, [acl.item], missing, [])
    except TwinledgerError:
        return False
    return True


async def share(session: Session, references: list[str], organisation: str) -> bool:
    """Seal the copies' keys to ``organisation`` too, where this key owns them and no
    other twin uses them; whether it reads every one of them now."""
    key = (await access.recipients(session, None, [organisation]))[organisation]
    readable = True
    with index_of(session) as index:
        for reference in dict.fromkeys(references):
            acl = await _acl(session, reference)
            if acl is not None and not unsealed(acl, {organisation: key}):
                continue
            if acl is None or not extendable(acl, session.signer.public, [organisation], index.is_shared(reference)):
                readable = False
                continue
            try:
                await access.change_readers(session, [acl.item], [organisation], [])
            except TwinledgerError:
                readable = False
    return readable


_cache: dict[tuple[str, str], bytes] = {}
"""(organisation, store reference) → bytes of the copies read: what a reference names
cannot change (its manifest hash commits to every chunk)."""


async def fetch(session: Session, layout: list[Placed], budget: int, cached: bool = True) -> dict[str, bytes]:
    """The bytes of every copy ``layout`` names, by reference, each at most — and all
    together at most — ``budget`` bytes; ``cached``: copies read before are not fetched
    again. Whether each holds the library its place names is for the caller to check."""
    left = [budget]
    slots = asyncio.Semaphore(AT_ONCE)

    def spend(size: int) -> None:
        left[0] -= size
        if left[0] < 0:
            raise TwinledgerError(f"the libraries are more than {budget} bytes", code="too_large")

    async def one(reference: str) -> bytes:
        key = (session.organisation, reference)
        if cached and key in _cache:
            spend(len(_cache[key]))
            return _cache[key]
        async with slots:
            data = await download(session, reference, parse_reference(reference)[1], spend, left[0])
        while _cache and sum(map(len, _cache.values())) + len(data) > CACHE_BYTES:
            del _cache[next(iter(_cache))]
        _cache[key] = data
        return data

    return await all_of({reference: one(reference) for reference in dict.fromkeys(p.reference for p in layout)})


async def all_of(works: dict[K, Coroutine[Any, Any, T]]) -> dict[K, T]:
    """Run ``works`` together, their results by key: the first failure cancels the others
    and is raised as itself (not as a group, which no caller would recognise)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = {key: group.create_task(work) for key, work in works.items()}
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return {key: task.result() for key, task in tasks.items()}


async def download(session: Session, reference: str, manifest: bytes, progress: Progress | None = None,
                   max_size: int | None = None) -> bytes:  # fmt: skip
    """A stored item's bytes, decrypted for the session (at most ``max_size``)."""
    with tempfile.TemporaryDirectory(prefix="twinledger-spec-") as scratch:
        target = Path(scratch) / "part"
        await download_document(await session.store(), reference, manifest, access.unlock(session), target, progress,
                                max_size=max_size)  # fmt: skip
        return target.read_bytes()
