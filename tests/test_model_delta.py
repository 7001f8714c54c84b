"""The contract's side of a specification version: the model delta a client sends is
checked entry by entry and authorized where each entry was and goes, and payloads too
large for one transaction are staged by their sender alone. Every test here sends what a
dishonest client could send, past the service layer."""

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


def _version(delta: Any, staged: bytes | None = None) -> dict[str, Any]:
    digest = hashlib.sha256(repr(delta).encode()).digest()
    version = {"hash": digest, "manifest": digest, "reference": "store:forged", "size": 100}
    return {**version, "staged": staged} if staged is not None else {**version, "model": encode(delta)}


def _insert(world: World, signer: Any, twin: str, delta: Any, parent: str = "capper-1") -> Receipt:
    return world.call(signer, "twins", "insert_aml", twin=twin, parent=parent, element="x", **_version(delta))


def _unsafe_velocity(world: World, twin: str) -> dict[str, Any]:
    entry = dict(world.get(f"twin/{twin}/program/{VELOCITY}"))
    return {**entry, "parameters": [{**entry["parameters"][0], "maximum": "99.0"}]}


def test_a_scoped_edit_cannot_carry_changes_outside_its_scope() -> None:
    """Inserting under the capper (allowed) while the delta loosens the conveyor's safety
    rule, drops the conveyor, or adds a component to it: each refused."""
    world = World()
    twin = world.create_twin(roles=SCOPED)
    for delta in ({f"program/{VELOCITY}": _unsafe_velocity(world, twin)},
                  {"element/conveyor-1": None},
                  {"element/intruder": {"parent": "conveyor-1"}}):  # fmt: skip
        receipt = world.fails("forbidden", MAINTAINER, "twins", "insert_aml", twin=twin, parent="capper-1",
                              element="x", **_version(delta))  # fmt: skip
        assert "aml.insert" in receipt.message
    world.fails("unsafe_parameter", OWNER, "twins", "call_program", twin=twin, program=VELOCITY, params={"velocity": "3"})
    assert _insert(world, MAINTAINER, twin, {"element/tool-1": {"parent": "capper-1"}}).status == "ok"


def test_a_class_s_rules_are_the_unscoped_roles_to_change() -> None:
    from test_aml_hostile import VALVES

    world = World()
    twin = world.create_twin(aml=VALVES, device_id="v-1", roles={"org:maintenance-co": {"maintainer": ["lineA"]}})
    loosened = [{"name": "angle", "type": "number", "minimum": "0.0", "maximum": "720.0", "allowed": [], "unit": None}]
    world.fails("forbidden", MAINTAINER, "twins", "insert_aml", twin=twin, parent="lineA", element="x",
                **_version({"class-program/Lib/Valve/Open": loosened}))  # fmt: skip
    assert _insert(world, OWNER, twin, {"class-program/Lib/Valve/Open": loosened}, parent="Lib/Valve").status == "ok"
    world.ok(OWNER, "twins", "call_program", twin=twin, program="Plant/LineB/ValveB/Open", params={"angle": "700"})


@pytest.mark.parametrize(("delta", "complaint"), [
    ({"element/orphan": {"parent": "no-such-parent"}}, "parent 'no-such-parent'"),
    ({"signal/s-1": {"id": "s-1", "name": "S", "component": "ghost", "object": "o", "kind": "sensor", "unit": None,
                     "minimum": None, "maximum": None}}, "component 'ghost'"),
    ({"element/never-there": None}, "does not hold"),
    ({"program/BottlingPlant/BottlingLine1/Capper/Go": {"id": "", "name": "Go", "path": "BottlingPlant/BottlingLine1/Capper/Go",
      "component": "capper-1", "declared_in": "Lib/None", "parameters": None}}, "class 'Lib/None'"),
    ({"program/X/Go": {"id": "", "name": "Go", "path": "X/Go", "component": "capper-1", "declared_in": "",
                       "parameters": None}}, "parameters, or the class"),
    ({"program/X/Go": {"id": "", "name": "Go", "path": "X/Go", "component": "capper-1", "declared_in": "", "parameters": [
        {"name": "v", "type": "number", "minimum": "5", "maximum": "1", "allowed": [], "unit": None}]}}, "minimum above"),
    ({"program/X/Go": {"id": "", "name": "Go", "path": "X/Other", "component": "capper-1", "declared_in": "",
                       "parameters": []}}, "its own path"),
    ({"feed/capper-1": {"reference": "x"}}, "not an element, program"),
    ({"element/a\x01b": {"parent": ""}}, "printable"),
    ([1, 2], "must map entries"),
])  # fmt: skip
def test_a_malformed_delta_is_refused_in_one_line_and_changes_nothing(delta: Any, complaint: str) -> None:
    world = World()
    twin = world.create_twin()
    receipt = world.fails("invalid_model", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                          **_version(delta))  # fmt: skip
    assert complaint in receipt.message and "\n" not in receipt.message


def test_a_delta_that_is_not_canonical_encoding_is_refused() -> None:
    world = World()
    twin = world.create_twin()
    version = {**_version({}), "model": b"\xc1"}
    world.fails("invalid_model", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x", **version)


def test_staged_parts_are_their_sender_s_and_must_hash_to_their_digest() -> None:
    world = World()
    twin = world.create_twin(roles=SCOPED)
    delta = encode({"element/tool-1": {"parent": "capper-1"}})
    digest = hashlib.sha256(delta).digest()
    world.ok(OWNER, "twins", "stage", digest=digest, part=0, parts=2, data=delta[:5])
    world.fails("staging", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                **_version(None, staged=digest))  # fmt: skip  (one part of two)
    world.ok(OWNER, "twins", "stage", digest=digest, part=1, parts=2, data=delta[5:])
    world.fails("staging", MAINTAINER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                **_version(None, staged=digest))  # fmt: skip  (another key's payload)
    wrong = hashlib.sha256(b"other").digest()
    world.ok(OWNER, "twins", "stage", digest=wrong, part=0, parts=1, data=delta)
    world.fails("staging", OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x",
                **_version(None, staged=wrong))  # fmt: skip
    world.ok(OWNER, "twins", "insert_aml", twin=twin, parent="capper-1", element="x", **_version(None, staged=digest))
    assert world.get(f"twin/{twin}/element/tool-1") == {"parent": "capper-1"}
    assert not [k for k in world.contract_state() if k.startswith(f"staging/{OWNER.public.hex()}/{digest.hex()}")]
    for number in range(3):
        world.ok(OWNER, "twins", "stage", digest=bytes([number]) * 32, part=0, parts=1, data=b"x")
    world.fails("staging", OWNER, "twins", "stage", digest=b"\x09" * 32, part=0, parts=1, data=b"x")


def test_a_parent_removed_under_its_children_leaves_them_in_no_scope() -> None:
    """A dishonest delta drops the filler but keeps its sensors: the sensors lose the
    filler's scope (a maintainer scoped to it no longer reaches them), nothing fails."""
    world = World()
    twin = world.create_twin(roles={"org:maintenance-co": {"maintainer": ["filler-1"]}})
    assert _insert(world, OWNER, twin, {"element/filler-1": None}, parent="line-1").status == "ok"
    world.fails("forbidden", MAINTAINER, "twins", "add_feed", twin=twin, component="level-sensor-1", reference="f")
    world.ok(OWNER, "twins", "add_feed", twin=twin, component="level-sensor-1", reference="f")
