"""AutomationML (CAEX 2.15 and 3.0) specifications: parsed safely, checked against the
official schemas and twinledger's rules, edited without breaking them, compared, packed
as ``.amlx``, and read for what a twin's contract enforces (``model``).

``document`` parses and checks, ``semantics`` extracts components, programs, signals and
identities, ``edits`` inserts, removes and diffs, ``package`` reads and writes ``.amlx``.
"""

from __future__ import annotations

from functools import lru_cache

from lxml import etree

from twinledger.aml import edits
from twinledger.aml.document import MAX_DOCUMENT_BYTES, AmlError, canonical, parse_xml
from twinledger.aml.edits import LINK_POLICIES, Edit, Replacement, diff, insert, remove, replacement
from twinledger.aml.package import Package, is_package, read_package, write_package
from twinledger.aml.semantics import Identity, Model, Parameter, Program, Signal, program_path, validate


def parse_specification(data: bytes) -> etree._Element:
    """A CAEX document that follows its schema and twinledger's rules."""
    root = parse_xml(data, "the specification")
    validate(root)
    return root


def stored_form(data: bytes) -> bytes:
    """The canonical bytes a valid specification is stored as."""
    return stored_with_model(data)[0]


def stored_with_model(data: bytes) -> tuple[bytes, Model]:
    """The stored form of a valid specification and its model, worked out once."""
    root = parse_xml(data, "the specification")
    found = validate(root)
    return canonical(root), found


@lru_cache(maxsize=8)
def model(specification: bytes) -> Model:
    """What the contracts read from a specification, extracted once per content."""
    return validate(parse_xml(specification, "the specification"))


def program(specification: bytes, name: str) -> Program:
    return model(specification).program(name)


def signals(specification: bytes) -> tuple[Signal, ...]:
    return model(specification).signals


def identities(specification: bytes) -> tuple[Identity, ...]:
    """Components that state a serial number, in document order."""
    return model(specification).identities


def object_of(specification: bytes, component_id: str) -> str:
    """The OPC UA object of the component ``component_id``."""
    objects = model(specification).objects
    if component_id not in objects:
        raise AmlError(f"no component with ID {component_id!r}", code="unknown_element")
    return objects[component_id]


def component_path(specification: bytes, ref: str) -> tuple[str, ...]:
    """IDs of the element ``ref`` (an ID or a name path) names and of its ancestors that
    carry one, outermost first: what authorization scopes are matched against."""
    known = model(specification).ancestors
    if ref in known:
        return known[ref]
    return edits.component_path(parse_xml(specification, "the specification"), ref)


__all__ = [
    "LINK_POLICIES", "MAX_DOCUMENT_BYTES", "AmlError", "Edit", "Identity", "Model", "Package", "Parameter", "Program",
    "Replacement", "Signal", "canonical", "component_path", "diff", "identities", "insert", "is_package", "model",
    "object_of", "parse_specification", "program", "program_path", "read_package", "remove", "replacement", "signals",
    "stored_form", "stored_with_model", "write_package",
]  # fmt: skip
