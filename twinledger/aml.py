"""AutomationML (CAEX) specifications: parsed safely, validated, edited, compared, and
read for program interfaces with their safety rules.

Everything here is a deterministic function of bytes, so contracts can use it: the
parser never loads a DTD, resolves no entity and touches no network, and a document is
stored in its canonical form (C14N), so equal specifications are equal bytes.

Conventions on top of CAEX (docs/twins.md):
- Elements that carry an ``ID`` (InternalElement, ExternalInterface, …) are addressed by
  it; IDs are unique in a document.
- A *program* is an ``ExternalInterface`` whose ``RefBaseClassPath`` ends in
  ``/Program``; its ``Attribute`` children are its parameters. A parameter's type is its
  ``AttributeDataType`` (xs:double, xs:float, xs:integer, xs:int, xs:boolean, xs:string)
  and its safety rules are CAEX ``Constraint``s: ``OrdinalScaledType``
  (RequiredMinValue, RequiredMaxValue) and ``NominalScaledType`` (RequiredValue, one per
  allowed value).
- A *signal* is an ``ExternalInterface`` whose ``RefBaseClassPath`` ends in ``/Signal``:
  a value the device streams (docs/agent.md). Its ``Name`` is the variable's name on the
  element's OPC UA object (the element's ``OpcUaObject`` attribute, else its ID), its
  ``Kind`` attribute says what it is (``sensor``, ``production``, …), and the
  ``ExpectedRange`` constraint of its ``Value`` attribute is what the anomaly check holds
  readings against.
- A component's identity is its ``Model`` and ``SerialNumber`` attributes.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from lxml import etree

from twinledger.errors import ContractError

MAX_AML_BYTES = 60 * 1024
MAX_DEPTH = 64
PROGRAM_CLASS_SUFFIX = "/Program"
SIGNAL_CLASS_SUFFIX = "/Signal"
ID_HOLDERS = frozenset({"InternalElement", "ExternalInterface", "SystemUnitClass", "InternalLink"})
CONTAINERS = frozenset({"InstanceHierarchy", "InternalElement", "SystemUnitClass"})
"""Elements an InternalElement may be inserted under."""


class AmlError(ContractError):
    code = "invalid_aml"


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=True, remove_pis=True, remove_blank_text=True)  # fmt: skip


def _parse(data: bytes, what: str) -> etree._Element:
    if len(data) > MAX_AML_BYTES:
        raise AmlError(f"{what} is {len(data)} bytes; the limit is {MAX_AML_BYTES}")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise AmlError(f"{what} is not well-formed XML: {exc.msg}") from None
    if root.getroottree().docinfo.doctype:
        raise AmlError(f"{what} must not carry a DOCTYPE")
    if any(depth > MAX_DEPTH for depth in (len(list(e.iterancestors())) for e in root.iter())):
        raise AmlError(f"{what} nests deeper than {MAX_DEPTH} levels")
    return root


def parse_specification(data: bytes) -> etree._Element:
    """A validated CAEX document: root CAEXFile, unique IDs, InternalElements only where
    CAEX allows them."""
    root = _parse(data, "the specification")
    if _local(root) != "CAEXFile":
        raise AmlError(f"the specification's root is <{_local(root)}>, not <CAEXFile>")
    validate(root)
    return root


def validate(root: etree._Element) -> None:
    seen: dict[str, str] = {}
    for element in root.iter(etree.Element):
        name = _local(element)
        identifier = element.get("ID")
        if name in ID_HOLDERS and name != "InternalLink" and not identifier:
            raise AmlError(f"<{name} Name={element.get('Name')!r}> has no ID")
        if identifier is not None:
            if identifier in seen:
                raise AmlError(f"ID {identifier!r} is used twice")
            seen[identifier] = name
        parent = element.getparent()
        if name == "InternalElement" and parent is not None and _local(parent) not in CONTAINERS:
            raise AmlError(f"InternalElement {identifier!r} sits in <{_local(parent)}>, which cannot hold one")
        if name == "ExternalInterface" and parent is not None and _local(parent) not in CONTAINERS | {"InterfaceClass"}:
            raise AmlError(f"ExternalInterface {identifier!r} sits in <{_local(parent)}>, which cannot hold one")
    for program in programs_of(root).values():
        program.check_rules()
    signals_of(root)


def canonical(root: etree._Element) -> bytes:
    """The stored form: C14N, so one specification has one byte string."""
    return etree.tostring(root, method="c14n")


def _by_id(root: etree._Element, identifier: str) -> etree._Element | None:
    for element in root.iter(etree.Element):
        if element.get("ID") == identifier:
            return element
    return None


def _element(root: etree._Element, identifier: str, purpose: str = "") -> etree._Element:
    element = _by_id(root, identifier)
    if element is None:
        raise AmlError(f"no element with ID {identifier!r}{purpose}", code="unknown_element")
    return element


def component_path(specification: bytes, element_id: str) -> tuple[str, ...]:
    """IDs of ``element_id`` and of its ancestors that carry one, outermost first; the
    path authorization scopes are matched against."""
    element = _element(parse_specification(specification), element_id)
    ids = [e.get("ID") for e in (element, *element.iterancestors())]
    return tuple(reversed([i for i in ids if i]))


@dataclass(frozen=True)
class Edit:
    """A changed specification and what the change touched."""

    specification: bytes
    element: str
    """ID of the inserted or removed element ("" if it has none)."""
    ids: tuple[str, ...]
    """IDs of that element and everything inside it, in document order."""


def _edit(root: etree._Element, element: etree._Element) -> Edit:
    ids = tuple(e.get("ID") for e in element.iter(etree.Element) if e.get("ID"))
    return Edit(canonical(root), element.get("ID") or "", ids)


def insert(specification: bytes, fragment: bytes, parent_id: str, after_id: str | None = None) -> Edit:
    """The specification with ``fragment`` (one element) inserted under ``parent_id``,
    after its child ``after_id`` or first; the result is validated as a whole."""
    root = parse_specification(specification)
    element = _parse(fragment, "the fragment")
    parent = _element(root, parent_id, " to insert under")
    if after_id is None:
        parent.insert(_first_child_index(parent), element)
    else:
        sibling = _by_id(root, after_id)
        if sibling is None or sibling.getparent() is not parent:
            raise AmlError(f"{after_id!r} is not a child of {parent_id!r}")
        sibling.addnext(element)
    validate(root)
    return _edit(root, element)


def _first_child_index(parent: etree._Element) -> int:
    """Insert new elements after the parent's own Attributes and interfaces' place: at the
    position of its first InternalElement, or at the end."""
    for index, child in enumerate(parent):
        if _local(child) == "InternalElement":
            return index
    return len(parent)


def remove(specification: bytes, element_id: str) -> Edit:
    """The specification without the element ``element_id`` (and everything inside it)."""
    root = parse_specification(specification)
    element = _element(root, element_id, " to remove")
    parent = element.getparent()
    if parent is None:
        raise AmlError("the root cannot be removed")
    parent.remove(element)
    validate(root)
    return _edit(root, element)


def diff(old: bytes, new: bytes, old_label: str = "before", new_label: str = "after") -> str:
    """A readable unified diff of two specifications, one element per line."""

    def lines(data: bytes) -> list[str]:
        root = etree.fromstring(data, _parser())
        etree.indent(root, space="  ")
        return etree.tostring(root, encoding="unicode").splitlines()

    return "\n".join(difflib.unified_diff(lines(old), lines(new), old_label, new_label, lineterm=""))


# -- programs and their safety rules --------------------------------------------------------------

TYPES = {"xs:double": "number", "xs:float": "number", "xs:decimal": "number", "xs:integer": "integer",
         "xs:int": "integer", "xs:long": "integer", "xs:boolean": "boolean", "xs:string": "string"}  # fmt: skip


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] = ()
    unit: str | None = None

    def check(self, value: Any) -> Any:
        """``value`` as the parameter's type, or AmlError naming the broken rule."""
        where = f"parameter {self.name!r}"
        if self.type == "boolean":
            if not isinstance(value, bool):
                raise AmlError(f"{where} must be true or false", code="unsafe_parameter")
            return value
        if self.type in ("number", "integer"):
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise AmlError(f"{where} must be {_ARTICLE[self.type]}", code="unsafe_parameter")
            number = _number(value, self.type, where)
            if self.minimum is not None and number < self.minimum:
                raise AmlError(f"{where} = {value} is below its safe minimum {self.minimum:g}", code="unsafe_parameter")
            if self.maximum is not None and number > self.maximum:
                raise AmlError(f"{where} = {value} is above its safe maximum {self.maximum:g}", code="unsafe_parameter")
            value = int(value) if self.type == "integer" else str(value)
        elif not isinstance(value, str):
            raise AmlError(f"{where} must be a string", code="unsafe_parameter")
        if self.allowed and str(value) not in self.allowed:
            raise AmlError(f"{where} = {value!r} is not one of {list(self.allowed)}", code="unsafe_parameter")
        return value


_ARTICLE = {"number": "a number", "integer": "an integer"}


def _number(value: int | str, kind: str, where: str) -> float:
    """Numbers travel as integers or decimal strings (the ledger's encoding has no floats)."""
    try:
        number = float(int(value)) if kind == "integer" else float(value)
    except (TypeError, ValueError):
        raise AmlError(f"{where} must be {_ARTICLE[kind]}, got {value!r}", code="unsafe_parameter") from None
    if not math.isfinite(number):
        raise AmlError(f"{where} must be finite", code="unsafe_parameter")
    return number


@dataclass(frozen=True)
class Program:
    id: str
    name: str
    component_id: str | None
    parameters: tuple[Parameter, ...]

    def check_rules(self) -> None:
        for p in self.parameters:
            if p.minimum is not None and p.maximum is not None and p.minimum > p.maximum:
                raise AmlError(f"program {self.name!r}: parameter {p.name!r} has minimum above maximum")

    def validate_call(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter present, known and within its safety rules."""
        names = {p.name for p in self.parameters}
        unknown = sorted(set(params) - names)
        if unknown:
            raise AmlError(f"program {self.name!r} has no parameter {unknown[0]!r}", code="unsafe_parameter")
        missing = sorted(names - set(params))
        if missing:
            raise AmlError(f"program {self.name!r} needs parameter {missing[0]!r}", code="unsafe_parameter")
        return {p.name: p.check(params[p.name]) for p in self.parameters}


def programs_of(root: etree._Element) -> dict[str, Program]:
    """Program interfaces by name."""
    found: dict[str, Program] = {}
    for element in root.iter(etree.Element):
        if _local(element) != "ExternalInterface" or not (element.get("RefBaseClassPath") or "").endswith(PROGRAM_CLASS_SUFFIX):
            continue
        name = element.get("Name") or ""
        if name in found:
            raise AmlError(f"two programs are named {name!r}")
        parent = element.getparent()
        owner = parent.get("ID") if parent is not None else None
        params = tuple(_parameter(a) for a in element if _local(a) == "Attribute")
        found[name] = Program(element.get("ID") or "", name, owner, params)
    return found


def _parameter(attribute: etree._Element) -> Parameter:
    name = attribute.get("Name") or ""
    data_type = attribute.get("AttributeDataType") or "xs:string"
    if data_type not in TYPES:
        raise AmlError(f"parameter {name!r} has unsupported type {data_type!r}")
    minimum = maximum = None
    allowed: list[str] = []
    for constraint in (c for c in attribute if _local(c) == "Constraint"):
        for scale in constraint:
            for rule in scale:
                text = (rule.text or "").strip()
                kind = _local(rule)
                if kind == "RequiredMinValue":
                    minimum = _number(text, "number", f"parameter {name!r} minimum")
                elif kind == "RequiredMaxValue":
                    maximum = _number(text, "number", f"parameter {name!r} maximum")
                elif kind == "RequiredValue":
                    allowed.append(text)
    unit = attribute.get("Unit")
    return Parameter(name, TYPES[data_type], minimum, maximum, tuple(allowed), unit)


def program(specification: bytes, name: str) -> Program:
    programs = programs_of(parse_specification(specification))
    if name not in programs:
        raise AmlError(f"the specification has no program {name!r} (it has {sorted(programs) or 'none'})",
                       code="unknown_program")  # fmt: skip
    return programs[name]


# -- signals and component identity ---------------------------------------------------------------


@dataclass(frozen=True)
class Signal:
    """A value a device streams into a feed, attached to the signal's ID."""

    id: str
    name: str
    component_id: str
    opcua_object: str
    kind: str
    unit: str | None
    minimum: float | None
    """The ExpectedRange, if the specification gives one."""
    maximum: float | None

    @property
    def opcua_node(self) -> str:
        return f"{self.opcua_object}/{self.name}"

    def deviation(self, value: float) -> str | None:
        """'below' or 'above' when ``value`` is outside the expected range, else None."""
        if self.minimum is not None and value < self.minimum:
            return "below"
        if self.maximum is not None and value > self.maximum:
            return "above"
        return None


def _interfaces(root: etree._Element, suffix: str) -> list[etree._Element]:
    return [e for e in root.iter(etree.Element)
            if _local(e) == "ExternalInterface" and (e.get("RefBaseClassPath") or "").endswith(suffix)]  # fmt: skip


def _attribute_value(element: etree._Element, name: str) -> str | None:
    """The ``Value`` of the element's own attribute ``name`` (not of its children's)."""
    for attribute in element:
        if _local(attribute) == "Attribute" and attribute.get("Name") == name:
            value = next((v for v in attribute if _local(v) == "Value"), None)
            return (value.text or "").strip() if value is not None else ""
    return None


def opcua_object(element: etree._Element) -> str:
    return _attribute_value(element, "OpcUaObject") or element.get("ID") or ""


def object_of(specification: bytes, element_id: str) -> str:
    """The OPC UA object of the component ``element_id``."""
    return opcua_object(_element(parse_specification(specification), element_id))


def signals_of(root: etree._Element) -> list[Signal]:
    """Signal interfaces in document order."""
    found = []
    for interface in _interfaces(root, SIGNAL_CLASS_SUFFIX):
        owner = interface.getparent()
        if owner is None or _local(owner) != "InternalElement":
            raise AmlError(f"signal {interface.get('ID')!r} must belong to an InternalElement")
        kind = _attribute_value(interface, "Kind") or "sensor"
        value = next((a for a in interface if _local(a) == "Attribute" and a.get("Name") == "Value"), None)
        rule = _parameter(value) if value is not None else Parameter("Value", "number")
        if rule.type not in ("number", "integer"):
            raise AmlError(f"signal {interface.get('ID')!r} must carry numbers, not {rule.type}s")
        if rule.minimum is not None and rule.maximum is not None and rule.minimum > rule.maximum:
            raise AmlError(f"signal {interface.get('ID')!r} expects a minimum above its maximum")
        found.append(Signal(interface.get("ID") or "", interface.get("Name") or "", owner.get("ID") or "",
                            opcua_object(owner), kind, rule.unit, rule.minimum, rule.maximum))  # fmt: skip
    return found


def signals(specification: bytes) -> list[Signal]:
    return signals_of(parse_specification(specification))


@dataclass(frozen=True)
class Identity:
    """What tells one physical component from another of the same kind."""

    element_id: str
    opcua_object: str
    model: str
    serial: str


def identities(specification: bytes) -> list[Identity]:
    """Components that state a serial number, in document order."""
    root = parse_specification(specification)
    return [Identity(e.get("ID") or "", opcua_object(e), _attribute_value(e, "Model") or "", serial)
            for e in root.iter(etree.Element)
            if _local(e) == "InternalElement" and (serial := _attribute_value(e, "SerialNumber"))]  # fmt: skip


@dataclass(frozen=True)
class Replacement:
    """How to swap a component for a new one of its kind: remove ``old``, insert
    ``fragment`` under ``parent`` after ``after``."""

    old: str
    new: str
    parent: str
    after: str | None
    fragment: bytes


def _in_namespace_of(element: etree._Element, tag: str, **attributes: str) -> etree._Element:
    namespace = etree.QName(element).namespace
    return etree.Element(f"{{{namespace}}}{tag}" if namespace else tag, **attributes)


def _successor_id(root: etree._Element, old: str) -> str:
    """``level-sensor-1`` → ``level-sensor-2`` (the next number no element uses)."""
    used = {e.get("ID") for e in root.iter(etree.Element)}
    stem = old.rsplit("-", 1)[0] if old.rsplit("-", 1)[-1].isdigit() else old
    number = 2
    while f"{stem}-{number}" in used:
        number += 1
    return f"{stem}-{number}"


def replacement(specification: bytes, element_id: str, model: str, serial: str) -> Replacement:
    """The specification entry of a new component in ``element_id``'s place: the old
    entry with a new ID (its interfaces renamed alike), the new identity, and its OPC UA
    object kept, since the new part sits where the old one did."""
    root = parse_specification(specification)
    old = _element(root, element_id)
    parent = old.getparent()
    if _local(old) != "InternalElement" or parent is None or not parent.get("ID"):
        raise AmlError(f"{element_id!r} is not a component inside an element with an ID")
    new_id = _successor_id(root, element_id)
    new = etree.fromstring(etree.tostring(old))
    for element in new.iter(etree.Element):
        identifier = element.get("ID")
        if identifier:
            element.set("ID", new_id + identifier[len(element_id):] if identifier.startswith(element_id) else
                        f"{new_id}-{identifier}")  # fmt: skip
    for name, value in (("Model", model), ("SerialNumber", serial), ("OpcUaObject", opcua_object(old))):
        attribute = next((a for a in new if _local(a) == "Attribute" and a.get("Name") == name), None)
        if attribute is None:
            attribute = _in_namespace_of(new, "Attribute", Name=name, AttributeDataType="xs:string")
            attributes = [i for i, child in enumerate(new) if _local(child) == "Attribute"]
            new.insert(attributes[-1] + 1 if attributes else 0, attribute)
        for child in [c for c in attribute if _local(c) == "Value"]:
            attribute.remove(child)
        value_element = _in_namespace_of(attribute, "Value")
        value_element.text = value
        attribute.append(value_element)
    previous = old.getprevious()
    while previous is not None and not previous.get("ID"):
        previous = previous.getprevious()
    after = previous.get("ID") if previous is not None and _local(previous) == "InternalElement" else None
    return Replacement(element_id, new_id, parent.get("ID") or "", after, etree.tostring(new, method="c14n"))
