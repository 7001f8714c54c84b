"""A twin's *model* on chain: what the contracts enforce from its specification, kept
per element, program and signal, so a check reads a few entries instead of parsing the
specification, and a version changes only the entries its edit touched.

    twin/<id>/element/<ID>           {parent, name, path, object, model, serial}: the nearest ancestor with
                                     an ID ("" at the top), the element's name and name path, and for a
                                     component its OPC UA object and identity ("" otherwise)
    twin/<id>/object/<object>        the component that is that OPC UA object (the contract keeps it)
    twin/<id>/program/<path>         a program: interface ID, name, component, and its parameters with their
                                     rules, or the class it has them from
    twin/<id>/class-program/<class>/<name>  the parameters of a program a class declares, once for its instances
    twin/<id>/signal/<ID>            a signal: component, OPC UA object, kind, unit, expected range

Numbers of rules are kept as ``repr`` strings: the ledger's encoding has no floats, and
``repr`` of a float gives it back exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from twinledger.abc import StateReader
from twinledger.aml import AmlError, Identity, Model, Parameter, Program, Signal
from twinledger.contracts.twinstate import MAX_DEPTH, class_program_key, element_key, program_key, signal_key

MODEL_KINDS = ("element", "program", "class-program", "signal")
"""The kinds of entry a model has: ``twin/<id>/<kind>/<name>``."""

def _number(value: float | None) -> str | None:
    return None if value is None else repr(value)


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _parameters(program: Program) -> list[dict[str, Any]]:
    return [{"name": p.name, "type": p.type, "minimum": _number(p.minimum), "maximum": _number(p.maximum),
             "allowed": list(p.allowed), "unit": p.unit} for p in program.parameters]  # fmt: skip


def program_entry(program: Program) -> dict[str, Any]:
    """A component's program; one it has from a class names the class instead of copying
    its parameters, so a change to the class rewrites one entry, not one per instance."""
    return {"id": program.id, "name": program.name, "path": program.path, "component": program.component_id or "",
            "declared_in": program.declared_in, "parameters": None if program.declared_in else _parameters(program)}  # fmt: skip


def program_of(entry: dict[str, Any], parameters: list[dict[str, Any]]) -> Program:
    rules = tuple(Parameter(p["name"], p["type"], _float(p["minimum"]), _float(p["maximum"]), tuple(p["allowed"]),
                            p["unit"]) for p in parameters)  # fmt: skip
    return Program(entry["id"], entry["name"], entry["path"], entry["component"] or None, rules, entry["declared_in"])


def signal_entry(signal: Signal) -> dict[str, Any]:
    return {"id": signal.id, "name": signal.name, "component": signal.component_id, "object": signal.opcua_object,
            "kind": signal.kind, "unit": signal.unit, "minimum": _number(signal.minimum),
            "maximum": _number(signal.maximum)}  # fmt: skip


def signal_of(entry: dict[str, Any]) -> Signal:
    return Signal(entry["id"], entry["name"], entry["component"], entry["object"], entry["kind"], entry["unit"],
                  _float(entry["minimum"]), _float(entry["maximum"]))  # fmt: skip


def model_entries(model: Model | None) -> dict[str, Any]:
    """Every state entry of a model, by key suffix."""
    if model is None:
        return {}
    identity = {i.element_id: i for i in model.identities}
    entries: dict[str, Any] = {
        f"element/{i}": {"parent": path[-2] if len(path) > 1 else "", "name": model.names[i][0],
                         "path": model.names[i][1], "object": model.objects.get(i, ""),
                         "model": identity[i].model if i in identity else "",
                         "serial": identity[i].serial if i in identity else ""}
        for i, path in model.ancestors.items()
    }  # fmt: skip
    entries |= {f"program/{p.path}": program_entry(p) for p in model.programs}
    entries |= {f"class-program/{p.declared_in}/{p.name}": _parameters(p) for p in model.programs if p.declared_in}
    entries |= {f"signal/{s.id}": signal_entry(s) for s in model.signals}
    return entries


def element_path(state: StateReader, twin_id: str, element: str) -> tuple[str, ...] | None:
    """IDs of ``element`` and its ancestors that carry one, outermost first; None if the
    model has no element with that ID. A parent a delta removed under its children ends
    the path there: the children lose the scopes above, they gain none."""
    path: list[str] = []
    current = element
    while current and len(path) <= MAX_DEPTH:
        entry = state.get(element_key(twin_id, current))
        if entry is None:
            break
        path.append(current)
        current = entry["parent"]
    return tuple(reversed(path)) if path else None


def require_element(state: StateReader, twin_id: str, element: str) -> None:
    """Pass if the twin's specification has an element with ID ``element``."""
    if state.get(element_key(twin_id, element)) is None:
        raise AmlError(f"the specification has no element with ID {element!r}", code="unknown_element")


def find_program(state: StateReader, twin_id: str, path: str) -> Program:
    """The program at ``path`` (its full path: the service layer resolves shorter names,
    so the chain keeps no index of names that every new instance would rewrite)."""
    entry = state.get(program_key(twin_id, path))
    if entry is None:
        raise AmlError(f"the specification has no program at {path!r} (transactions name a program by its full "
                       "path, e.g. Plant/Line1/Conveyor/SetVelocity)", code="unknown_program")  # fmt: skip
    declared = entry["declared_in"]
    parameters = state.get(class_program_key(twin_id, declared, entry["name"])) if declared else entry["parameters"]
    if parameters is None:
        raise AmlError(f"program {path!r} has its rules from class {declared!r}, whose rules are gone",
                       code="unknown_program")  # fmt: skip
    return program_of(entry, parameters)


def find_signal(state: StateReader, twin_id: str, signal: str) -> Signal | None:
    entry = state.get(signal_key(twin_id, signal))
    return signal_of(entry) if entry is not None else None


def model_of_entries(entries: Mapping[str, Any]) -> Model:
    """The model the chain holds (``GET /v1/twins/{ref}/model``), as an ``aml.Model``: what
    the device agent acts on — programs and their rules, OPC UA objects, signals and
    their ranges, identities — so a document that strays from the chain cannot steer it."""
    elements = {k[len("element/"):]: v for k, v in entries.items() if k.startswith("element/")}

    def ancestors(element: str) -> tuple[str, ...]:
        path: list[str] = []
        while element in elements and len(path) <= MAX_DEPTH:
            path.append(element)
            element = elements[element]["parent"]
        return tuple(reversed(path))

    programs = tuple(program_of(v, entries.get(f"class-program/{v['declared_in']}/{v['name']}") or []
                                if v["declared_in"] else v["parameters"])
                     for k, v in sorted(entries.items()) if k.startswith("program/"))  # fmt: skip
    signals = tuple(signal_of(v) for k, v in sorted(entries.items()) if k.startswith("signal/"))
    identities = tuple(Identity(i, e["object"], e["model"], e["serial"]) for i, e in sorted(elements.items()) if e["serial"])
    return Model("", MappingProxyType({i: ancestors(i) for i in elements}), programs, signals, identities,
                 MappingProxyType({i: e["object"] for i, e in elements.items() if e["object"]}),
                 MappingProxyType({i: (e["name"], e["path"]) for i, e in elements.items()}))  # fmt: skip
