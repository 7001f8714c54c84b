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
    assert {p.path: p.name for p in aml.model(stored).programs} == {
        "BottlingPlant/BottlingLine1/Conveyor/SetVelocity": "SetVelocity",
        "BottlingPlant/BottlingLine1/Conveyor/SetDirection": "SetDirection",
        "BottlingPlant/BottlingLine1/Filler/SetFillVolume": "SetFillVolume",
    }


def test_sensor_replacement_of_section_5_2():
    """Remove the broken level sensor, insert its replacement after the filler's flow sensor."""
    stored = aml.canonical(aml.parse_specification(PLANT))
    without = aml.remove(stored, "level-sensor-1").specification
    replaced = aml.insert(without, NEW_SENSOR, parent="filler-1", after="flow-sensor-1").specification
    root = aml.parse_specification(replaced)
    assert root.find(".//InternalElement[@ID='level-sensor-1']") is None
    filler = root.find(".//InternalElement[@ID='filler-1']")
    assert [e.get("ID") for e in filler.findall("InternalElement")] == ["flow-sensor-1", "level-sensor-2"]
    change = aml.diff(stored, replaced)
    assert "-" in change and "LS200-7730" in change and "+" in change and "LS300-0007" in change


def caex(body: bytes) -> bytes:
    return b'<CAEXFile FileName="t.aml" SchemaVersion="2.15">' + body + b"</CAEXFile>"


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        (b"<CAEXFile><InstanceHierarchy>", "not well-formed"),
        (b"<Plant/>", "not <CAEXFile>"),
        (b'<CAEXFile xmlns="urn:other" SchemaVersion="2.15"/>', "neither CAEX 2.15"),
        (b'<!DOCTYPE x [<!ENTITY e "boom">]><CAEXFile/>', "DOCTYPE"),
        (b"<CAEXFile/>", "CAEX 2.15 schema: line 1: Element 'CAEXFile': The attribute 'FileName' is required"),
        (caex(b'<InstanceHierarchy Name="h"><InternalElement Name="a" ID="x"/><InternalElement Name="b" ID="x"/>'
              b"</InstanceHierarchy>"), "used twice"),
        (caex(b'<InstanceHierarchy Name="h"><InternalElement Name="a"/></InstanceHierarchy>'), "has no ID"),
        (caex(b'<InstanceHierarchy Name="h"><InternalElement Name="a" ID="a"><Attribute Name="v">'
              b'<InternalElement Name="b" ID="b"/></Attribute></InternalElement></InstanceHierarchy>'),
         "line 1: Element 'InternalElement': This element is not expected"),
        (b"<CAEXFile>" + b"<x>" * 70 + b"</x>" * 70 + b"</CAEXFile>", "deeper"),
        (b"<CAEXFile>" + b" " * (aml.MAX_DOCUMENT_BYTES + 1) + b"</CAEXFile>", "limit"),
    ],
)
def test_bad_specifications_are_refused_with_a_reason(document, complaint):
    with pytest.raises(AmlError, match=complaint):
        aml.parse_specification(document)


def test_bad_edits_are_refused_and_change_nothing():
    stored = aml.canonical(aml.parse_specification(PLANT))
    with pytest.raises(AmlError, match="no element with ID or path 'nope' to remove"):
        aml.remove(stored, "nope")
    with pytest.raises(AmlError, match="no element with ID or path 'nope' to insert under"):
        aml.insert(stored, NEW_SENSOR, parent="nope")
    with pytest.raises(AmlError, match="is not a child of"):
        aml.insert(stored, NEW_SENSOR, parent="filler-1", after="capper-1")
    with pytest.raises(AmlError, match="used twice"):
        aml.insert(stored, NEW_SENSOR.replace(b"level-sensor-2", b"capper-1"), parent="filler-1")
    with pytest.raises(AmlError, match="not well-formed"):
        aml.insert(stored, b"<InternalElement", parent="filler-1")
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


LINE = caex(b"""<InstanceHierarchy Name="Plant">
  <InternalElement Name="Line" ID="line">
    <InternalElement Name="Conveyor1" ID="c1" RefBaseSystemUnitPath="Lib/Conveyor"/>
    <InternalElement Name="Conveyor2" ID="c2" RefBaseSystemUnitPath="Lib/FastConveyor">
      <ExternalInterface Name="Stop" ID="c2-stop" RefBaseClassPath="TwinledgerInterfaceClassLib/Program"/>
    </InternalElement>
    <InternalElement Name="Conveyor3" ID="c3" RefBaseSystemUnitPath="Lib/Conveyor">
      <ExternalInterface Name="SetVelocity" ID="c3-v" RefBaseClassPath="TwinledgerInterfaceClassLib/Program">
        <Attribute Name="velocity" AttributeDataType="xs:double"><Constraint Name="SafeRange"><OrdinalScaledType>
          <RequiredMaxValue>0.5</RequiredMaxValue></OrdinalScaledType></Constraint></Attribute>
      </ExternalInterface>
    </InternalElement>
  </InternalElement>
</InstanceHierarchy>
<InterfaceClassLib Name="TwinledgerInterfaceClassLib"><InterfaceClass Name="Program"/></InterfaceClassLib>
<SystemUnitClassLib Name="Lib">
  <SystemUnitClass Name="Conveyor">
    <ExternalInterface Name="SetVelocity" RefBaseClassPath="TwinledgerInterfaceClassLib/Program">
      <Attribute Name="velocity" AttributeDataType="xs:double"><Constraint Name="SafeRange"><OrdinalScaledType>
        <RequiredMaxValue>2</RequiredMaxValue><RequiredMinValue>0</RequiredMinValue></OrdinalScaledType></Constraint>
      </Attribute>
    </ExternalInterface>
  </SystemUnitClass>
  <SystemUnitClass Name="FastConveyor" RefBaseClassPath="Lib/Conveyor"/>
</SystemUnitClassLib>""")


def test_programs_belong_to_components_and_come_with_their_class():
    """Three conveyors with a SetVelocity each: one from its class, one from its class's
    base class, one its own with a stricter rule; the library's interface is no program."""
    model = aml.model(aml.stored_form(LINE))
    assert sorted((p.path, p.component_id, p.id) for p in model.programs) == [
        ("Plant/Line/Conveyor1/SetVelocity", "c1", ""),
        ("Plant/Line/Conveyor2/SetVelocity", "c2", ""),
        ("Plant/Line/Conveyor2/Stop", "c2", "c2-stop"),
        ("Plant/Line/Conveyor3/SetVelocity", "c3", "c3-v"),
    ]
    assert model.program("Conveyor1/SetVelocity").validate_call({"velocity": "2"}) == {"velocity": "2"}
    with pytest.raises(AmlError, match=r"above its safe maximum 0\.5"):
        model.program("Conveyor3/SetVelocity").validate_call({"velocity": "1"})
    assert model.program("Stop").target == "c2-stop" and model.program("Conveyor1/SetVelocity").target == "c1"
    with pytest.raises(AmlError, match="names 3 programs") as ambiguous:
        model.program("SetVelocity")
    assert ambiguous.value.code == "ambiguous_program"
    with pytest.raises(AmlError, match="no program 'Line/SetVelocity'"):
        model.program("Line/SetVelocity")


def test_ids_are_needed_only_where_something_addresses_them():
    """A class without an ID is fine; a component or a signal without one is not."""
    assert aml.model(aml.stored_form(LINE)).ancestors["c3-v"] == ("line", "c3", "c3-v")
    signal = (b'<InternalElement Name="S" ID="s"><ExternalInterface Name="Level" '
              b'RefBaseClassPath="TwinledgerInterfaceClassLib/Signal"/></InternalElement>')  # fmt: skip
    with pytest.raises(AmlError, match="signal 'Plant/Line/S/Level' has no ID"):
        aml.insert(aml.stored_form(LINE), signal, "line")


def test_a_caex_3_fragment_without_namespace_joins_the_document():
    stored = aml.stored_form(Path(__file__).parent.joinpath("data", "aml", "files", "ie__eobots.aml").read_bytes())
    parent = aml.model(stored).ancestors
    component = next(i for i, path in parent.items() if len(path) == 1)
    edit = aml.insert(stored, b'<InternalElement Name="Extra" ID="extra-1"/>', component)
    assert b'<InternalElement ID="extra-1" Name="Extra"></InternalElement>' in edit.specification
    assert aml.component_path(edit.specification, "extra-1") == (component, "extra-1")
