"""AutomationML specifications: validation, edits, diffs, programs and their safety rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinledger import aml
from twinledger.aml import AmlError

PLANT = (Path(__file__).parent.parent / "examples" / "bottling-plant.aml").read_bytes()
NEW_SENSOR = b"""<InternalElement Name="FillLevelSensor1" ID="level-sensor-2">
  <Attribute Name="Model" AttributeDataType="xs:string"><Value>LS-300</Value></Attribute>
  <Attribute Name="SerialNumber" AttributeDataType="xs:string"><Value>LS300-0007</Value></Attribute>
</InternalElement>"""


def test_the_example_plant_is_valid_and_canonical():
    root = aml.parse_specification(PLANT)
    stored = aml.canonical(root)
    assert aml.canonical(aml.parse_specification(stored)) == stored
    reformatted = PLANT.replace(b"  ", b" ").replace(b'SchemaVersion="2.15"', b"SchemaVersion='2.15'")
    assert aml.canonical(aml.parse_specification(reformatted)) == stored, "same specification, same bytes"
    assert set(aml.programs_of(root)) == {"SetVelocity", "SetDirection", "SetFillVolume"}


def test_sensor_replacement_of_section_5_2():
    """Remove the broken level sensor, insert its replacement after the filler's flow sensor."""
    stored = aml.canonical(aml.parse_specification(PLANT))
    without = aml.remove(stored, "level-sensor-1").specification
    replaced = aml.insert(without, NEW_SENSOR, parent_id="filler-1", after_id="flow-sensor-1").specification
    root = aml.parse_specification(replaced)
    assert root.find(".//InternalElement[@ID='level-sensor-1']") is None
    filler = root.find(".//InternalElement[@ID='filler-1']")
    assert [e.get("ID") for e in filler.findall("InternalElement")] == ["flow-sensor-1", "level-sensor-2"]
    change = aml.diff(stored, replaced)
    assert "-" in change and "LS200-7730" in change and "+" in change and "LS300-0007" in change


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        (b"<CAEXFile><InstanceHierarchy>", "not well-formed"),
        (b"<Plant/>", "not <CAEXFile>"),
        (b'<!DOCTYPE x [<!ENTITY e "boom">]><CAEXFile/>', "DOCTYPE"),
        (
            b'<CAEXFile><InstanceHierarchy Name="h"><InternalElement Name="a" ID="x"/><InternalElement Name="b" ID="x"/>'
            b"</InstanceHierarchy></CAEXFile>",
            "used twice",
        ),
        (b'<CAEXFile><InstanceHierarchy Name="h"><InternalElement Name="a"/></InstanceHierarchy></CAEXFile>', "has no ID"),
        (
            b'<CAEXFile><InstanceHierarchy Name="h"><InternalElement Name="a" ID="a"><Attribute Name="v">'
            b'<InternalElement Name="b" ID="b"/></Attribute></InternalElement></InstanceHierarchy></CAEXFile>',
            "cannot hold",
        ),
        (b"<CAEXFile>" + b"<x>" * 70 + b"</x>" * 70 + b"</CAEXFile>", "deeper"),
        (b"<CAEXFile>" + b" " * (aml.MAX_AML_BYTES + 1) + b"</CAEXFile>", "limit"),
    ],
)
def test_bad_specifications_are_refused_with_a_reason(document, complaint):
    with pytest.raises(AmlError, match=complaint):
        aml.parse_specification(document)


def test_bad_edits_are_refused_and_change_nothing():
    stored = aml.canonical(aml.parse_specification(PLANT))
    with pytest.raises(AmlError, match="no element with ID 'nope' to remove"):
        aml.remove(stored, "nope")
    with pytest.raises(AmlError, match="no element with ID 'nope' to insert under"):
        aml.insert(stored, NEW_SENSOR, parent_id="nope")
    with pytest.raises(AmlError, match="is not a child of"):
        aml.insert(stored, NEW_SENSOR, parent_id="filler-1", after_id="capper-1")
    with pytest.raises(AmlError, match="used twice"):
        aml.insert(stored, NEW_SENSOR.replace(b"level-sensor-2", b"capper-1"), parent_id="filler-1")
    with pytest.raises(AmlError, match="not well-formed"):
        aml.insert(stored, b"<InternalElement", parent_id="filler-1")
    assert aml.canonical(aml.parse_specification(stored)) == stored


def test_program_calls_are_checked_against_the_safety_rules():
    stored = aml.canonical(aml.parse_specification(PLANT))
    velocity = aml.program(stored, "SetVelocity")
    assert velocity.component_id == "conveyor-1"
    assert velocity.validate_call({"velocity": "2.5"}) == {"velocity": "2.5"}
    assert velocity.validate_call({"velocity": 0}) == {"velocity": "0"}
    for bad, complaint in [({"velocity": "2.6"}, "above its safe maximum 2.5"), ({"velocity": "-1"}, "below its safe minimum"),
                           ({"velocity": "fast"}, "must be a number"), ({"velocity": "nan"}, "finite"),
                           ({"velocity": True}, "must be a number"), ({}, "needs parameter 'velocity'"),
                           ({"velocity": "1", "turbo": "1"}, "no parameter 'turbo'")]:  # fmt: skip
        with pytest.raises(AmlError, match=complaint) as info:
            velocity.validate_call(bad)
        assert info.value.code == "unsafe_parameter"
    direction = aml.program(stored, "SetDirection")
    assert direction.validate_call({"direction": "stop"}) == {"direction": "stop"}
    with pytest.raises(AmlError, match="not one of"):
        direction.validate_call({"direction": "backward"})
    fill = aml.program(stored, "SetFillVolume")
    assert fill.validate_call({"volume": "500", "valve_check": True}) == {"volume": 500, "valve_check": True}
    with pytest.raises(AmlError, match="must be an integer"):
        fill.validate_call({"volume": "500.5", "valve_check": True})
    with pytest.raises(AmlError, match="true or false"):
        fill.validate_call({"volume": 500, "valve_check": "yes"})
    with pytest.raises(AmlError, match="no program 'Launch'") as info:
        aml.program(stored, "Launch")
    assert info.value.code == "unknown_program"


def test_inconsistent_safety_rules_are_refused():
    broken = PLANT.replace(b"<RequiredMaxValue>2.5</RequiredMaxValue>", b"<RequiredMaxValue>-1</RequiredMaxValue>")
    with pytest.raises(AmlError, match="minimum above maximum"):
        aml.parse_specification(broken)
