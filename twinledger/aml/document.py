"""CAEX documents: parsed safely, checked against the official schema of their CAEX
version and against twinledger's rules, and stored in one canonical form.

Everything here is a deterministic function of bytes, so contracts can use it: the
parser never loads a DTD, resolves no entity and touches no network.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from importlib.resources import files

from lxml import etree

from twinledger.errors import ContractError

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""What the parser accepts at all (a plant model runs to a few MB)."""
MAX_DEPTH = 64
CAEX_NAMESPACE = "http://www.dke.de/CAEX"
VERSIONS = {None: "2.15", CAEX_NAMESPACE: "3.0"}
"""CAEX version by the root's namespace: 2.15 has none, 3.0 has its own."""
SCHEMA_FILES = {"2.15": "CAEX_ClassModel_V2.15.xsd", "3.0": "CAEX_ClassModel_V3.0.xsd"}

HEADER = ("Description", "Version", "Revision", "Copyright", "AdditionalInformation", "SourceObjectInformation")
CHILD_ORDER = {name: rank for rank, name in enumerate((
    *HEADER, "SuperiorStandardVersion", "SourceDocumentInformation", "ExternalReference", "InstanceHierarchy",
    "InterfaceClassLib", "RoleClassLib", "SystemUnitClassLib", "AttributeTypeLib", "DefaultValue", "Value",
    "RefSemantic", "Constraint", "Attribute", "ExternalInterface", "InternalElement", "SupportedRoleClass",
    "InternalLink", "RoleRequirements", "MappingObject", "InterfaceClass", "RoleClass", "SystemUnitClass",
    "AttributeType",
))}  # fmt: skip
"""The order both CAEX schemas give an element's children: every sequence in them is a
subsequence of this one, so a new child goes where its rank says."""
FREE_CONTENT = frozenset({"Value", "DefaultValue", "AdditionalInformation", "RequiredValue", "RequiredMinValue",
                          "RequiredMaxValue"})  # fmt: skip
"""Elements whose content the schemas leave free (``xs:anyType``): data, not CAEX structure."""
MAX_MESSAGE = 300
MAX_ID = 128
"""IDs of the instance hierarchies become state keys and scopes: bounded."""


class AmlError(ContractError):
    code = "invalid_aml"


def local(element: etree._Element) -> str:
    """The element's name without its namespace (faster than etree.QName, called per element)."""
    tag = element.tag
    return tag[tag.rfind("}") + 1:] if isinstance(tag, str) else ""


def describe(element: etree._Element) -> str:
    """``<InternalElement Name='Conveyor' ID='c-1'> (line 12)``: an element as a reader finds it."""
    names = " ".join(f"{a}={element.get(a)!r}" for a in ("Name", "ID") if element.get(a) is not None)
    line = f" (line {element.sourceline})" if element.sourceline else ""
    return f"<{local(element)}{' ' + names if names else ''}>{line}"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=True, remove_pis=True, remove_blank_text=True)  # fmt: skip


def one_line(message: str) -> str:
    """A message from lxml or from a file as one line of bounded length: values quoted
    from a file cannot start lines of their own."""
    text = " ".join(message.split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " …"


def parse_xml(data: bytes, what: str, limit: int = MAX_DOCUMENT_BYTES) -> etree._Element:
    """Well-formed XML without DTD, within ``limit`` bytes and MAX_DEPTH levels."""
    if len(data) > limit:
        raise AmlError(f"{what} is {len(data)} bytes; the limit is {limit}", code="too_large")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise AmlError(f"{what} is not well-formed XML: {one_line(exc.msg).replace(' (try XML_PARSE_HUGE)', '')}") from None
    if root.getroottree().docinfo.doctype:
        raise AmlError(f"{what} must not carry a DOCTYPE")
    check_depth(root, what)
    return root


def check_depth(root: etree._Element, what: str = "the specification") -> None:
    if root.xpath("boolean(/" + "*/" * MAX_DEPTH + "*)"):
        raise AmlError(f"{what} nests deeper than {MAX_DEPTH} levels")


def caex_version(root: etree._Element) -> str:
    namespace = etree.QName(root).namespace
    if local(root) != "CAEXFile":
        raise AmlError(f"the specification's root is <{local(root)}>, not <CAEXFile>")
    if namespace not in VERSIONS:
        raise AmlError(f"the specification's namespace {namespace!r} is neither CAEX 2.15 (none) nor 3.0 "
                       f"({CAEX_NAMESPACE})")  # fmt: skip
    return VERSIONS[namespace]


@cache
def schema(version: str) -> etree.XMLSchema:
    """The official CAEX schema of ``version`` (AutomationML e.V., MIT), shipped in the package."""
    source = files("twinledger.aml").joinpath("xsd", SCHEMA_FILES[version]).read_bytes()
    return etree.XMLSchema(etree.fromstring(source))


def check_schema(root: etree._Element) -> str:
    """The CAEX version of the document, if it follows that version's schema."""
    version = caex_version(root)
    checker = schema(version)
    if not checker.validate(root):
        error = checker.error_log[0]
        message = one_line(error.message.replace(f"{{{CAEX_NAMESPACE}}}", ""))
        raise AmlError(f"the specification does not follow the CAEX {version} schema: line {error.line}: {message}")
    return version


def structure(element: etree._Element) -> Iterator[etree._Element]:
    """``element`` and the CAEX elements inside it, in document order — not the free
    content of values, whose elements are data (they may look like components)."""
    data = {inner for holder in element.iter(*(f"{{*}}{name}" for name in FREE_CONTENT))
            for inner in holder.iterdescendants()}  # fmt: skip
    return (e for e in element.iter(etree.Element) if e not in data) if data else element.iter(etree.Element)


def check_ids(root: etree._Element) -> None:
    """IDs of the instance hierarchies are unique and printable, and every component there
    carries one, since roles, feeds, documents and edits address it by ID. Libraries may
    repeat an instance's ID: tools copy a role class's interface IDs into the instances'
    role requirements, and addressing prefers the instance."""
    seen: set[str] = set()
    for hierarchy in (c for c in root if local(c) == "InstanceHierarchy"):
        for element in structure(hierarchy):
            identifier = element.get("ID")
            if identifier is None:
                if local(element) == "InternalElement":
                    raise AmlError(f"{describe(element)} in an instance hierarchy has no ID; components are "
                                   "addressed by ID")  # fmt: skip
                continue
            if not identifier or not identifier.isprintable() or len(identifier) > MAX_ID:
                raise AmlError(f"{describe(element)} has an ID that is empty, not printable or longer than {MAX_ID}")
            if identifier in seen:
                raise AmlError(f"ID {identifier!r} is used twice (again by {describe(element)})")
            if "/" in identifier and by_path(root, identifier) not in (None, element):
                raise AmlError(f"{describe(element)} has an ID that is another element's name path; a reference "
                               "to it would be ambiguous")  # fmt: skip
            seen.add(identifier)


def by_path(root: etree._Element, ref: str) -> etree._Element | None:
    """The element the name path ``ref`` names (``Plant/Line1/Conveyor``: an instance
    hierarchy or library, then names of children), if any."""
    element: etree._Element | None = root
    for name in ref.split("/") if ref else ():
        element = next((c for c in element if c.get("Name") == name), None) if element is not None else None
    return element if element is not root else None


def canonical(root: etree._Element) -> bytes:
    """The stored form: indented one element per line, then C14N, so one specification
    has one byte string and a stored version's line numbers and diffs read well."""
    etree.indent(root, space="  ")
    try:
        return etree.tostring(root, method="c14n")
    except (etree.C14NError, ValueError) as exc:  # e.g. a relative namespace URI, which C14N refuses
        raise AmlError(f"the specification has no canonical form: {one_line(str(exc)) or 'C14N failed'} "
                       "(a relative namespace URI?)") from None


def rank(name: str) -> int:
    return CHILD_ORDER.get(name, len(CHILD_ORDER))
