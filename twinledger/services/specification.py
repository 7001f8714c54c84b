"""A twin's specification, off chain: each version is stored encrypted like a document,
readable by the organisations with a role on the twin; the chain holds its hashes, where
it is, and the delta it makes to the model the contracts enforce (``twinmodel``). Every
version read back is checked against the chain, and every edit starts from a version
read and checked so.

A version is stored as its skeleton, which lists where its large class libraries are
(``aml.libraries``); a library is stored once by content and reused by every later
version, and by the home's other twins, whose readers may read it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twinledger import aml
from twinledger.aml.libraries import MAX_LIBRARIES, Library, join, split
from twinledger.contracts import calls
from twinledger.contracts.calls import ContractCall, SpecificationVersion
from twinledger.contracts.modeldelta import encode_delta
from twinledger.contracts.twinmodel import model_entries
from twinledger.core.encoding import decode, encode
from twinledger.core.types import MAX_TX_BYTES
from twinledger.errors import DecodeError, TwinledgerError
from twinledger.services import access
from twinledger.services import library_copies as copies
from twinledger.services.library_copies import Placed
from twinledger.services.remote import segment
from twinledger.services.session import Outcome, Progress, Session
from twinledger.store.documents import REFERENCE, upload_document

INLINE_DELTA_BYTES = MAX_TX_BYTES - 4096
"""A delta up to this size goes inside its transaction; a larger one is staged in parts."""
STAGE_PART_BYTES = MAX_TX_BYTES - 4096
LAYOUT_FORMAT = "twinledger-specification/1"
MAX_NAME = 1024
MAX_LAYOUT_BYTES = MAX_LIBRARIES * (MAX_NAME + 256)
"""What a skeleton's places of libraries may add to the version's own bytes."""


class SpecificationMismatch(TwinledgerError):
    code = "specification_mismatch"


@dataclass(frozen=True)
class Written:
    """A version written: what the chain says, and the stored form it names."""

    outcome: Outcome
    specification: bytes


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
    layout: list[Placed]

    @property
    def libraries(self) -> dict[bytes, str]:
        """Library hash → store reference: what the next version may reuse."""
        return {placed.digest: placed.reference for placed in self.layout}


async def fetch(session: Session, entry: dict[str, Any], cached: bool = True) -> Fetched:
    """The version ``entry`` (the chain's record of it) names: its skeleton and libraries
    fetched and decrypted, each library checked against its hash, the whole against the
    chain's. ``cached``: a library copy already read is not fetched again — what an audit
    of the store itself must not skip."""
    what = f"version {entry['version']} of the specification"
    try:
        skeleton, layout = decode_layout(await copies.download(session, entry["reference"],
                                                               bytes.fromhex(entry["manifest"]),
                                                               max_size=entry["size"] + MAX_LAYOUT_BYTES), what)  # fmt: skip
        found = await copies.fetch(session, layout, entry["size"] - len(skeleton), cached)
    except TwinledgerError as exc:
        if exc.code == "too_large":
            raise SpecificationMismatch(f"{what} in the store is larger than the chain records") from None
        raise
    libraries = []
    for placed in layout:
        data = found[placed.reference]
        if hashlib.sha256(data).digest() != placed.digest:
            raise SpecificationMismatch(f"library {placed.name!r} of {what} in the store is not the one its skeleton "
                                        "names")  # fmt: skip
        libraries.append(Library(placed.name, placed.offset, data))
    data = join(skeleton, libraries)
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["hash"]:
        raise SpecificationMismatch(f"{what} in the store is not the one the chain records")
    return Fetched(data, layout)


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
            if not (type(name) is str and len(name) <= MAX_NAME and type(offset) is int and last <= offset <= len(skeleton)
                    and type(digest) is bytes and len(digest) == 32 and type(reference) is str
                    and REFERENCE.fullmatch(reference)):
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
        layout: list[Placed] = []
        try:
            fetched = await fetch(session, entry, cached=False)
            layout = fetched.layout
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
                make: Callable[[SpecificationVersion], ContractCall], wait: bool = True,
                intent: str | None = None) -> Written:  # fmt: skip
    """Store ``new`` (a stored form, whose model is ``model``) for ``readers``, and submit
    the call ``make`` builds from its version: hashes, reference, the version it was made
    from, and the model delta against the chain's, staged in parts first if it does not
    fit the transaction."""
    delta = encode_delta(base.chain["entries"] if base is not None else {}, model)
    skeleton, libraries = split(new)
    layout = await copies.store(session, readers, libraries, base.libraries if base is not None else {})
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
        return Written(await session.transact(make(version), wait, intent=intent), new)
    except TwinledgerError:
        if version.staged is not None:  # a refused call leaves its staged payload: drop it
            await session.transact(calls.unstage(digest))
        raise


async def share(session: Session, twin_ref: str, organisation: str) -> bool:
    """Make ``organisation`` a reader of the current version — its skeleton and its
    library copies — where this key stored them (``library_copies.share``); whether it
    reads all of it now. Never raises for what it cannot share: the role it follows is
    granted already, and the next version is written for the twin's readers anyway."""
    entry = await record(session, twin_ref)
    try:
        _, layout = decode_layout(await copies.download(session, entry["reference"], bytes.fromhex(entry["manifest"]),
                                                        max_size=entry["size"] + MAX_LAYOUT_BYTES),
                                  f"version {entry['version']} of the specification")  # fmt: skip
        return await copies.share(session, [entry["reference"], *(p.reference for p in layout)], organisation)
    except TwinledgerError:
        return False


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
