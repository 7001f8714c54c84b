"""Documents of a twin: encrypted into the off-chain store on this side, registered on
chain by the hash of their manifest, read back verified against the chain."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinledger.contracts import calls
from twinledger.core.attributes import document_attributes
from twinledger.errors import TwinledgerError
from twinledger.services import access, intents
from twinledger.services.access import DeviceKeys
from twinledger.services.session import Outcome, Progress, Session
from twinledger.store.documents import StoredDocument, download_document, parse_reference, upload_document
from twinledger.store.items import CHUNK_SIZE, ItemAcl

DEFAULT_MEDIA_TYPE = "application/octet-stream"
PENDING = "store:pending"
"""The reference a dry run gives a document not yet stored."""


async def listed(session: Session, twin_ref: str, include_removed: bool = False,
                 at: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The twin's documents as the chain has them, each with its newest version's
    attributes from the store (None where the store does not say: an outside reference,
    an unreachable item)."""
    twin = await session.twin(twin_ref, at)
    documents = [d for d in twin["documents"] if include_removed or d["removed"] is None]
    store = await session.store()

    async def attributes(document: dict[str, Any]) -> list[str] | None:
        reference = document["versions"][-1]["reference"]
        if not reference.startswith("store:"):
            return None
        try:
            return list((await store.get_acl(parse_reference(reference)[0])).attributes)
        except TwinledgerError:
            return None

    found = await asyncio.gather(*(attributes(d) for d in documents))
    return [{**document, "attributes": tags} for document, tags in zip(documents, found, strict=True)]


def find(twin: dict[str, Any], document: str) -> dict[str, Any]:
    """A document of the twin by id or by a unique prefix of at least 8 hex digits."""
    return dict(access.by_id(twin["documents"], document, lambda d: str(d["id"]), "document"))


def version_of(entry: dict[str, Any], version: int | None) -> tuple[int, dict[str, Any]]:
    """(number, version entry) of a document; the latest when ``version`` is None."""
    versions = entry["versions"]
    number = version or len(versions)
    if not 1 <= number <= len(versions):
        raise TwinledgerError(f"document {entry['id'][:16]}… has {len(versions)} version(s), not {version}",
                              code="unknown_version")  # fmt: skip
    return number, dict(versions[number - 1])


@dataclass(frozen=True)
class DocumentAdded:
    document: str
    stored: StoredDocument
    outcome: Outcome


async def _store(session: Session, twin: dict[str, Any], source: Path | bytes, readers: list[str],
                 attributes: list[str], progress: Progress | None) -> StoredDocument:  # fmt: skip
    recipients = await access.recipients(session, twin, readers)
    return await upload_document(await session.store(), source, session.signer, session.organisation, recipients,
                                 progress, attributes=attributes, sharing=await session.capsule_key(twin["id"]))  # fmt: skip


async def check_add(session: Session, twin_ref: str, title: str, *, description: str = "",
                    component: str | None = None, media_type: str = DEFAULT_MEDIA_TYPE) -> dict[str, Any]:  # fmt: skip
    """Whether the session may add such a document to the twin, asked before anything is
    uploaded (a refusal stores nothing); the twin."""
    twin = await session.twin(twin_ref)
    await session.check(calls.add_document(twin["id"], os.urandom(32), title, description, PENDING, media_type, 0,
                                           component))  # a placeholder nobody can have registered  # fmt: skip
    return twin


async def check_version(session: Session, twin_ref: str, document: str, description: str = "") -> dict[str, Any]:
    """Whether the session may add a version to the document, asked before the upload; the twin."""
    twin = await session.twin(twin_ref)
    entry = find(twin, document)
    await session.check(calls.add_document_version(twin["id"], entry["id"], os.urandom(32), 0, PENDING, description))
    return twin


async def add(session: Session, twin_ref: str, source: Path | bytes, title: str, *, description: str = "",
              component: str | None = None, media_type: str = DEFAULT_MEDIA_TYPE, readers: list[str] | None = None,
              attributes: list[str] | None = None, progress: Progress | None = None) -> DocumentAdded:  # fmt: skip
    """Encrypt ``source`` into the store and register it on the twin.

    The chain records the manifest's hash, which commits to every encrypted chunk and to
    the data key; the key is sealed to each reader (default: every organisation with a
    role on the twin) and KP-CPRE-encrypted for the owner under the document's
    attributes, so the owner can grant others access later."""
    twin = await check_add(session, twin_ref, title, description=description, component=component,
                           media_type=media_type)  # fmt: skip
    tags = document_attributes(twin["id"], component, attributes or [])
    intent = intents.write_key("documents.add", twin["id"], component or "", tags, sorted(readers or []), title, description,
                     media_type, await _digest(source))  # fmt: skip
    earlier = await session.resume(intent)
    if earlier is not None:  # sent before and not seen committed then: that write, not a second upload
        return await _added_before(session, earlier, earlier.event("DocumentAdded")["document"])
    stored = await _store(session, twin, source, readers or [], tags, progress)
    outcome = await session.transact(calls.add_document(twin["id"], stored.manifest, title, description,
                                                        stored.reference, media_type, stored.size, component),
                                     intent=intent)  # fmt: skip
    return DocumentAdded(stored.manifest.hex(), stored, outcome)


async def _digest(source: Path | bytes) -> str:
    """The SHA-256 of a document's content (read once more for a file, off the event loop)."""
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()

    def file_digest() -> str:
        with source.open("rb") as reader:
            return hashlib.file_digest(reader, "sha256").hexdigest()

    return await asyncio.to_thread(file_digest)


async def _added_before(session: Session, outcome: Outcome, document: str) -> DocumentAdded:
    """What an add sent before stored and registered, from its committed transaction."""
    args = outcome.view["transaction"]["args"] if outcome.view is not None else {}
    item, manifest = parse_reference(args["reference"])
    acl = await (await session.store()).get_acl(item)
    size = int(args["size"])
    chunks = max(1, -(-size // CHUNK_SIZE))
    stored = StoredDocument(item, manifest, size, chunks, tuple(r.organisation for r in acl.readers))
    return DocumentAdded(document, stored, outcome)


async def add_version(session: Session, twin_ref: str, document: str, source: Path | bytes, *, description: str = "",
                      readers: list[str] | None = None, attributes: list[str] | None = None,
                      progress: Progress | None = None) -> DocumentAdded:  # fmt: skip
    """Store a new version of a document and register it."""
    twin = await check_version(session, twin_ref, document, description)
    entry = find(twin, document)
    tags = document_attributes(twin["id"], entry.get("component") or None, attributes or [])
    intent = intents.write_key("documents.add_version", twin["id"], entry["id"], tags, sorted(readers or []), description,
                     await _digest(source))  # fmt: skip
    earlier = await session.resume(intent)
    if earlier is not None:
        return await _added_before(session, earlier, entry["id"])
    stored = await _store(session, twin, source, readers or [], tags, progress)
    outcome = await session.transact(calls.add_document_version(twin["id"], entry["id"], stored.manifest, stored.size,
                                                                stored.reference, description), intent=intent)  # fmt: skip
    return DocumentAdded(entry["id"], stored, outcome)


@dataclass(frozen=True)
class DocumentRead:
    document: str
    title: str
    version: int
    size: int
    hash: str
    path: Path


async def get(session: Session, twin_ref: str, document: str, destination: Path, version: int | None = None,
              device: DeviceKeys | None = None, progress: Progress | None = None) -> DocumentRead:  # fmt: skip
    """Fetch a document version, check it against the chain and decrypt it into
    ``destination`` (as a reader, or through a grant; as ``device`` if given)."""
    entry = find(await session.twin(twin_ref), document)
    number, chosen = version_of(entry, version)
    await download_document(await session.store(), chosen["reference"], bytes.fromhex(chosen["hash"]),
                            access.unlock(session, device), destination, progress)  # fmt: skip
    return DocumentRead(entry["id"], entry["title"], number, chosen["size"], chosen["hash"], destination)


async def change_readers(session: Session, twin_ref: str, document: str, version: int | None, add: list[str],
                         remove: list[str]) -> list[ItemAcl]:  # fmt: skip
    """Add and remove reader organisations of a document (one version, or all)."""
    entry = find(await session.twin(twin_ref), document)
    versions = entry["versions"] if version is None else [version_of(entry, version)[1]]
    items = [parse_reference(v["reference"])[0] for v in versions]
    return await access.change_readers(session, items, add, remove)


async def remove(session: Session, twin_ref: str, document: str, wait: bool = True) -> Outcome:
    """Mark a document removed (its versions stay in the history)."""
    twin = await session.twin(twin_ref)
    return await session.transact(calls.remove_document(twin["id"], find(twin, document)["id"]), wait)
