"""``.amlx``: the AutomationML container (an Open Packaging Conventions zip) that
engineering tools save beside plain ``.aml``. Its root document is the specification;
its other parts (manuals, drawings, libraries) become the twin's documents, and an
export packs them back at the paths the specification names them by."""

from __future__ import annotations

import io
import mimetypes
import zipfile
import zlib
from dataclasses import dataclass
from urllib.parse import quote, unquote

from lxml import etree

from twinledger.aml.document import AmlError, one_line, parse_xml

MAX_PACKAGE_BYTES = 512 * 1024 * 1024
"""What an import may unpack in all, against zip bombs (and what memory holds)."""
MAX_PARTS = 10_000
MAX_RATIO = 200
RELATIONSHIPS = "http://schemas.openxmlformats.org/package/2006/relationships"
CONTENT_TYPES = "http://schemas.openxmlformats.org/package/2006/content-types"
AML_RELATIONSHIP = "http://schemas.automationml.org/container/relationship/"
ROOT_DOCUMENT = AML_RELATIONSHIP + "RootDocument"
CAEX_SCHEMA = AML_RELATIONSHIP + "CAEXSchema"
ANY_CONTENT = AML_RELATIONSHIP + "AnyContent"
AML_MEDIA_TYPE = "model/vnd.automationml+xml"
EPOCH = (1980, 1, 1, 0, 0, 0)
MTP_MANIFEST = "/manifest.aml"
"""An MTP package (VDI/VDE/NAMUR 2658) without relationships: its root is the manifest
(at the top or in a folder); otherwise the one AutomationML document at the top."""


@dataclass(frozen=True)
class Part:
    name: str
    """The part's name in the package, ``/files/manual.pdf``."""
    media_type: str
    data: bytes


@dataclass(frozen=True)
class Package:
    root_name: str
    specification: bytes
    parts: tuple[Part, ...]


def is_package(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"


def part_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a part of a package this side writes (None if it can): an
    absolute path of non-empty segments, none of them ``.`` or ``..``, no backslash, and
    not one of the package's own parts (content types, relationships)."""
    segments = name.split("/")
    if not name.startswith("/") or any(s in ("", ".", "..") for s in segments[1:]) or "\\" in name:
        return f"part name {name[:80]!r} is not an absolute path of plain segments"
    if name.casefold() == "/[content_types].xml" or "_rels" in (s.casefold() for s in segments) or name.endswith(".rels"):
        return f"part name {name[:80]!r} is reserved for the package itself"
    return None


def _reserved(name: str) -> bool:
    return name == "/[Content_Types].xml" or ("/_rels/" in name and name.endswith(".rels"))


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos = [i for i in archive.infolist() if not i.is_dir()]
    if len(infos) > MAX_PARTS:
        raise AmlError(f"the package has {len(infos)} parts; the limit is {MAX_PARTS}", code="too_large")
    total = sum(i.file_size for i in infos)
    if total > MAX_PACKAGE_BYTES:
        raise AmlError(f"the package unpacks to {total} bytes; the limit is {MAX_PACKAGE_BYTES}", code="too_large")
    for info in infos:
        if info.file_size > 1024 * 1024 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise AmlError(f"part {info.filename!r} unpacks {info.file_size // max(info.compress_size, 1)}-fold; "
                           "refusing a likely zip bomb", code="too_large")  # fmt: skip
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = "/" + info.filename.replace("\\", "/").lstrip("/")
        if name.casefold() in {m.casefold() for m in members}:
            raise AmlError(f"the package holds part {name[:80]!r} twice", code="invalid_package")
        members[name] = info
    return members


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with archive.open(info) as source:
            data = source.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError, OSError) as exc:
        raise AmlError(f"part {info.filename[:80]!r} cannot be read: {one_line(str(exc))}", code="invalid_package") from None
    if len(data) != info.file_size:
        raise AmlError(f"part {info.filename!r} is not the size its entry states", code="invalid_package")
    return data


def _relationships(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> list[tuple[str, str]]:
    """(type, part name) of the package's own relationships."""
    info = members.get("/_rels/.rels")
    if info is None:
        return []
    root = parse_xml(_read(archive, info), "the package's relationships")
    return [(r.get("Type") or "", "/" + unquote(r.get("Target") or "").lstrip("/"))
            for r in root.iter(f"{{{RELATIONSHIPS}}}Relationship") if r.get("TargetMode") != "External"]  # fmt: skip


def _media_types(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> tuple[dict[str, str], dict[str, str]]:
    info = members.get("/[Content_Types].xml")
    if info is None:
        return {}, {}
    root = parse_xml(_read(archive, info), "the package's content types")
    defaults = {(d.get("Extension") or "").lower(): d.get("ContentType") or "" for d in root.iter(f"{{{CONTENT_TYPES}}}Default")}
    overrides = {unquote(o.get("PartName") or ""): o.get("ContentType") or "" for o in root.iter(f"{{{CONTENT_TYPES}}}Override")}
    return defaults, overrides


def read_package(data: bytes) -> Package:
    """The root document and the other parts of an ``.amlx`` (or ``.mtp``) package."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise AmlError(f"the package is not a readable zip: {exc}", code="invalid_package") from None
    with archive:
        members = _members(archive)
        relationships = _relationships(archive, members)
        roots = [name for kind, name in relationships if kind == ROOT_DOCUMENT]
        if not roots:
            documents = [name for name in members if name.lower().endswith(".aml")]
            manifests = [name for name in documents if name.lower().endswith(MTP_MANIFEST)]
            top = [name for name in documents if name.count("/") == 1]
            roots = manifests if len(manifests) == 1 else top if len(top) == 1 else documents
        if len(roots) != 1 or roots[0] not in members:
            raise AmlError("the package names no single root AutomationML document "
                           f"(found {roots[:3] or 'none'})", code="invalid_package")  # fmt: skip
        schemas = {name for kind, name in relationships if kind == CAEX_SCHEMA}
        defaults, overrides = _media_types(archive, members)
        parts = []
        for name, info in sorted(members.items()):
            if name == roots[0] or name in schemas or _reserved(name):
                continue
            problem = part_name_problem(name)
            if problem is not None:
                raise AmlError(f"the package's {problem}", code="invalid_package")
            extension = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
            media_type = overrides.get(name) or defaults.get(extension) or "application/octet-stream"
            parts.append(Part(name, media_type, _read(archive, info)))
        return Package(roots[0], _read(archive, members[roots[0]]), tuple(parts))


def write_package(specification: bytes, parts: tuple[Part, ...] = (), root_name: str = "/specification.aml") -> bytes:
    """An ``.amlx`` holding the specification as its root document and ``parts`` beside
    it; the same input gives the same bytes."""
    names = [root_name, *(p.name for p in parts)]
    for name in names:
        problem = part_name_problem(name)
        if problem is not None:
            raise AmlError(problem, code="invalid_package")
    if len({n.casefold() for n in names}) != len(names):
        raise AmlError("package part names must be distinct", code="invalid_package")
    types = etree.Element(f"{{{CONTENT_TYPES}}}Types", nsmap={None: CONTENT_TYPES})
    etree.SubElement(types, f"{{{CONTENT_TYPES}}}Default", Extension="rels",
                     ContentType="application/vnd.openxmlformats-package.relationships+xml")  # fmt: skip
    etree.SubElement(types, f"{{{CONTENT_TYPES}}}Override", PartName=quote(root_name), ContentType=AML_MEDIA_TYPE)
    for part in parts:
        media_type = part.media_type or mimetypes.guess_type(part.name)[0] or "application/octet-stream"
        etree.SubElement(types, f"{{{CONTENT_TYPES}}}Override", PartName=quote(part.name), ContentType=media_type)
    rels = etree.Element(f"{{{RELATIONSHIPS}}}Relationships", nsmap={None: RELATIONSHIPS})
    for number, (kind, name) in enumerate([(ROOT_DOCUMENT, root_name), *((ANY_CONTENT, p.name) for p in parts)], 1):
        etree.SubElement(rels, f"{{{RELATIONSHIPS}}}Relationship", Type=kind, Target=quote(name), Id=f"R{number}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (("[Content_Types].xml", _xml(types)), ("_rels/.rels", _xml(rels)),
                           (root_name[1:], specification), *((p.name[1:], p.data) for p in parts)):  # fmt: skip
            archive.writestr(zipfile.ZipInfo(name, EPOCH), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _xml(element: etree._Element) -> bytes:
    return etree.tostring(element, xml_declaration=True, encoding="utf-8")
