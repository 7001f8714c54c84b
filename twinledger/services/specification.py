"""A twin's specification, off chain: each version is stored encrypted like a document,
readable by the organisations with a role on the twin; the chain holds its hashes, where
it is, and the delta it makes to the model the contracts enforce (``twinmodel``). Every
version read back is checked against the chain, and every edit starts from a version
read and checked so.

A version is stored as its skeleton, which lists where its large class libraries are
(``aml.libraries``); a library is stored once by content and reused by every later
version, and by the home's other twins, whose readers may read it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinledger import aml
from twinledger.aml.libraries import MAX_LIBRARIES, Library, join, split
from twinledger.contracts import calls
from twinledger.contracts.calls import ContractCall, SpecificationVersion
from twinledger.contracts.modeldelta import encode_delta
from twinledger.contracts.twinmodel import model_entries
from twinledger.core.encoding import decode, encode
from twinledger.core.sqlite import open_database
from twinledger.core.types import MAX_TX_BYTES
from twinledger.errors import DecodeError, TwinledgerError
from twinledger.services import access
from twinledger.services.remote import segment
from twinledger.services.session import Outcome, Progress, Session
from twinledger.store.documents import REFERENCE, download_document, parse_reference, upload_document
from twinledger.store.items import StoreError

INLINE_DELTA_BYTES = MAX_TX_BYTES - 4096
"""A delta up to this size goes inside its transaction; a larger one is staged in parts."""
STAGE_PART_BYTES = MAX_TX_BYTES - 4096
LAYOUT_FORMAT = "twinledger-specification/1"
UPLOADS_AT_ONCE = 4
CACHE_BYTES = 64 * 1024 * 1024
"""Libraries read and checked, kept for the next read (history and diffs read many versions)."""


class SpecificationMismatch(TwinledgerError):
    code = "specification_mismatch"


@dataclass(frozen=True)
class Written:
    """A version written: what the chain says, and the stored form it names."""

    outcome: Outcome
    specification: bytes
    uploaded: int
    """Bytes newly put in the store: the skeleton, and libraries no earlier version holds."""


async def record(session: Session, twin_ref: str, version: int | None = None) -> dict[str, Any]:
    """The chain's entry for a version (default: the current one): hash, manifest,
    reference, size, who changed what."""
    params = {"version": version} if version is not None else {}
    return dict(await session.get(f"/v1/twins/{segment(twin_ref, 'twin')}/specification", **params))


async def read(session: Session, twin_ref: str, version: int | None = None) -> bytes:
    """A version's stored form, fetched from the store, decrypted for the session's
    organisation and checked against the hashes on chain."""
    return (await fetch(session, await record(session, twin_ref, version))).data


@dataclass(frozen=True)
class Fetched:
    """A version read back and checked, with where its libraries are stored."""

    data: bytes
    libraries: dict[bytes, str]
    """Library hash → store reference: what the next version may reuse."""


@dataclass(frozen=True)
class Placed:
    """A library as a skeleton lists it: where it goes, its hash, where it is stored."""

    name: str
    offset: int
    digest: bytes
    reference: str


async def fetch(session: Session, entry: dict[str, Any], cached: bool = True) -> Fetched:
    """The version ``entry`` (the chain's record of it) names: its skeleton and libraries
    fetched and decrypted, each library checked against its hash, the whole against the
    chain's. ``cached``: a library already read (checked by its hash) is not fetched again
    — what an audit of the store itself must not skip."""
    what = f"version {entry['version']} of the specification"
    skeleton, layout = decode_layout(await _skeleton(session, entry, what), what)
    spend = _bounded(entry["size"] - len(skeleton), what)
    libraries = await asyncio.gather(*(_library(session, placed, what, spend, cached) for placed in layout))
    data = join(skeleton, libraries)
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["hash"]:
        raise SpecificationMismatch(f"{what} in the store is not the one the chain records")
    return Fetched(data, {placed.digest: placed.reference for placed in layout})


async def _skeleton(session: Session, entry: dict[str, Any], what: str) -> bytes:
    """The stored skeleton of the version ``entry`` names, no larger than the version
    (and the places of its libraries) may be."""
    spend = _bounded(entry["size"] + MAX_LIBRARIES * 512, what)
    return await _download(session, entry["reference"], bytes.fromhex(entry["manifest"]), spend)


def _bounded(limit: int, what: str) -> Progress:
    """Counts bytes read for ``what``; past ``limit``, the store holds something else."""
    left = [limit]

    def spend(size: int) -> None:
        left[0] -= size
        if left[0] < 0:
            raise SpecificationMismatch(f"{what} in the store is larger than the chain records")

    return spend


async def _download(session: Session, reference: str, manifest: bytes, progress: Progress | None = None) -> bytes:
    with tempfile.TemporaryDirectory(prefix="twinledger-spec-") as scratch:
        target = Path(scratch) / "part"
        await download_document(await session.store(), reference, manifest, access.unlock(session), target, progress)
        return target.read_bytes()


_cache: dict[tuple[str, str], tuple[bytes, bytes]] = {}
"""(organisation, store reference) → (SHA-256, bytes) of libraries read: what a
reference names cannot change (its manifest hash commits to every chunk)."""


async def _library(session: Session, placed: Placed, what: str, spend: Progress, cached: bool) -> Library:
    """A library a skeleton lists, read once per organisation and reference, and checked
    against the hash the skeleton gives; ``spend`` counts its bytes against what the
    version may hold."""
    key = (session.organisation, placed.reference)
    digest, data = _cache[key] if cached and key in _cache else (b"", b"")
    if not digest:
        data = await _download(session, placed.reference, parse_reference(placed.reference)[1], spend)
        digest = hashlib.sha256(data).digest()
        while _cache and sum(len(d) for _, d in _cache.values()) + len(data) > CACHE_BYTES:
            del _cache[next(iter(_cache))]
        _cache[key] = digest, data
    else:
        spend(len(data))
    if digest != placed.digest:
        raise SpecificationMismatch(f"library {placed.name!r} of {what} in the store is not the one its skeleton "
                                    "names")  # fmt: skip
    return Library(placed.name, placed.offset, data)


def encode_layout(skeleton: bytes, layout: list[Placed]) -> bytes:
    return encode({"format": LAYOUT_FORMAT, "skeleton": skeleton,
                   "libraries": [[p.name, p.offset, p.digest, p.reference] for p in layout]})  # fmt: skip


def decode_layout(data: bytes, what: str) -> tuple[bytes, list[Placed]]:
    """A stored skeleton and its libraries' places, checked for shape: offsets ascending
    inside the skeleton, hashes of 32 bytes, store references."""
    try:
        value = decode(data)
        if not isinstance(value, dict) or set(value) != {"format", "skeleton", "libraries"} \
                or value["format"] != LAYOUT_FORMAT or not isinstance(value["skeleton"], bytes) \
                or not isinstance(value["libraries"], list) or len(value["libraries"]) > MAX_LIBRARIES:
            raise DecodeError("not a stored specification")
        skeleton, layout, last = value["skeleton"], [], 0
        for name, offset, digest, reference in value["libraries"]:
            if not (isinstance(name, str) and isinstance(offset, int) and last <= offset <= len(skeleton)
                    and isinstance(digest, bytes) and len(digest) == 32 and REFERENCE.match(str(reference))):
                raise DecodeError("a library's place is malformed")
            layout.append(Placed(name, offset, digest, reference))
            last = offset
    except (DecodeError, TypeError, ValueError) as exc:
        raise SpecificationMismatch(f"{what} in the store is not a stored specification "
                                    f"({exc.message if isinstance(exc, DecodeError) else 'malformed'})") from None
    return skeleton, layout


async def model_on_chain(session: Session, twin_ref: str) -> dict[str, Any]:
    """The model the chain holds for the twin's current version: version, hash, entries."""
    return dict(await session.get(f"/v1/twins/{segment(twin_ref, 'twin')}/model"))


@dataclass(frozen=True)
class Current:
    """The current version, read and checked: the base of an edit."""

    specification: bytes
    chain: dict[str, Any]
    """The chain's model of it (``model_on_chain``)."""
    libraries: dict[bytes, str] = field(default_factory=dict)
    """Where its libraries are stored (``Fetched.libraries``)."""


async def current(session: Session, twin_ref: str) -> Current:
    """The current version, fetched, decrypted and checked: its hashes against the chain,
    and the model it gives against the model the chain holds. A version whose document
    strays from the chain is refused, naming who wrote it; ``twins.replace`` puts a good
    one in its place."""
    chain = await model_on_chain(session, twin_ref)
    entry = await record(session, twin_ref, chain["version"])
    fetched = await fetch(session, entry)
    if model_entries(aml.model(fetched.data)) != chain["entries"]:
        raise SpecificationMismatch(
            f"version {chain['version']} of the specification, written by {entry['organisation'] or entry['key'][:16]}, "
            "does not give the model on chain; whoever may replace the specification can put a good one in its place "
            "(twin aml replace)")  # fmt: skip
    return Current(fetched.data, chain, fetched.libraries)


@dataclass(frozen=True)
class VersionCheck:
    """One version as the store holds it, against the chain's record."""

    version: int
    writer: str
    """The organisation (or key) that wrote it."""
    size: int
    libraries: int
    problem: str | None
    """None: the store holds exactly what the chain records."""


async def verify(session: Session, twin_ref: str, progress: Progress | None = None) -> list[VersionCheck]:
    """Every version read back from the store and checked as ``fetch`` does, the current
    one also against the model on chain; a version that fails is named with why, so one
    bad version does not hide another."""
    chain = await model_on_chain(session, twin_ref)
    checks = []
    for number in range(1, chain["version"] + 1):
        entry = await record(session, twin_ref, number)
        layout: dict[bytes, str] = {}
        try:
            fetched = await fetch(session, entry, cached=False)
            layout = fetched.libraries
            if number == chain["version"] and model_entries(aml.model(fetched.data)) != chain["entries"]:
                raise SpecificationMismatch(f"version {number} of the specification does not give the model on chain")
            problem = None
        except TwinledgerError as exc:
            problem = exc.message
        checks.append(VersionCheck(number, entry["organisation"] or "key " + entry["key"][:16] + "…", entry["size"],
                                   len(layout), problem))  # fmt: skip
        if progress is not None:
            progress(1)
    return checks


async def write(session: Session, readers: dict[str, bytes], new: bytes, model: aml.Model, base: Current | None,
                make: Callable[[SpecificationVersion], ContractCall], wait: bool = True) -> Written:  # fmt: skip
    """Store ``new`` (a stored form, whose model is ``model``) for ``readers``, and submit
    the call ``make`` builds from its version: hashes, reference, the version it was made
    from, and the model delta against the chain's, staged in parts first if it does not
    fit the transaction."""
    delta = encode_delta(base.chain["entries"] if base is not None else {}, model)
    skeleton, libraries = split(new)
    layout, uploaded = await store_libraries(session, readers, libraries, base.libraries if base is not None else {})
    container = encode_layout(skeleton, layout)
    stored = await upload_document(await session.store(), container, session.signer, session.organisation, readers)
    digest = hashlib.sha256(delta).digest()
    parts = stage_parts(delta)
    for number, part in enumerate(parts):
        await session.transact(calls.stage(digest, number, len(parts), part))
    version = SpecificationVersion(digest_of(new), stored.manifest, stored.reference, len(new),
                                   model=None if parts else delta, staged=digest if parts else None,
                                   base=bytes.fromhex(base.chain["hash"]) if base is not None else None)  # fmt: skip
    try:
        return Written(await session.transact(make(version), wait), new, uploaded + len(container))
    except TwinledgerError:
        if version.staged is not None:  # a refused call leaves its staged payload: drop it
            await session.transact(calls.unstage(digest))
        raise


async def store_libraries(session: Session, readers: dict[str, bytes], libraries: tuple[Library, ...],
                          known: dict[bytes, str]) -> tuple[list[Placed], int]:  # fmt: skip
    """Where each library is stored, and the bytes newly stored: a library the base
    version or the home already stored is reused if every reader reads it (readers are
    added where this key owns it); any other is uploaded and remembered by the home."""
    slots = asyncio.Semaphore(UPLOADS_AT_ONCE)

    async def place(library: Library) -> tuple[Placed, int]:
        async with slots:
            for reference in dict.fromkeys(filter(None, (known.get(library.digest), index.get(library.digest)))):
                if await _reusable(session, reference, readers):
                    return Placed(library.name, library.offset, library.digest, reference), 0
            stored = await upload_document(await session.store(), library.data, session.signer, session.organisation,
                                           readers)  # fmt: skip
            index.put(library.digest, stored.reference)
            return Placed(library.name, library.offset, library.digest, stored.reference), len(library.data)

    with contextlib.closing(LibraryIndex(session)) as index:
        placed = await asyncio.gather(*(place(library) for library in libraries))
    return [p for p, _ in placed], sum(size for _, size in placed)


async def _reusable(session: Session, reference: str, readers: dict[str, bytes]) -> bool:
    """Whether every reader reads the stored library, after adding those missing where
    this key owns it."""
    try:
        acl = await (await session.store()).get_acl(parse_reference(reference)[0])
    except StoreError:
        return False
    missing = sorted(name for name in readers if not acl.allows(name))
    if missing and acl.owner != session.signer.public:
        return False
    if missing:
        await access.change_readers(session, [acl.item], missing, [])
    return True


class LibraryIndex:
    """The home's libraries by content: hash → store reference of the copy it uploaded."""

    SCHEMA = "CREATE TABLE IF NOT EXISTS library (digest BLOB PRIMARY KEY, reference TEXT NOT NULL)"

    def __init__(self, session: Session) -> None:
        self.db = open_database(session.config.home / "data" / "libraries.sqlite", self.SCHEMA, synchronous="NORMAL")

    def get(self, digest: bytes) -> str | None:
        row = self.db.execute("SELECT reference FROM library WHERE digest = ?", (digest,)).fetchone()
        return str(row[0]) if row else None

    def put(self, digest: bytes, reference: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO library VALUES (?, ?)", (digest, reference))

    def close(self) -> None:
        self.db.close()


async def share(session: Session, twin_ref: str, organisation: str) -> bool:
    """Make ``organisation`` a reader of the current version — its skeleton and its
    libraries — where this key stored them; whether it reads all of it now."""
    entry = await record(session, twin_ref)
    what = f"version {entry['version']} of the specification"
    _, layout = decode_layout(await _skeleton(session, entry, what), what)
    store = await session.store()
    shared = True
    for reference in dict.fromkeys([entry["reference"], *(placed.reference for placed in layout)]):
        acl = await store.get_acl(parse_reference(reference)[0])
        if acl.allows(organisation):
            continue
        if acl.owner != session.signer.public:
            shared = False
            continue
        await access.change_readers(session, [acl.item], [organisation], [])
    return shared


def stage_parts(delta: bytes) -> list[bytes]:
    """The parts a delta is staged in; none if it fits its transaction."""
    if len(delta) <= INLINE_DELTA_BYTES:
        return []
    return [delta[i:i + STAGE_PART_BYTES] for i in range(0, len(delta), STAGE_PART_BYTES)]


def digest_of(specification: bytes) -> bytes:
    return hashlib.sha256(specification).digest()


async def readers_of(session: Session, twin: dict[str, Any] | None, roles: dict[str, Any] | None = None) -> dict[str, bytes]:
    """Who reads the specification: the organisations with a role on the twin (or in
    ``roles``, for a twin being created), and the session's."""
    return await access.recipients(session, twin if twin is not None else {"roles": roles or {}}, [])
