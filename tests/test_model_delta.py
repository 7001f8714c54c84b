"""The contract's side of a specification version: the model delta a client sends is
checked entry by entry — shape, references, where it sits — and authorized where each
entry was and goes, inside the edit's own place; an edit names the version it was made
from; payloads too large for one transaction are staged by members, each for itself.
Every test here sends what a dishonest client could send, past the service layer."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from twin_helpers import PROGRAMS, World, key_for

from twinledger.core.encoding import encode
from twinledger.core.types import Receipt

OWNER = key_for("plant-owner")
MAINTAINER = key_for("maintenance-co")
SCOPED = {"org:maintenance-co": {"maintainer": ["capper-1"]}}
VELOCITY = PROGRAMS["SetVelocity"]
CAPPER = "BottlingPlant/BottlingLine1/Capper"
FILLER = "BottlingPlant/BottlingLine1/Filler"


def _version(world: World, twin: str, delta: Any, staged: bytes | None = None) -> dict[str, Any]:
    digest = hashlib.sha256(repr(delta).encode()).digest()
    version = {"hash": digest, "manifest": digest, "reference": "store:forged", "size": 100,
               "base": world.get(f"twin/{twin}")["aml_hash"]}  # fmt: skip
    return {**version, "staged": staged} if staged is not None else {**version, "model": encode(delta)}


def _insert(world: World, signer: Any, twin: str, delta: Any, parent: str = "capper-1") -> Receipt:
    return world.call(signer, "twins", "insert_aml", twin=twin, parent=parent, element="x", **_version(world, twin, delta))


def _element(parent: str, path: str, name: str, obj: str = "") -> dict[str, str]:
    return {"parent": parent, "name": name, "path": path, "object": obj, "model": "", "serial": ""}


def _program(world: World, twin: str, path: str, **changes: Any) -> dict[str, Any]:
    entry = dict(world.get(f"twin/{twin}/program/{path}"))
    return {**entry, **changes}


def test_a_scoped_edit_cannot_carry_changes_outside_its_place() -> None:
    """Inserting under the capper (the maintainer's scope): a delta that loosens the
    conveyor's rule, drops or re-parents the conveyor, moves the capper elsewhere, or
    deletes anything, is refused."""
    world = World()
    twin = world.create_twin(roles=SCOPED)
    loose = _program(world, twin, VELOCITY)
    loose["parameters"] = [{**loose["parameters"][0], "maximum": "99.0"}]
    capper = world.get(f"twin/{twin}/element/capper-1")
    for delta, code in (({f"program/{VELOCITY}": loose}, "invalid_model"),
                        ({"element/conveyor-1": None}, "invalid_model"),
                        ({"element/intruder": _element("conveyor-1", "BottlingPlant/BottlingLine1/Conveyor/I", "I")},
                         "invalid_model"),
                        ({"element/capper-1": {**capper, "parent": "", "path": "Capper"}}, "invalid_model"),
                        ({"element/capper-1": {**capper, "parent": "filler-1", "path": f"{FILLER}/Capper"}},
                         "invalid_model")):  # fmt: skip
        receipt = world.fails(code, MAINTAINER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                              **_version(world, twin, delta))  # fmt: skip
        assert "outside 'capper-1'" in receipt.message or "deletes nothing" in receipt.message
    world.fails("unsafe_parameter", OWNER, "twins", "call_program", twin=twin, program=VELOCITY, params={"velocity": "3"})
    assert _insert(world, MAINTAINER, twin, {"element/tool-1": _element("capper-1", f"{CAPPER}/Tool", "Tool")}).status == "ok"


def test_programs_and_signals_sit_on_their_component() -> None:
    """A program or signal names its component; the contract holds it to the component's
    place, path and OPC UA object, so a scoped user cannot hang one on another's part."""
    world = World()
    twin = world.create_twin(roles=SCOPED)
    tool = {"element/tool-1": _element("capper-1", f"{CAPPER}/Tool", "Tool"),
            "element/tool-go": _element("tool-1", f"{CAPPER}/Tool/Go", "Go")}  # fmt: skip
    on_conveyor = {"id": "tool-go", "name": "Go", "path": "BottlingPlant/BottlingLine1/Conveyor/Go",
                   "component": "conveyor-1", "declared_in": "", "parameters": []}  # fmt: skip
    hung = {**tool, f"program/{on_conveyor['path']}": on_conveyor}
    refused = world.fails("invalid_model", MAINTAINER, "twins", "insert_aml", twin=twin, parent="capper-1",
                          element="x", **_version(world, twin, hung))  # fmt: skip
    assert "is not on component 'conveyor-1'" in refused.message
    wrong_path = {**on_conveyor, "component": "tool-1", "path": "Conveyor/Go"}
    refused = world.fails("invalid_model", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                          **_version(world, twin, {**tool, "program/Conveyor/Go": wrong_path}))  # fmt: skip
    assert "is not 'Go' of component 'tool-1'" in refused.message
    signal = {"id": "tool-go", "name": "Go", "component": "tool-1", "object": "conveyor-1", "kind": "sensor", "unit": None,
              "minimum": None, "maximum": None}  # fmt: skip
    refused = world.fails("invalid_model", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                          **_version(world, twin, {**tool, "signal/tool-go": signal}))  # fmt: skip
    assert "not its component's" in refused.message


def test_one_component_per_opcua_object_on_chain() -> None:
    world = World()
    twin = world.create_twin(roles=SCOPED)
    capper = world.get(f"twin/{twin}/element/capper-1")
    refused = world.fails("invalid_model", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                          **_version(world, twin, {"element/capper-1": {**capper, "object": "conveyor-1"}}))  # fmt: skip
    assert "OPC UA object 'conveyor-1' is component 'conveyor-1'" in refused.message


def test_an_edit_of_a_version_that_is_no_longer_current_is_refused() -> None:
    """Two edits made from the same version: the second would lose the first from the
    document, so it is refused and made again from the new version."""
    world = World()
    twin = world.create_twin()
    first = _version(world, twin, {"element/tool-1": _element("capper-1", f"{CAPPER}/Tool", "Tool")})
    second = _version(world, twin, {"element/tool-2": _element("capper-1", f"{CAPPER}/Tool2", "Tool2")})
    world.ok(OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="tool-1", **first)
    refused = world.fails("stale_version", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="tool-2",
                          **second)  # fmt: skip
    assert "version 2 now" in refused.message


def test_a_removal_only_removes_there() -> None:
    world = World()
    twin = world.create_twin(roles=SCOPED)
    added = _version(world, twin, {"element/tool-1": _element("capper-1", f"{CAPPER}/Tool", "Tool")})
    refused = world.fails("invalid_model", MAINTAINER, "twins", "remove_aml", twin=twin, element="capper-1", links=[],
                          **{**added, "model": encode({"element/filler-1": None})})  # fmt: skip
    assert "outside 'capper-1'" in refused.message


def test_a_class_s_rules_are_the_unscoped_roles_to_change() -> None:
    from test_aml_hostile import VALVES

    world = World()
    twin = world.create_twin(aml=VALVES, device_id="v-1", roles={"org:maintenance-co": {"maintainer": ["lineA"]}})
    loosened = [{"name": "angle", "type": "number", "minimum": "0.0", "maximum": "720.0", "allowed": [], "unit": None}]
    world.fails("invalid_model", MAINTAINER, "twins", "insert_aml", twin=twin, parent="lineA", element="x",
                **_version(world, twin, {"class-program/Lib/Valve/Open": loosened}))  # fmt: skip
    world.fails("forbidden", MAINTAINER, "twins", "insert_aml", twin=twin, parent="Lib/Valve", element="x",
                **_version(world, twin, {"class-program/Lib/Valve/Open": loosened}))  # fmt: skip
    assert _insert(world, OWNER, twin, {"class-program/Lib/Valve/Open": loosened}, parent="Lib/Valve").status == "ok"
    world.ok(OWNER, "twins", "call_program", twin=twin, program="Plant/LineB/ValveB/Open", params={"angle": "700"})


@pytest.mark.parametrize(("delta", "complaint"), [
    ({"element/orphan": _element("no-such-parent", "X/orphan", "orphan")}, "parent 'no-such-parent'"),
    ({"element/stray": _element("capper-1", "Elsewhere/stray", "stray")}, "not under its parent's"),
    ({"signal/s-1": {"id": "s-1", "name": "S", "component": "ghost", "object": "o", "kind": "sensor", "unit": None,
                     "minimum": None, "maximum": None}}, "component 'ghost'"),
    ({"element/never-there": None}, "does not hold"),
    ({f"program/{CAPPER}/Go": {"id": "", "name": "Go", "path": f"{CAPPER}/Go", "component": "capper-1",
                               "declared_in": "Lib/None", "parameters": None}}, "class 'Lib/None'"),
    ({"program/X/Go": {"id": "", "name": "Go", "path": "X/Go", "component": "capper-1", "declared_in": "",
                       "parameters": None}}, "parameters, or the class"),
    ({"program/X/Go": {"id": "", "name": "Go", "path": "X/Go", "component": "capper-1", "declared_in": "", "parameters": [
        {"name": "v", "type": "number", "minimum": "5", "maximum": "1", "allowed": [], "unit": None}]}}, "minimum above"),
    ({"program/X/Go": {"id": "", "name": "Go", "path": "X/Go", "component": "capper-1", "declared_in": "", "parameters": [
        {"name": "v", "type": "number", "minimum": "1_0", "maximum": None, "allowed": [], "unit": None}]}}, "decimal number"),
    ({"program/X/Go": {"id": "", "name": "Go", "path": "X/Other", "component": "capper-1", "declared_in": "",
                       "parameters": []}}, "its own path"),
    ({"feed/capper-1": {"reference": "x"}}, "not an element, program"),
    ({"class/program/Lib/X": []}, "not an element, program"),
    ({"element/a\x01b": _element("", "a", "a")}, "printable"),
    ([1, 2], "must map entries"),
])  # fmt: skip
def test_a_malformed_delta_is_refused_in_one_line_and_changes_nothing(delta: Any, complaint: str) -> None:
    world = World()
    twin = world.create_twin()
    receipt = world.fails("invalid_model", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                          **_version(world, twin, delta))  # fmt: skip
    assert complaint in receipt.message and "\n" not in receipt.message


def test_a_delta_that_is_not_canonical_encoding_is_refused() -> None:
    world = World()
    twin = world.create_twin()
    version = {**_version(world, twin, {}), "model": b"\xc1"}
    world.fails("invalid_model", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x", **version)


def test_staged_parts_are_their_member_sender_s_and_must_hash_to_their_digest() -> None:
    world = World()
    twin = world.create_twin(roles=SCOPED)
    delta = encode({"element/tool-1": _element("capper-1", f"{CAPPER}/Tool", "Tool")})
    digest = hashlib.sha256(delta).digest()
    world.fails("not_a_member", key_for("stranger"), "twins", "stage", digest=digest, part=0, parts=1, data=delta)
    world.ok(OWNER, "twins", "stage", digest=digest, part=0, parts=2, data=delta[:5])
    world.fails("staging", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                **_version(world, twin, None, staged=digest))  # fmt: skip  (one part of two)
    world.ok(OWNER, "twins", "stage", digest=digest, part=1, parts=2, data=delta[5:])
    world.fails("staging", MAINTAINER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                **_version(world, twin, None, staged=digest))  # fmt: skip  (another key's payload)
    wrong = hashlib.sha256(b"other").digest()
    world.ok(OWNER, "twins", "stage", digest=wrong, part=0, parts=1, data=delta)
    world.fails("staging", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                **_version(world, twin, None, staged=wrong))  # fmt: skip
    world.ok(OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
             **_version(world, twin, None, staged=digest))  # fmt: skip
    assert world.get(f"twin/{twin}/element/tool-1")["parent"] == "capper-1"
    assert not [k for k in world.contract_state() if k.startswith(f"staging/{OWNER.public.hex()}/{digest.hex()}")]
    world.ok(OWNER, "twins", "unstage", digest=wrong)
    for number in range(4):
        world.ok(OWNER, "twins", "stage", digest=bytes([number]) * 32, part=0, parts=1, data=b"x")
    world.fails("staging", OWNER, "twins", "stage", digest=b"\x09" * 32, part=0, parts=1, data=b"x")
    world.ok(OWNER, "twins", "unstage", digest=b"\x00" * 32)
    world.ok(OWNER, "twins", "stage", digest=b"\x09" * 32, part=0, parts=1, data=b"x")


def test_a_parent_removed_under_its_children_leaves_them_in_no_scope() -> None:
    """A delta drops the filler but keeps its sensors (a client's mistake): the sensors
    lose the filler's scope — a maintainer scoped to it no longer reaches them — and
    nothing fails."""
    world = World()
    twin = world.create_twin(roles={"org:maintenance-co": {"maintainer": ["filler-1"]}})
    receipt = world.call(OWNER, "twins", "remove_aml", twin=twin, element="filler-1", links=[],
                         **_version(world, twin, {"element/filler-1": None}))  # fmt: skip
    assert receipt.status == "ok", receipt
    world.fails("forbidden", MAINTAINER, "twins", "add_feed", twin=twin, component="level-sensor-1", reference="f")
    world.ok(OWNER, "twins", "add_feed", twin=twin, component="level-sensor-1", reference="f")
