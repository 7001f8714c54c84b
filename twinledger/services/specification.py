"""A twin's specification, off chain: each version is stored encrypted like a document,
readable by the organisations with a role on the twin; the chain holds its hashes, where
it is, and the delta it makes to the model the contracts enforce (``twinmodel``). Every
version read back is checked against the chain, and every edit starts from a version
read and checked so."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinledger import aml
from twinledger.contracts import calls
from twinledger.contracts.calls import ContractCall, SpecificationVersion
from twinledger.contracts.modeldelta import encode_delta
from twinledger.contracts.twinmodel import model_entries
from twinledger.core.types import MAX_TX_BYTES
from twinledger.errors import TwinledgerError
from twinledger.services import access
from twinledger.services.remote import segment
from twinledger.services.session import Outcome, Session
from twinledger.store.documents import download_document, parse_reference, upload_document

INLINE_DELTA_BYTES = MAX_TX_BYTES - 4096
"""A delta up to this size goes inside its transaction; a larger one is staged in parts."""
STAGE_PART_BYTES = MAX_TX_BYTES - 4096


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
    entry = await record(session, twin_ref, version)
    with tempfile.TemporaryDirectory(prefix="twinledger-spec-") as scratch:
        target = Path(scratch) / "specification.aml"
        await download_document(await session.store(), entry["reference"], bytes.fromhex(entry["manifest"]),
                                access.unlock(session), target)  # fmt: skip
        data = target.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["hash"]:
        raise SpecificationMismatch(f"version {entry['version']} of the specification in the store is not the one the "
                                    "chain records")  # fmt: skip
    return data


async def model_on_chain(session: Session, twin_ref: str) -> dict[str, Any]:
    """The model the chain holds for the twin's current version: version, hash, entries."""
    return dict(await session.get(f"/v1/twins/{segment(twin_ref, 'twin')}/model"))


@dataclass(frozen=True)
class Current:
    """The current version, read and checked: the base of an edit."""

    specification: bytes
    chain: dict[str, Any]
    """The chain's model of it (``model_on_chain``)."""


async def current(session: Session, twin_ref: str) -> Current:
    """The current version, fetched, decrypted and checked: its hashes against the chain,
    and the model it gives against the model the chain holds. A version whose document
    strays from the chain is refused, naming who wrote it; ``twins.replace`` puts a good
    one in its place."""
    chain = await model_on_chain(session, twin_ref)
    data = await read(session, twin_ref, chain["version"])
    if model_entries(aml.model(data)) != chain["entries"]:
        entry = await record(session, twin_ref, chain["version"])
        raise SpecificationMismatch(
            f"version {chain['version']} of the specification, written by {entry['organisation'] or entry['key'][:16]}, "
            "does not give the model on chain; whoever may replace the specification can put a good one in its place "
            "(twin aml replace)")  # fmt: skip
    return Current(data, chain)


async def write(session: Session, readers: dict[str, bytes], new: bytes, model: aml.Model, base: Current | None,
                make: Callable[[SpecificationVersion], ContractCall], wait: bool = True) -> Written:  # fmt: skip
    """Store ``new`` (a stored form, whose model is ``model``) for ``readers``, and submit
    the call ``make`` builds from its version: hashes, reference, the version it was made
    from, and the model delta against the chain's, staged in parts first if it does not
    fit the transaction."""
    delta = encode_delta(base.chain["entries"] if base is not None else {}, model)
    stored = await upload_document(await session.store(), new, session.signer, session.organisation, readers)
    digest = hashlib.sha256(delta).digest()
    parts = stage_parts(delta)
    for number, part in enumerate(parts):
        await session.transact(calls.stage(digest, number, len(parts), part))
    version = SpecificationVersion(digest_of(new), stored.manifest, stored.reference, len(new),
                                   model=None if parts else delta, staged=digest if parts else None,
                                   base=bytes.fromhex(base.chain["hash"]) if base is not None else None)  # fmt: skip
    try:
        return Written(await session.transact(make(version), wait), new)
    except TwinledgerError:
        if version.staged is not None:  # a refused call leaves its staged payload: drop it
            await session.transact(calls.unstage(digest))
        raise


async def share(session: Session, twin_ref: str, organisation: str) -> bool:
    """Make ``organisation`` a reader of the current version, if this key wrote it;
    whether it reads it now."""
    item, _ = parse_reference((await record(session, twin_ref))["reference"])
    acl = await (await session.store()).get_acl(item)
    if acl.allows(organisation):
        return True
    if acl.owner != session.signer.public:
        return False
    await access.change_readers(session, [item], [organisation], [])
    return True


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
