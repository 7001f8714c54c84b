"""Digital twins: registration from AutomationML, specification edits, external sources,
program calls, roles, and the audit of every change with its proof checked offline."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinledger import aml
from twinledger.contracts import calls
from twinledger.core.proof import parse_proof
from twinledger.errors import BadRequest, InvalidProof, TwinledgerError
from twinledger.ledger.genesis import Genesis
from twinledger.services import documents, intents, proofs
from twinledger.services import specification as spec
from twinledger.services.proofs import Pin
from twinledger.services.remote import segment
from twinledger.services.session import Outcome, Progress, Session

SUBJECT = re.compile(r"^(org:|key:)")


def subject(value: str) -> str:
    """``ORG`` means the organisation; ``org:ORG`` and ``key:HEX`` are taken as written."""
    return value if SUBJECT.match(value) else f"org:{value}"


def parse_roles(items: list[str]) -> dict[str, dict[str, list[str]]]:
    """``SUBJECT=ROLE`` or ``SUBJECT=ROLE@ID,ID`` items as the create call's role table."""
    roles: dict[str, dict[str, list[str]]] = {}
    for item in items:
        who, sep, granted = item.partition("=")
        role, _, scopes = granted.partition("@")
        if not sep or not who or not role:
            raise BadRequest(f"--role {item!r} is not SUBJECT=ROLE or SUBJECT=ROLE@ID,ID")
        roles.setdefault(subject(who), {})[role] = [s for s in scopes.split(",") if s]
    return roles


def parse_param(item: str) -> tuple[str, bool | int | str]:
    """``name=value``: true/false are booleans, whole numbers integers, anything else a
    string (decimal numbers travel as strings; the ledger has no floats)."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise BadRequest(f"parameter {item!r} is not NAME=VALUE")
    if value in ("true", "false"):
        return name, value == "true"
    if re.fullmatch(r"-?\d+", value):
        return name, int(value)
    return name, value


@dataclass(frozen=True)
class TwinCreated:
    twin: str
    outcome: Outcome
    documents: tuple[str, ...] = ()
    """Documents made from the other parts of an ``.amlx`` container, in part order."""


async def create(session: Session, specification: bytes, name: str, device_id: str,
                 roles: dict[str, dict[str, list[str]]] | None = None,
                 progress: Progress | None = None) -> TwinCreated:  # fmt: skip
    """Register a twin from an AutomationML specification (``.aml``, or an ``.amlx``
    container whose other parts become the twin's documents, titled by their part
    names); the session's organisation owns it."""
    package = aml.read_package(specification) if aml.is_package(specification) else None
    stored, model = aml.stored_with_model(package.specification if package is not None else specification)
    intent = intents.write_key("twins.create", name, device_id, roles or {}, hashlib.sha256(stored).hexdigest())
    outcome = await session.resume(intent)  # sent before and not seen committed then: that twin, not a second upload
    if outcome is None:
        readers = await spec.readers_of(session, None, roles)
        outcome = (await spec.write(session, readers, stored, model, None,
                                    lambda version: calls.create_twin(name, device_id, version, roles or {}),
                                    intent=intent)).outcome  # fmt: skip
    twin = outcome.event("TwinCreated")["twin"]
    added: list[str] = []
    for part in package.parts if package is not None else ():
        try:
            added.append((await documents.add(session, twin, part.data, part.name, media_type=part.media_type,
                                              description=f"from the container of {package.root_name}",
                                              progress=progress)).document)  # fmt: skip
        except TwinledgerError as exc:
            raise TwinledgerError(f"twin {twin} was created, but only {len(added)} of the container's "
                                  f"{len(package.parts)} parts became documents: {part.name}: {exc.message}",
                                  code=exc.code) from None  # fmt: skip
    return TwinCreated(twin, outcome, tuple(added))


@dataclass(frozen=True)
class Exported:
    data: bytes
    version: int
    parts: tuple[str, ...]
    """Documents packed beside the specification (``.amlx``), by part name."""
    skipped: tuple[str, ...] = ()
    """Documents named like parts that could not be packed, and why."""


async def export(session: Session, twin_ref: str, version: int | None = None, package: bool = False) -> Exported:
    """A version of the twin's specification as ``.aml``, or as ``.amlx`` with the
    twin's documents that are named like container parts (``/files/manual.pdf``),
    decrypted for the session and checked against the chain."""
    twin = await session.twin(twin_ref)
    number = version or twin["aml_version"]
    specification = await spec.read(session, twin["id"], number)
    if not package:
        return Exported(specification, number, ())
    chosen, skipped, taken = [], [], {f"/{twin['device_id']}.aml".casefold()}
    for document in (d for d in twin["documents"] if d["title"].startswith("/") and not d.get("removed")):
        problem = aml.package.part_name_problem(document["title"])
        if problem is None and document["title"].casefold() in taken:
            problem = f"part name {document['title'][:80]!r} is taken by another document"
        if problem is not None:
            skipped.append(f"{document['id'][:16]}…: {problem}")
            continue
        taken.add(document["title"].casefold())
        chosen.append(document)
    parts = []
    with tempfile.TemporaryDirectory(prefix="twinledger-export-") as scratch:
        for document in chosen:
            target = Path(scratch) / document["id"]
            await documents.get(session, twin["id"], document["id"], target)
            parts.append(aml.package.Part(document["title"], document["media_type"], target.read_bytes()))
    data = aml.write_package(specification, tuple(parts), f"/{twin['device_id']}.aml")
    return Exported(data, number, tuple(p.name for p in parts), tuple(skipped))


async def specification(session: Session, twin_ref: str, version: int | None = None) -> bytes:
    """A version of the twin's specification (default: the current one), decrypted for
    the session and checked against the chain."""
    return await spec.read(session, twin_ref, version)


async def verify_specification(session: Session, twin_ref: str,
                               progress: Progress | None = None) -> list[spec.VersionCheck]:  # fmt: skip
    """Every version of the specification read from the store and checked against the
    chain (``progress`` is told of each version)."""
    return await spec.verify(session, twin_ref, progress)


async def diff(session: Session, twin_ref: str, old: int, new: int | None = None) -> str:
    """A readable diff between two versions of the specification."""
    twin = await session.twin(twin_ref)
    new = new or twin["aml_version"]
    for number in (old, new):
        if not 1 <= number <= twin["aml_version"]:
            raise BadRequest(f"twin {twin['id']} has versions 1 to {twin['aml_version']}, not {number}")
    before, after = await spec.read(session, twin["id"], old), await spec.read(session, twin["id"], new)
    return aml.diff(before, after, f"version {old}", f"version {new}")


async def _twin_id(session: Session, twin_ref: str) -> str:
    return str((await session.twin(twin_ref))["id"])


async def insert_aml(session: Session, twin_ref: str, fragment: bytes, parent: str, after: str | None = None,
                     wait: bool = True) -> Outcome:  # fmt: skip
    """Insert an element: the current version is read and checked, edited and validated
    here, stored as the next version, and its model delta submitted."""
    twin = await session.twin(twin_ref)
    base = await spec.current(session, twin["id"])
    edit = aml.insert(base.specification, fragment, parent, after)
    assert edit.model is not None

    def make(version: calls.SpecificationVersion) -> calls.ContractCall:
        return calls.insert_aml(twin["id"], parent, after, edit.element, version)

    written = await spec.write(session, await spec.readers_of(session, twin), edit.specification, edit.model, base,
                               make, wait)  # fmt: skip
    return written.outcome


async def remove_aml(session: Session, twin_ref: str, element: str, wait: bool = True, links: str = "refuse") -> Outcome:
    """Remove an element; InternalLinks elsewhere into it are refused, or removed with it
    (``links="remove"``) and named to the chain with where they were."""
    twin = await session.twin(twin_ref)
    base = await spec.current(session, twin["id"])
    edit = aml.remove(base.specification, element, links)
    assert edit.model is not None
    removed = list(zip(edit.links, edit.link_holders, strict=True))
    written = await spec.write(session, await spec.readers_of(session, twin), edit.specification, edit.model, base,
                               lambda version: calls.remove_aml(twin["id"], element, removed, version), wait)  # fmt: skip
    return written.outcome


async def replace(session: Session, twin_ref: str, specification: bytes, wait: bool = True) -> Outcome:
    """Put a whole new specification in place (a tool's new export, or a good version in
    place of one that strays from the model on chain): for whoever may insert and remove
    over the whole twin. The model on chain follows it entry by entry."""
    twin = await session.twin(twin_ref)
    stored, model = aml.stored_with_model(specification)
    chain = await spec.model_on_chain(session, twin["id"])
    written = await spec.write(session, await spec.readers_of(session, twin), stored, model, spec.Current(b"", chain),
                               lambda version: calls.replace_aml(twin["id"], version), wait)  # fmt: skip
    return written.outcome


async def add_source(session: Session, twin_ref: str, uri: str, description: str = "", wait: bool = True) -> Outcome:
    return await session.transact(calls.add_source(await _twin_id(session, twin_ref), uri, description), wait)


async def remove_source(session: Session, twin_ref: str, uri: str, wait: bool = True) -> Outcome:
    return await session.transact(calls.remove_source(await _twin_id(session, twin_ref), uri), wait)


async def call_program(session: Session, twin_ref: str, program: str, params: dict[str, bool | int | str],
                       wait: bool = True) -> Outcome:  # fmt: skip
    """Queue a program call for the device; the contract checks it against the
    specification's safety rules. ``program`` is a full component path or any unique
    tail of one (``SetVelocity``, ``Conveyor2/SetVelocity``); the call names the path."""
    twin_id = await _twin_id(session, twin_ref)
    path = aml.program_path([p["path"] for p in await programs(session, twin_id)], program)
    return await session.transact(calls.call_program(twin_id, path, params), wait)


async def programs(session: Session, twin_ref: str) -> list[dict[str, Any]]:
    """The twin's programs as the chain holds them: full path, component, parameters and rules."""
    return list((await session.get(f"/v1/twins/{segment(twin_ref, 'twin')}/programs"))["programs"])


async def report_call(session: Session, twin_ref: str, call: int, status: str, result: str = "",
                      wait: bool = True) -> Outcome:  # fmt: skip
    """Move a program call along its life-cycle: dispatched, executed, failed or rejected."""
    twin_id = await _twin_id(session, twin_ref)
    made = calls.dispatch_call(twin_id, call) if status == "dispatched" else calls.report_call(twin_id, call, status,
                                                                                             result)  # fmt: skip
    return await session.transact(made, wait)


async def grant_role(session: Session, twin_ref: str, who: str, role: str, scopes: list[str],
                     wait: bool = True) -> Outcome:  # fmt: skip
    """Give a subject a role on the twin (owner only) — not a read grant (``access.grant``).
    An organisation given a role also becomes a reader of the current specification, if
    this key wrote it (else it reads from the next version on, whose readers are the
    twin's organisations then)."""
    twin_id = await _twin_id(session, twin_ref)
    outcome = await session.transact(calls.grant_role(twin_id, subject(who), role, scopes), wait)
    if wait and subject(who).startswith("org:"):
        await spec.share(session, twin_id, subject(who).removeprefix("org:"))
    return outcome


async def revoke_role(session: Session, twin_ref: str, who: str, role: str, wait: bool = True) -> Outcome:
    return await session.transact(calls.revoke_role(await _twin_id(session, twin_ref), subject(who), role), wait)


async def set_permissions(session: Session, twin_ref: str, role: str, methods: list[str],
                          wait: bool = True) -> Outcome:  # fmt: skip
    return await session.transact(calls.set_permissions(await _twin_id(session, twin_ref), role, methods), wait)


@dataclass(frozen=True)
class Audit:
    twin: str
    entries: list[dict[str, Any]]
    """Every transaction that changed the twin, with its proof and ``verified``."""
    trusted: Pin
    """The chain and validator set the proofs were checked against (this home's genesis)."""

    @property
    def verified(self) -> bool:
        return all(entry["verified"] for entry in self.entries)


async def audit(session: Session, twin_ref: str) -> Audit:
    """Every change of the twin, each inclusion proof checked offline against the
    validators in this home's genesis (not against what the node says)."""
    entries = (await session.get(f"/v1/twins/{segment(twin_ref, 'twin')}/audit", proofs="true"))["entries"]
    trusted = Pin.of(Genesis.read(session.config.genesis_path))
    devices = {d["key"]: d["name"] for d in (await session.twin(twin_ref))["devices"]}
    for entry in entries:
        if not entry["organisation"] and entry["key"] in devices:  # a device's own key: named as the twin names it
            entry["device"] = devices[entry["key"]]
        try:
            verified = proofs.check(parse_proof(json.dumps(entry["proof"]).encode()), trusted)
            entry["verified"] = verified.tx_hash.hex() == entry["tx"]
        except InvalidProof:
            entry["verified"] = False
    return Audit(twin_ref, entries, trusted)
