"""What a twin's contract enforces from its specification: components, programs with
their safety rules, signals and component identities (docs/twins.md).

Conventions on top of CAEX, read only in instance hierarchies (a class library describes
kinds of things, not the plant):
- A *program* is an ``ExternalInterface`` of a component whose ``RefBaseClassPath`` ends
  in ``/Program``; its ``Attribute`` children are its parameters, typed by their
  ``AttributeDataType``, with CAEX ``Constraint``s as safety rules (``OrdinalScaledType``
  minimum and maximum, ``NominalScaledType`` allowed values). A component also has the
  programs its SystemUnitClass (and that class's base classes) declares, unless it
  declares one of the same name itself. A program is named by its component path,
  ``Plant/Line1/Conveyor/SetVelocity``; any unique tail of that path names it too.
- A *signal* is an ``ExternalInterface`` of a component whose ``RefBaseClassPath`` ends
  in ``/Signal``: a value the device streams (docs/agent.md), addressed by its ID. Its
  ``Name`` is the variable's name on the component's OPC UA object (the component's
  ``OpcUaObject`` attribute, else its ID), its ``Kind`` attribute says what it is, and the
  ``ExpectedRange`` constraint of its ``Value`` attribute is what the anomaly check holds
  readings against.
- A component's identity is its ``Model`` and ``SerialNumber`` attributes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lxml import etree

from twinledger.aml.document import FREE_CONTENT, AmlError, check_depth, check_ids, check_schema, local, structure

PROGRAM_CLASS_SUFFIX = "/Program"
SIGNAL_CLASS_SUFFIX = "/Signal"
MAX_CLASS_DEPTH = 32
MAX_PROGRAMS = 20_000
"""Programs a specification may give its components in all (classes multiply them)."""
MAX_NAME = 128
MAX_PATH = 512
MAX_PARAMETERS = 64
MAX_ALLOWED = 64
"""Bounds on what a program's entry on chain holds."""
INT64 = (-(2**63), 2**63 - 1)
TYPES = {"xs:double": "number", "xs:float": "number", "xs:decimal": "number", "xs:integer": "integer",
         "xs:int": "integer", "xs:long": "integer", "xs:boolean": "boolean", "xs:string": "string"}  # fmt: skip
_ARTICLE = {"number": "a number", "integer": "an integer"}


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
            number: float | int = _number(value, self.type, where)
            if self.type == "integer":
                number = int(value)  # compared exactly: Python compares an int with a float bound exactly
            if self.minimum is not None and number < self.minimum:
                raise AmlError(f"{where} = {value} is below its safe minimum {self.minimum:g}", code="unsafe_parameter")
            if self.maximum is not None and number > self.maximum:
                raise AmlError(f"{where} = {value} is above its safe maximum {self.maximum:g}", code="unsafe_parameter")
            if self.type == "integer" and not INT64[0] <= int(value) <= INT64[1]:
                raise AmlError(f"{where} = {value} is outside the 64-bit integer range", code="unsafe_parameter")
            value = int(value) if self.type == "integer" else str(value)
        elif not isinstance(value, str):
            raise AmlError(f"{where} must be a string", code="unsafe_parameter")
        if self.allowed and str(value) not in self.allowed:
            raise AmlError(f"{where} = {value!r} is not one of {list(self.allowed)}", code="unsafe_parameter")
        return value


def _number(value: int | str, kind: str, where: str) -> float:
    """Numbers travel as integers or decimal strings (the ledger's encoding has no floats)."""
    if isinstance(value, str) and value != value.strip():
        raise AmlError(f"{where} must be {_ARTICLE[kind]} without spaces around it, got {value!r}", code="unsafe_parameter")
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
    """The interface's ID; "" when the component has the program from its class."""
    name: str
    path: str
    """Component path and name: ``Plant/Line1/Conveyor/SetVelocity``."""
    component_id: str | None
    parameters: tuple[Parameter, ...]
    declared_in: str = ""
    """The class (name path) whose declaration the component has, or "" for its own."""

    @property
    def target(self) -> str | None:
        """What role scopes are matched against: the interface, else its component."""
        return self.id or self.component_id

    def validate_call(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter present, known and within its safety rules."""
        names = {p.name for p in self.parameters}
        unknown = sorted(set(params) - names)
        if unknown:
            raise AmlError(f"program {self.path!r} has no parameter {unknown[0]!r}", code="unsafe_parameter")
        missing = sorted(names - set(params))
        if missing:
            raise AmlError(f"program {self.path!r} needs parameter {missing[0]!r}", code="unsafe_parameter")
        return {p.name: p.check(params[p.name]) for p in self.parameters}


def _parameter(attribute: etree._Element, where: str) -> Parameter:
    """A parameter with the tightest of its constraints: the highest minimum, the lowest
    maximum, the values every NominalScaledType allows."""
    name = attribute.get("Name") or ""
    data_type = attribute.get("AttributeDataType") or "xs:string"
    if data_type not in TYPES:
        raise AmlError(f"{where}: parameter {name!r} has unsupported type {data_type!r} (use one of {sorted(TYPES)})")
    minimums, maximums, allowed_sets = [], [], []
    for scale in (s for c in attribute.iterchildren("{*}Constraint") for s in c):
        values = [(local(rule), (rule.text or "").strip()) for rule in scale]
        minimums += [_number(t, "number", f"{where}: parameter {name!r} minimum") for k, t in values if k == "RequiredMinValue"]
        maximums += [_number(t, "number", f"{where}: parameter {name!r} maximum") for k, t in values if k == "RequiredMaxValue"]
        if local(scale) == "NominalScaledType":
            allowed_sets.append([t for k, t in values if k == "RequiredValue"])
    minimum = max(minimums) if minimums else None
    maximum = min(maximums) if maximums else None
    if minimum is not None and maximum is not None and minimum > maximum:
        raise AmlError(f"{where}: parameter {name!r} has minimum above maximum")
    allowed = [v for v in allowed_sets[0] if all(v in other for other in allowed_sets[1:])] if allowed_sets else []
    if allowed_sets and not allowed:
        raise AmlError(f"{where}: parameter {name!r} has constraints that together allow no value")
    if (len(name) > MAX_NAME or len(attribute.get("Unit") or "") > MAX_NAME or len(allowed) > MAX_ALLOWED
            or any(len(v) > MAX_NAME for v in allowed)):  # fmt: skip
        raise AmlError(f"{where}: parameter {name[:40]!r} has a name, unit or allowed value longer than {MAX_NAME} "
                       f"characters or more than {MAX_ALLOWED} allowed values")  # fmt: skip
    return Parameter(name, TYPES[data_type], minimum, maximum, tuple(dict.fromkeys(allowed)), attribute.get("Unit"))


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


@dataclass(frozen=True)
class Identity:
    """What tells one physical component from another of the same kind."""

    element_id: str
    opcua_object: str
    model: str
    serial: str


@dataclass(frozen=True)
class Model:
    """Everything the contracts read from one specification, extracted once (and shared
    through a cache, so read-only: its mappings are proxies)."""

    version: str
    ancestors: Mapping[str, tuple[str, ...]]
    """ID → IDs of that element and its ancestors that carry one, outermost first."""
    programs: tuple[Program, ...]
    signals: tuple[Signal, ...]
    identities: tuple[Identity, ...]
    objects: Mapping[str, str]
    """Component ID → its OPC UA object."""
    names: Mapping[str, tuple[str, str]]
    """ID → (name, name path from the instance hierarchy) of each element that has one."""

    def program(self, name: str) -> Program:
        """The program ``name`` names: its full path, else a unique tail of it."""
        path = program_path([p.path for p in self.programs], name)
        return next(p for p in self.programs if p.path == path)


def program_path(paths: list[str], name: str) -> str:
    """Which of the programs ``paths`` ``name`` names: the one with that full path, else
    the one path ending in ``/name``."""
    if name in paths:
        return name
    found = [p for p in paths if p.endswith("/" + name)]
    if len(found) == 1:
        return found[0]
    if found:
        raise AmlError(f"{name!r} names {len(found)} programs ({', '.join(found[:4])}); give more of the path",
                       code="ambiguous_program")  # fmt: skip
    known = sorted(paths)
    raise AmlError(f"the specification has no program {name!r} (it has {known[:8] or 'none'}"
                   f"{' …' if len(known) > 8 else ''})", code="unknown_program")  # fmt: skip


def _interfaces(element: etree._Element, suffix: str) -> list[etree._Element]:
    """The element's own ExternalInterfaces whose class path ends in ``suffix``."""
    return [i for i in element.iterchildren("{*}ExternalInterface") if (i.get("RefBaseClassPath") or "").endswith(suffix)]


def attribute_value(element: etree._Element, name: str) -> str | None:
    """The ``Value`` of the element's own attribute ``name`` (not of its children's)."""
    for attribute in element.iterchildren("{*}Attribute"):
        if attribute.get("Name") == name:
            value = next(attribute.iterchildren("{*}Value"), None)
            return (value.text or "").strip() if value is not None else ""
    return None


def opcua_object(element: etree._Element) -> str:
    return attribute_value(element, "OpcUaObject") or element.get("ID") or ""


def components(root: etree._Element) -> list[etree._Element]:
    """The instance hierarchies' InternalElements, in document order."""
    return [e for hierarchy in root if local(hierarchy) == "InstanceHierarchy"
            for e in structure(hierarchy) if local(e) == "InternalElement"]  # fmt: skip


def name_path(element: etree._Element) -> str:
    """``Plant/Line1/Conveyor``: the names from the instance hierarchy down to ``element``."""
    names = [element.get("Name") or ""]
    names += [a.get("Name") or "" for a in element.iterancestors() if local(a) != "CAEXFile"]
    return "/".join(reversed(names))


def _classes(root: etree._Element) -> dict[str, etree._Element]:
    """SystemUnitClasses by path (``Lib/Class/SubClass``) and by ID."""
    found: dict[str, etree._Element] = {}
    for library in (c for c in root if local(c) == "SystemUnitClassLib"):
        for cls in structure(library):
            if local(cls) == "SystemUnitClass":
                found[name_path(cls)] = cls
                if cls.get("ID"):
                    found[cls.get("ID") or ""] = cls
    return found


class _ClassPrograms:
    """Program interfaces of each class and its base classes by name (the nearer class
    wins), worked out once per class; an inheritance cycle is refused."""

    def __init__(self, classes: dict[str, etree._Element]) -> None:
        self.classes = classes
        self.known: dict[str, dict[str, etree._Element]] = {}

    def of(self, reference: str, seen: tuple[str, ...] = ()) -> dict[str, etree._Element]:
        cls = self.classes.get(reference)
        if cls is None:
            return {}
        key = name_path(cls)
        if key in self.known:
            return self.known[key]
        if key in seen or len(seen) > MAX_CLASS_DEPTH:
            raise AmlError(f"class {key!r} inherits from itself (through {' → '.join(repr(c) for c in seen[-4:])})")
        inherited = self.of(cls.get("RefBaseClassPath") or "", (*seen, key))
        self.known[key] = {**inherited, **{i.get("Name") or "": i for i in _interfaces(cls, PROGRAM_CLASS_SUFFIX)}}
        return self.known[key]


def programs_of(root: etree._Element, parts: list[etree._Element]) -> tuple[Program, ...]:
    """Every component's programs (``parts``: the components), its own and its class's, in
    document order."""
    classes = _ClassPrograms(_classes(root))
    found: dict[str, Program] = {}
    for component in parts:
        interfaces = classes.of(component.get("RefBaseSystemUnitPath") or "")
        own_interfaces = _interfaces(component, PROGRAM_CLASS_SUFFIX)
        own = {i.get("Name") or "": i for i in own_interfaces}
        if len(own) != len(own_interfaces):
            raise AmlError(f"component {name_path(component)!r} declares two programs of the same name")
        base = name_path(component)
        for name, interface in {**interfaces, **own}.items():
            path = f"{base}/{name}"
            if len(path) > MAX_PATH:
                raise AmlError(f"program path {path[:60]!r}… is longer than {MAX_PATH} characters")
            if path in found:
                raise AmlError(f"two programs have the path {path!r}; give their components different names")
            if len(found) >= MAX_PROGRAMS:
                raise AmlError(f"the specification gives its components more than {MAX_PROGRAMS} programs")
            params = tuple(_parameter(a, f"program {path!r}") for a in interface if local(a) == "Attribute")
            if len(params) > MAX_PARAMETERS:
                raise AmlError(f"program {path!r} has more than {MAX_PARAMETERS} parameters")
            declared = "" if name in own else name_path(interface.getparent())
            if len(f"{declared}/{name}") > MAX_PATH:
                raise AmlError(f"class path {declared[:60]!r}… is longer than {MAX_PATH} characters")
            found[path] = Program(interface.get("ID") or "" if not declared else "", name, path, component.get("ID"),
                                  params, declared)  # fmt: skip
    return tuple(found.values())


def signals_of(parts: list[etree._Element]) -> tuple[Signal, ...]:
    """Signal interfaces of the components ``parts``, in document order."""
    found = []
    for component in parts:
        for interface in _interfaces(component, SIGNAL_CLASS_SUFFIX):
            where = f"signal {interface.get('ID') or name_path(component) + '/' + (interface.get('Name') or '')!r}"
            if not interface.get("ID"):
                raise AmlError(f"{where} has no ID; feeds and alerts address a signal by its ID")
            kind = attribute_value(interface, "Kind") or "sensor"
            value = next((a for a in interface.iterchildren("{*}Attribute") if a.get("Name") == "Value"), None)
            rule = _parameter(value, where) if value is not None else Parameter("Value", "number")
            if rule.type not in ("number", "integer"):
                raise AmlError(f"{where} must carry numbers, not {rule.type}s")
            found.append(Signal(interface.get("ID") or "", interface.get("Name") or "", component.get("ID") or "",
                                opcua_object(component), kind, rule.unit, rule.minimum, rule.maximum))  # fmt: skip
    return tuple(found)


def ancestors_of(root: etree._Element) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, str]]]:
    """For the elements of the instance hierarchies (what scopes, feeds and documents
    address; a library's IDs may repeat an instance's): ID → IDs of the element and its
    ancestors, outermost first; and ID → (name, name path)."""
    paths: dict[str, tuple[str, ...]] = {}
    names: dict[str, tuple[str, str]] = {}

    def walk(element: etree._Element, above: tuple[str, ...], path: str) -> None:
        identifier = element.get("ID")
        here = (*above, identifier) if identifier else above
        where = f"{path}/{element.get('Name') or ''}" if path else element.get("Name") or ""
        if identifier and identifier not in paths:
            paths[identifier] = here
            names[identifier] = (element.get("Name") or "", where)
        if local(element) not in FREE_CONTENT:
            for child in element.iterchildren(etree.Element):
                walk(child, here, where)

    for hierarchy in (c for c in root if local(c) == "InstanceHierarchy"):
        walk(hierarchy, (), "")
    return paths, names


def model_of(root: etree._Element, version: str) -> Model:
    parts = components(root)
    identities = tuple(Identity(e.get("ID") or "", opcua_object(e), attribute_value(e, "Model") or "", serial)
                       for e in parts if (serial := attribute_value(e, "SerialNumber")))  # fmt: skip
    objects = {e.get("ID") or "": opcua_object(e) for e in parts}
    owners: dict[str, str] = {}
    for component, obj in objects.items():  # the agent acts on the object: one component each
        if owners.setdefault(obj, component) != component:
            raise AmlError(f"components {owners[obj]!r} and {component!r} both name OPC UA object {obj!r}; each "
                           "component needs its own")  # fmt: skip
    programs, signals = programs_of(root, parts), signals_of(parts)
    nodes: dict[str, str] = {}
    for what, node in [*((p.path, f"{objects.get(p.component_id or '', '')}/{p.name}") for p in programs),
                       *((s.id, s.opcua_node) for s in signals)]:  # fmt: skip
        if nodes.setdefault(node, what) != what:
            raise AmlError(f"{nodes[node]!r} and {what!r} would both be OPC UA node {node!r}; rename one")
    paths, names = ancestors_of(root)
    return Model(version, MappingProxyType(paths), programs, signals, identities, MappingProxyType(objects),
                 MappingProxyType(names))  # fmt: skip


def validate(root: etree._Element) -> Model:
    """The document's model, if it follows its CAEX schema and twinledger's rules."""
    check_depth(root)
    version = check_schema(root)
    check_ids(root)
    return model_of(root, version)
