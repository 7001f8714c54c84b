"""A model delta: how a version of a twin's specification changes the model on chain.

The specification lives off chain; whoever changes it sends the entries its change sets
or deletes (``model_entries(new)`` against ``model_entries(old)``, encoded). The
contract checks each entry's shape and references and authorizes it where it was and
where it goes; that the entries are what the document gives is for every reader of the
document to check (``twin aml verify``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from twinledger.abc import StateReader
from twinledger.aml import Model
from twinledger.aml.document import MAX_ID
from twinledger.aml.semantics import MAX_ALLOWED, MAX_PARAMETERS
from twinledger.contracts.authorization import authorize
from twinledger.contracts.runtime import Call
from twinledger.contracts.twinmodel import MODEL_KINDS, element_path, model_entries
from twinledger.contracts.twinstate import class_program_key, element_key, object_key
from twinledger.core.encoding import decode, encode
from twinledger.errors import ContractError, DecodeError

PARAMETER_TYPES = ("number", "integer", "boolean", "string")
MAX_TEXT = 512
MAX_DELTA_BYTES = 8 * 1024 * 1024
"""A 10 MB plant model's delta is 2.4 MB."""
NUMBER = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


class ModelError(ContractError):
    code = "invalid_model"


def _text(value: Any, what: str, limit: int = MAX_TEXT, empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > limit or not value.isprintable() or (not value and not empty):
        raise ModelError(f"{what} must be printable text of at most {limit} characters")
    return value


def _bound(value: Any, what: str) -> float | None:
    if value is None:
        return None
    text = _text(value, what, 64, empty=False)
    if not NUMBER.match(text):
        raise ModelError(f"{what} must be a decimal number, not {text!r}")
    number = float(text)
    if not math.isfinite(number):
        raise ModelError(f"{what} must be finite")
    return number


def _check_parameters(value: Any, where: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_PARAMETERS:
        raise ModelError(f"{where}: parameters must be a list of at most {MAX_PARAMETERS}")
    for parameter in value:
        if not isinstance(parameter, dict) or set(parameter) != {"name", "type", "minimum", "maximum", "allowed", "unit"}:
            raise ModelError(f"{where}: a parameter must have name, type, minimum, maximum, allowed and unit")
        _text(parameter["name"], f"{where}: a parameter's name", MAX_ID)
        if parameter["type"] not in PARAMETER_TYPES:
            raise ModelError(f"{where}: a parameter's type must be one of {list(PARAMETER_TYPES)}")
        low, high = _bound(parameter["minimum"], f"{where}: a minimum"), _bound(parameter["maximum"], f"{where}: a maximum")
        if low is not None and high is not None and low > high:
            raise ModelError(f"{where}: parameter {parameter['name']!r} has minimum above maximum")
        allowed = parameter["allowed"]
        if not isinstance(allowed, list) or len(allowed) > MAX_ALLOWED:
            raise ModelError(f"{where}: allowed values must be a list of at most {MAX_ALLOWED}")
        for item in allowed:
            _text(item, f"{where}: an allowed value", MAX_ID)
        if parameter["unit"] is not None:
            _text(parameter["unit"], f"{where}: a unit", MAX_ID)


def _check_entry(kind: str, name: str, value: Any) -> None:
    """The shape of one entry a delta sets."""
    where = f"{kind} {name[:80]!r}"
    if kind == "element":
        fields = {"parent", "name", "path", "object", "model", "serial"}
        if not isinstance(value, dict) or set(value) != fields:
            raise ModelError(f"{where} must be {sorted(fields)}")
        _text(value["parent"], f"{where}: parent", MAX_ID)
        for field in ("name", "object", "model", "serial"):
            _text(value[field], f"{where}: {field}", MAX_TEXT)
        _text(value["path"], f"{where}: path", 4 * MAX_TEXT)
    elif kind == "program":
        fields = {"id", "name", "path", "component", "declared_in", "parameters"}
        if not isinstance(value, dict) or set(value) != fields or value["path"] != name:
            raise ModelError(f"{where} must be {sorted(fields)} with its own path")
        for field, limit in (("id", MAX_ID), ("name", MAX_ID), ("component", MAX_ID), ("declared_in", MAX_TEXT)):
            _text(value[field], f"{where}: {field}", limit)
        if not name.endswith("/" + value["name"]) or not value["component"]:
            raise ModelError(f"{where} must end in its name and belong to a component")
        if bool(value["declared_in"]) != (value["parameters"] is None):
            raise ModelError(f"{where} has its parameters, or the class it has them from, not both")
        if value["parameters"] is not None:
            _check_parameters(value["parameters"], where)
    elif kind == "class-program":
        _check_parameters(value, where)
    else:
        fields = {"id", "name", "component", "object", "kind", "unit", "minimum", "maximum"}
        if not isinstance(value, dict) or set(value) != fields or value["id"] != name:
            raise ModelError(f"{where} must be {sorted(fields)} with its own ID")
        for field in ("name", "component", "object", "kind"):
            _text(value[field], f"{where}: {field}", MAX_TEXT, empty=field != "component")
        if value["unit"] is not None:
            _text(value["unit"], f"{where}: unit", MAX_ID)
        low, high = _bound(value["minimum"], f"{where}: minimum"), _bound(value["maximum"], f"{where}: maximum")
        if low is not None and high is not None and low > high:
            raise ModelError(f"{where} expects a minimum above its maximum")


def parse_delta(data: bytes) -> dict[str, Any]:
    """A model delta: entry (``kind/name``) → what it becomes (None: deleted)."""
    try:
        delta = decode(data, max_size=MAX_DELTA_BYTES)
    except DecodeError as exc:
        raise ModelError(f"the model delta is not canonical: {exc.message}") from None
    if not isinstance(delta, dict):
        raise ModelError("the model delta must map entries to values")
    for suffix, value in delta.items():
        kind, _, name = suffix.partition("/") if isinstance(suffix, str) else ("", "", "")
        if kind not in MODEL_KINDS or not name:
            raise ModelError(f"the model delta names {str(suffix)[:80]!r}, not an element, program, class-program or signal")
        _text(name, f"{kind} name", MAX_TEXT if kind != "element" and kind != "signal" else MAX_ID, empty=False)
        if value is not None:
            _check_entry(kind, name, value)
    return delta


def encode_delta(before: Mapping[str, Any], new: Model) -> bytes:
    """What a client sends for a version: the entries ``new`` sets or deletes against the
    entries the chain holds (``before``: ``GET /v1/twins/{ref}/model``), so a version made
    from a document that strayed from the chain still brings the chain to its model."""
    after = model_entries(new)
    delta = {key: value for key, value in after.items() if before.get(key) != value}
    delta |= {key: None for key in before.keys() - after.keys()}
    return encode(delta)


def _where(state: StateReader, twin_id: str, suffix: str, value: Any) -> tuple[str, ...]:
    """Where an entry (``value``, not None) sits, for scopes: its element's IDs from the
    top (a program's and a signal's: their interface's, else their component's); () for
    a class's programs (no scope reaches a library)."""
    if suffix.startswith("element/"):
        return element_path(state, twin_id, suffix[len("element/"):]) or ()
    if suffix.startswith(("program/", "signal/")):  # its interface (on the component: checked), else the component
        return element_path(state, twin_id, value["id"]) or element_path(state, twin_id, value["component"]) or ()
    return ()


def _within(place: tuple[str, ...], anchor: tuple[str, ...]) -> bool:
    return place[:len(anchor)] == anchor


def apply_delta(call: Call, twin: dict[str, Any], delta: dict[str, Any], method: str | None,
                anchor: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """Write a delta into the twin's model after checking it: every entry it sets refers
    to entries that exist afterwards and sits where it says, every entry it deletes
    exists, components keep one OPC UA object each, and, unless ``method`` is None (the
    owner creating the twin), the sender may ``method`` where each entry was and where
    it goes — inside ``anchor`` (the insert's parent, the removed element) if that is
    an element: an insert only adds and changes there, a removal only removes there. A
    class's rules new to the model are placed by the programs that name them. The IDs
    of elements it deleted."""
    twin_id = twin["id"]
    before = {suffix: call.state.get(f"twin/{twin_id}/{suffix}") for suffix in delta}
    missing = next((s for s, value in delta.items() if value is None and before[s] is None), None)
    if missing is not None:
        raise ModelError(f"the model delta deletes {missing[:80]!r}, which the model does not hold")
    if method == "aml.insert" and any(value is None for value in delta.values()):
        raise ModelError("an insert's model delta deletes nothing")
    places = {s: _where(call.state, twin_id, s, before[s]) for s in delta if before[s] is not None}
    for suffix in sorted(delta):
        call.state.set(f"twin/{twin_id}/{suffix}", delta[suffix])
    _index_objects(call, twin_id, delta, before)
    for suffix, value in sorted(delta.items()):
        if value is not None:
            _check_references(call.state, twin_id, suffix, value)
        if method is None or (suffix.startswith("class-program/") and before[suffix] is None):
            continue
        was = [places[suffix]] if suffix in places else []
        now = [_where(call.state, twin_id, suffix, value)] if value is not None else []
        for place in dict.fromkeys([*was, *now]):
            if anchor and not _within(place, anchor):
                raise ModelError(f"{suffix[:80]!r} is outside {anchor[-1]!r}, where this {method} is")
            authorize(call, twin, method, path=place)
    return [s[len("element/"):] for s, value in delta.items() if s.startswith("element/") and value is None]


def _index_objects(call: Call, twin_id: str, delta: dict[str, Any], before: dict[str, Any]) -> None:
    """Keep ``object/<object>`` → component, refusing a second component on one object:
    the device agent acts on the object."""
    elements = sorted(s for s in delta if s.startswith("element/"))
    for suffix in elements:
        old = before[suffix]
        if old is not None and old["object"] and call.state.get(object_key(twin_id, old["object"])) == suffix[8:]:
            call.state.set(object_key(twin_id, old["object"]), None)
    for suffix in elements:
        new = delta[suffix]
        if new is None or not new["object"]:
            continue
        holder = call.state.get(object_key(twin_id, new["object"]))
        if holder is not None and holder != suffix[8:]:
            raise ModelError(f"OPC UA object {new['object']!r} is component {holder!r}'s; {suffix[8:]!r} needs its own")
        call.state.set(object_key(twin_id, new["object"]), suffix[8:])


def _check_references(state: StateReader, twin_id: str, suffix: str, value: Any) -> None:
    def entry(key: str, what: str) -> Any:
        found = state.get(key)
        if found is None:
            raise ModelError(f"{suffix[:80]!r} refers to {what}, which the model does not hold")
        return found

    name = suffix.partition("/")[2]
    if suffix.startswith("element/"):
        parent = entry(element_key(twin_id, value["parent"]), f"parent {value['parent']!r}") if value["parent"] else None
        top = f"{parent['path']}/" if parent is not None else ""
        if not value["path"].startswith(top) or not value["path"].endswith(value["name"]):
            raise ModelError(f"{suffix[:80]!r} says its path is {value['path'][:80]!r}, not under its parent's")
    elif suffix.startswith("program/"):
        component = entry(element_key(twin_id, value["component"]), f"component {value['component']!r}")
        if name != f"{component['path']}/{value['name']}":
            raise ModelError(f"{suffix[:80]!r} is not {value['name']!r} of component {value['component']!r}")
        if value["id"] and entry(element_key(twin_id, value["id"]), f"interface {value['id']!r}")["parent"] != value["component"]:
            raise ModelError(f"{suffix[:80]!r}: interface {value['id']!r} is not on component {value['component']!r}")
        if value["declared_in"]:
            entry(class_program_key(twin_id, value["declared_in"], value["name"]), f"class {value['declared_in']!r}")
    elif suffix.startswith("signal/"):
        component = entry(element_key(twin_id, value["component"]), f"component {value['component']!r}")
        if entry(element_key(twin_id, name), f"interface {name!r}")["parent"] != value["component"]:
            raise ModelError(f"{suffix[:80]!r} is not an interface of component {value['component']!r}")
        if value["object"] != component["object"]:
            raise ModelError(f"{suffix[:80]!r} names OPC UA object {value['object']!r}, not its component's")
