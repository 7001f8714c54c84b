"""Hostile AutomationML and hostile edits: each test is an attack an independent review
of the AML rework found, run against the contract or the package, and what stops it."""

from __future__ import annotations

import io
import time
import zipfile

import pytest
from test_aml import LINE, caex
from twin_helpers import PLANT, PROGRAMS, World, key_for

from twinledger import aml
from twinledger.aml import AmlError
from twinledger.contracts.twinstate import call_key

OWNER = key_for("plant-owner")
MAINTAINER = key_for("maintenance-co")
SCOPED = {"org:maintenance-co": {"maintainer": ["capper-1"]}}


def _spec(world: World, twin: str) -> bytes:
    return world.document(twin)


@pytest.mark.parametrize(("method", "args", "bad"), [
    ("remove_aml", {"element": "capper-1"}, {"element": "a\x01b"}),
    ("insert_aml", {"fragment": b'<InternalElement Name="x" ID="x"/>', "parent": "line-1"}, {"parent": "a\x01b"}),
    ("add_feed", {"component": "capper-1", "reference": "r"}, {"component": "a\x01b"}),
])  # fmt: skip
def test_an_unprintable_reference_fails_its_transaction_not_the_block(method: str, args: dict, bad: dict) -> None:
    """Sent past the client, straight to the contract."""
    world = World()
    twin = world.create_twin()
    sent = world._as_client(OWNER, method, {"twin": twin, **args}) if method != "add_feed" else {"twin": twin, **args}
    receipt = world.fails("bad_arguments", OWNER, "twins", method, **{**sent, **bad})
    assert "printable" in receipt.message


def test_a_scoped_insert_cannot_nest_the_twin_past_the_depth_limit() -> None:
    """A 64-level fragment under a component at depth 4 would store a version nobody can
    parse again; it is refused, and the twin goes on."""
    world = World()
    twin = world.create_twin(roles=SCOPED)
    deep = "".join(f'<InternalElement Name="n{i}" ID="deep-{i}">' for i in range(64)) + "</InternalElement>" * 64
    receipt = world.fails("invalid_aml", MAINTAINER, "twins", "insert_aml", twin=twin, fragment=deep.encode(),
                          parent="capper-1")  # fmt: skip
    assert "deeper than 64" in receipt.message
    world.ok(OWNER, "twins", "call_program", twin=twin, program=PROGRAMS["SetVelocity"], params={"velocity": "1"})


def test_a_component_cannot_borrow_another_component_s_opcua_object() -> None:
    """Otherwise a maintainer scoped to the capper could declare its own unlimited
    SetVelocity on the conveyor's OPC UA object and have the agent run it at 99 m/s."""
    world = World()
    twin = world.create_twin(roles=SCOPED)
    fragment = (b'<InternalElement Name="Tool" ID="tool-1"><Attribute Name="OpcUaObject" AttributeDataType="xs:string">'
                b'<Value>conveyor-1</Value></Attribute><ExternalInterface Name="SetVelocity" ID="tool-1-v" '
                b'RefBaseClassPath="TwinledgerInterfaceClassLib/Program"><Attribute Name="velocity" '
                b'AttributeDataType="xs:double"/></ExternalInterface></InternalElement>')  # fmt: skip
    receipt = world.fails("invalid_aml", MAINTAINER, "twins", "insert_aml", twin=twin, fragment=fragment,
                          parent="capper-1")  # fmt: skip
    assert "both name OPC UA object 'conveyor-1'" in receipt.message


def test_a_relative_namespace_is_refused_in_one_line() -> None:
    document = PLANT.replace(b'<CAEXFile ', b'<CAEXFile xmlns:r="relative/ns" ')
    with pytest.raises(AmlError, match="no canonical form"):
        aml.stored_form(document)
    world = World()
    receipt = world.fails("invalid_aml", OWNER, "twins", "create", name="n", device_id="n", aml=document)
    assert "\n" not in receipt.message


def test_an_integer_parameter_outside_64_bits_is_refused_by_the_contract() -> None:
    document = PLANT.replace(b'<Attribute Name="volume" AttributeDataType="xs:integer" Unit="ml">',
                             b'<Attribute Name="count" AttributeDataType="xs:integer"/>'
                             b'<Attribute Name="volume" AttributeDataType="xs:integer" Unit="ml">')  # fmt: skip
    world = World()
    twin = world.create_twin(aml=document)
    receipt = world.fails("unsafe_parameter", OWNER, "twins", "call_program", twin=twin, program=PROGRAMS["SetFillVolume"],
                          params={"count": "9" * 30, "volume": 300, "valve_check": True})  # fmt: skip
    assert "64-bit" in receipt.message


def test_a_program_s_full_path_names_it_even_when_another_path_ends_the_same() -> None:
    world = World()
    twin = world.create_twin(roles=SCOPED)
    full = "BottlingPlant/BottlingLine1/Conveyor/SetVelocity"
    shadow = (b'<InternalElement Name="BottlingPlant" ID="evil-1"><InternalElement Name="BottlingLine1" ID="evil-2">'
              b'<InternalElement Name="Conveyor" ID="evil-3"><ExternalInterface Name="SetVelocity" ID="evil-4" '
              b'RefBaseClassPath="TwinledgerInterfaceClassLib/Program"/></InternalElement></InternalElement>'
              b"</InternalElement>")  # fmt: skip
    world.ok(MAINTAINER, "twins", "insert_aml", twin=twin, fragment=shadow, parent="capper-1")
    world.ok(OWNER, "twins", "call_program", twin=twin, program=full, params={"velocity": "1"})
    assert world.get(call_key(twin, 1))["program"] == full
    assert aml.program(_spec(world, twin), full).component_id == "conveyor-1", "the agent finds the same one"


LINKED = caex(b"""<InstanceHierarchy Name="P"><InternalElement Name="Line" ID="urn:plant:line">
 <InternalElement Name="Conv" ID="urn:plant:conv"><ExternalInterface Name="Out"/></InternalElement>
 <InternalElement Name="Filler" ID="urn:plant:filler"><ExternalInterface Name="In" ID="filler-in"/></InternalElement>
 <InternalElement Name="Capper" ID="capper"/>
 <InternalLink Name="ConvToFiller" RefPartnerSideA="urn:plant:conv:Out" RefPartnerSideB="urn:plant:filler:In"/>
</InternalElement></InstanceHierarchy>""")


def test_links_removed_with_an_element_are_changes_where_they_are_and_only_real_partners_count() -> None:
    world = World()
    roles = {"org:maintenance-co": {"maintainer": ["capper", "urn:plant:filler"]}}
    twin = world.create_twin(aml=LINKED, device_id="l-1", roles=roles)
    # an ID that is a ':'-prefix of others points at nothing
    world.ok(MAINTAINER, "twins", "insert_aml", twin=twin, parent="capper",
             fragment=b'<InternalElement Name="X" ID="urn:plant"/>')  # fmt: skip
    receipt = world.ok(MAINTAINER, "twins", "remove_aml", twin=twin, element="urn:plant", links="remove")
    assert [e.data["links"] for e in receipt.events if e.type == "AmlRemoved"] == [[]]
    # the filler is the maintainer's, the line holding the link is not
    world.fails("linked_element", MAINTAINER, "twins", "remove_aml", twin=twin, element="urn:plant:filler")
    world.fails("forbidden", MAINTAINER, "twins", "remove_aml", twin=twin, element="urn:plant:filler", links="remove")
    assert b"ConvToFiller" in _spec(world, twin)


def test_removing_an_interface_that_a_caex_2_15_link_names_is_refused() -> None:
    stored = aml.stored_form(LINKED)
    with pytest.raises(AmlError, match="ConvToFiller") as refused:
        aml.remove(stored, "filler-in")
    assert refused.value.code == "linked_element"
    with pytest.raises(AmlError, match="ConvToFiller"):
        aml.remove(stored, "P/Line/Conv/Out")
    assert not aml.remove(stored, "filler-in", links="remove").specification.count(b"InternalLink")


def test_a_class_s_own_links_are_not_taken_for_links_to_an_instance_with_the_same_ids() -> None:
    document = caex(b"""<InstanceHierarchy Name="P"><InternalElement Name="Cell" ID="cell">
<InternalElement Name="A" ID="a"><ExternalInterface Name="Out"/></InternalElement>
<InternalElement Name="B" ID="b"><ExternalInterface Name="In"/></InternalElement></InternalElement></InstanceHierarchy>
<SystemUnitClassLib Name="Lib"><SystemUnitClass Name="CellType">
<InternalElement Name="A" ID="a"><ExternalInterface Name="Out"/></InternalElement>
<InternalElement Name="B" ID="b"><ExternalInterface Name="In"/></InternalElement>
<InternalLink Name="ClassLink" RefPartnerSideA="a:Out" RefPartnerSideB="b:In"/></SystemUnitClass></SystemUnitClassLib>""")
    edit = aml.remove(aml.stored_form(document), "a")
    assert edit.links == () and b"ClassLink" in edit.specification


def test_an_id_that_is_another_element_s_path_names_neither() -> None:
    """Tools write IDs with '/' (an MTP manifest has ``ID="Services/"``), so an ID may spell
    another element's name path: such a reference is refused, not resolved to either."""
    with pytest.raises(AmlError, match="an ID that is another element's name path"):
        aml.stored_form(PLANT.replace(b'ID="capper-1"', b'ID="BottlingPlant/BottlingLine1/Filler"'))
    world = World()
    twin = world.create_twin(roles=SCOPED)
    world.fails("invalid_aml", MAINTAINER, "twins", "insert_aml", twin=twin, parent="capper-1",
                fragment=b'<InternalElement Name="Decoy" ID="BottlingPlant/BottlingLine1/Filler"/>')  # fmt: skip
    library = LINE.replace(b'<SystemUnitClass Name="FastConveyor"', b'<SystemUnitClass Name="FastConveyor" ID="Plant/Line"')
    with pytest.raises(AmlError, match="both an element's ID and another element's path") as refused:
        aml.remove(aml.stored_form(library), "Plant/Line")
    assert refused.value.code == "ambiguous_element", "a library's IDs are not checked: references still are"


def test_elements_inside_a_value_are_data_not_components() -> None:
    hidden = (b'<Attribute Name="Note" AttributeDataType="xs:string"><Value><InternalElement Name="Ghost" ID="ghost">'
              b'<ExternalInterface Name="Open" ID="ghost-open" RefBaseClassPath="X/Program"/></InternalElement>'
              b'<x ID="conveyor-1"/></Value></Attribute>')  # fmt: skip
    model = aml.model(aml.stored_form(PLANT.replace(b'<Attribute Name="Torque"', hidden + b'<Attribute Name="Torque"')))
    assert "ghost" not in model.ancestors and not [p for p in model.programs if "Ghost" in p.path]
    assert model.ancestors["conveyor-1"] == ("line-1", "conveyor-1")


def test_class_inheritance_cycles_are_refused_and_class_programs_are_worked_out_once() -> None:
    cycle = LINE.replace(b'<SystemUnitClass Name="Conveyor">',
                         b'<SystemUnitClass Name="Conveyor" RefBaseClassPath="Lib/FastConveyor">')  # fmt: skip
    with pytest.raises(AmlError, match="inherits from itself"):
        aml.stored_form(cycle)
    programs = "".join(f'<ExternalInterface Name="p{i}" RefBaseClassPath="I/Program"/>' for i in range(100))
    instances = "".join(f'<InternalElement Name="c{i}" ID="c{i}" RefBaseSystemUnitPath="L/A"/>' for i in range(150))
    many = caex(f'<InstanceHierarchy Name="P">{instances}</InstanceHierarchy><SystemUnitClassLib Name="L">'
                f'<SystemUnitClass Name="A">{programs}</SystemUnitClass></SystemUnitClassLib>'.encode())  # fmt: skip
    start = time.perf_counter()
    assert len(aml.model(aml.stored_form(many)).programs) == 15_000
    assert time.perf_counter() - start < 5, "15,000 programs from one class cost little more than reading them"
    more = b"".join(b'<InternalElement Name="d%d" ID="d%d" RefBaseSystemUnitPath="L/A"/>' % (i, i) for i in range(60))
    too_many = many.replace(b"</InstanceHierarchy>", more + b"</InstanceHierarchy>")
    with pytest.raises(AmlError, match="more than 20000 programs"):
        aml.stored_form(too_many)


def test_every_constraint_on_a_parameter_holds() -> None:
    document = PLANT.replace(b"<RequiredMaxValue>2.5</RequiredMaxValue><RequiredMinValue>0</RequiredMinValue>"
                             b"</OrdinalScaledType>\n            </Constraint>",
                             b"<RequiredMaxValue>2.5</RequiredMaxValue><RequiredMinValue>0</RequiredMinValue>"
                             b"</OrdinalScaledType>\n            </Constraint><Constraint Name=\"Mechanical\">"
                             b"<OrdinalScaledType><RequiredMaxValue>40</RequiredMaxValue></OrdinalScaledType>"
                             b"</Constraint>")  # fmt: skip
    assert document != PLANT
    with pytest.raises(AmlError, match=r"above its safe maximum 2\.5"):
        aml.program(aml.stored_form(document), "SetVelocity").validate_call({"velocity": "30"})


def test_the_cached_model_cannot_be_changed_by_a_reader() -> None:
    model = aml.model(aml.stored_form(PLANT))
    with pytest.raises(TypeError):
        model.ancestors["capper-1"] = ("conveyor-1",)  # type: ignore[index]


def test_a_scoped_agent_can_reject_a_call_whose_component_was_removed() -> None:
    agent = key_for("agent-c1")
    world = World()
    twin = world.create_twin(aml=LINE, device_id="line-9", roles={f"key:{agent.public.hex()}": {"device-agent": ["c1"]}})
    world.ok(OWNER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor1/SetVelocity", params={"velocity": "1"})
    world.ok(OWNER, "twins", "remove_aml", twin=twin, element="c1")
    world.ok(agent, "twins", "report_call", twin=twin, call=1, status="rejected", result="component removed")
    world.fails("forbidden", key_for("maker"), "twins", "report_call", twin=twin, call=1, status="rejected")


def test_error_lines_quoted_from_a_file_stay_one_line() -> None:
    with pytest.raises(AmlError) as refused:
        aml.stored_form(PLANT.replace(b'SchemaVersion="2.15"', b'SchemaVersion="2.15&#10;FAKE: all good"'))
    assert "\n" not in str(refused.value) and "schema" in str(refused.value)


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_broken_and_hostile_packages_are_refused_in_one_line() -> None:
    good = _zip({"plant.aml": PLANT, "files/manual.txt": b"manual " * 100})
    corrupt = bytearray(good)
    info = zipfile.ZipFile(io.BytesIO(good)).getinfo("files/manual.txt")
    start = info.header_offset + 30 + len(info.filename)  # the part's compressed bytes
    corrupt[start:start + 8] = b"\xff" * 8
    for data, complaint in [
        (bytes(corrupt), "part 'files/manual.txt' cannot be read"),
        (_zip({"plant.aml": PLANT, "Files/A.txt": b"1", "files/a.txt": b"2"}), "twice"),
        (_zip({"plant.aml": PLANT, "files/../../etc/passwd": b"x"}), "plain segments"),
    ]:  # fmt: skip
        with pytest.raises(AmlError, match=complaint) as refused:
            aml.read_package(data)
        assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", ["/_rels/.rels", "/[Content_Types].xml", "/../x.txt", "/files//x", "relative.txt",
                                  "/files/x.rels"])  # fmt: skip
def test_an_export_never_writes_a_package_part_of_its_own_or_outside_the_package(name: str) -> None:
    with pytest.raises(AmlError) as refused:
        aml.write_package(aml.stored_form(PLANT), (aml.package.Part(name, "text/plain", b"x"),))
    assert refused.value.code == "invalid_package"


def test_feeds_and_documents_name_components_by_id_only() -> None:
    """One component, one feed key: a name path would have given it a second feed that
    the component's removal leaves attached."""
    world = World()
    twin = world.create_twin()
    world.fails("unknown_element", OWNER, "twins", "add_feed", twin=twin,
                component="BottlingPlant/BottlingLine1/Filler", reference="feed:by-path")  # fmt: skip


VALVES = caex(b"""<InstanceHierarchy Name="Plant">
<InternalElement Name="LineA" ID="lineA"><InternalElement Name="ValveA" ID="valveA" RefBaseSystemUnitPath="Lib/Valve">
 <ExternalInterface Name="Level" ID="p1-level" RefBaseClassPath="TwinledgerInterfaceClassLib/Signal"/></InternalElement>
</InternalElement>
<InternalElement Name="LineB" ID="lineB"><InternalElement Name="ValveB" ID="valveB" RefBaseSystemUnitPath="Lib/Valve"/>
</InternalElement></InstanceHierarchy>
<InterfaceClassLib Name="TwinledgerInterfaceClassLib"><InterfaceClass Name="Program"/><InterfaceClass Name="Signal"/>
</InterfaceClassLib>
<SystemUnitClassLib Name="Lib" ID="lib-1">
 <SystemUnitClass Name="Valve" ID="cls-valve">
  <ExternalInterface Name="Open" ID="cls-valve-open" RefBaseClassPath="TwinledgerInterfaceClassLib/Program">
   <Attribute Name="angle" AttributeDataType="xs:double"><Constraint Name="Safe"><OrdinalScaledType>
    <RequiredMaxValue>90</RequiredMaxValue><RequiredMinValue>0</RequiredMinValue></OrdinalScaledType></Constraint>
   </Attribute></ExternalInterface>
  <InternalElement Name="Sensor" ID="p1-level"/>
 </SystemUnitClass>
</SystemUnitClassLib>""")


def test_no_scope_reaches_into_a_class_library_even_through_a_borrowed_id() -> None:
    """A maintainer scoped to line A inserts an element with the library's ID: the class
    (which valve B outside the scope is made of) stays out of reach."""
    world = World()
    twin = world.create_twin(aml=VALVES, device_id="v-1", roles={"org:maintenance-co": {"maintainer": ["lineA"]}})
    world.ok(MAINTAINER, "twins", "insert_aml", twin=twin, parent="lineA", fragment=b'<InternalElement Name="D" ID="lib-1"/>')
    world.fails("forbidden", MAINTAINER, "twins", "remove_aml", twin=twin, element="Lib/Valve/Sensor")
    world.fails("forbidden", MAINTAINER, "twins", "insert_aml", twin=twin, parent="Lib/Valve",
                fragment=b'<ExternalInterface Name="Close" RefBaseClassPath="TwinledgerInterfaceClassLib/Program"/>')  # fmt: skip
    world.fails("unsafe_parameter", OWNER, "twins", "call_program", twin=twin, program="Plant/LineB/ValveB/Open",
                params={"angle": "720"})  # fmt: skip


def test_a_class_change_rewrites_one_entry_not_one_per_instance() -> None:
    instances = b"".join(b'<InternalElement Name="V%d" ID="v%d" RefBaseSystemUnitPath="Lib/Valve"/>' % (i, i)
                         for i in range(200))  # fmt: skip
    world = World()
    twin = world.create_twin(aml=VALVES.replace(b'<InternalElement Name="LineB" ID="lineB">',
                                                b'<InternalElement Name="LineB" ID="lineB">' + instances), device_id="v-2")
    before = dict(world.state.values)
    world.ok(OWNER, "twins", "insert_aml", twin=twin, parent="Lib/Valve/Open",
             fragment=b'<Attribute Name="speed" AttributeDataType="xs:double"/>')  # fmt: skip
    changed = [k for k, v in world.state.values.items() if before.get(k) != v and f"twin/{twin}/" in k]
    assert [k for k in changed if "program/" in k] == [f"twin/{twin}/class-program/Lib/Valve/Open"]


def test_removing_a_class_leaves_the_feeds_of_instances_that_share_its_ids() -> None:
    world = World()
    twin = world.create_twin(aml=VALVES, device_id="v-3")
    world.ok(OWNER, "twins", "add_feed", twin=twin, component="p1-level", reference="feed:level")
    receipt = world.ok(OWNER, "twins", "remove_aml", twin=twin, element="Lib/Valve/Sensor")
    assert not [e for e in receipt.events if e.type == "FeedRemoved"]
    assert world.get(f"twin/{twin}/feed/p1-level") is not None


def test_long_ids_and_program_paths_that_would_not_fit_a_state_key_are_refused() -> None:
    with pytest.raises(AmlError, match="longer than 128"):
        aml.stored_form(PLANT.replace(b'ID="capper-1"', b'ID="' + b"c" * 129 + b'"'))
    deep = PLANT.replace(b'Name="Conveyor"', b'Name="' + b"C" * 500 + b'"')
    with pytest.raises(AmlError, match="longer than 512"):
        aml.stored_form(deep)


def test_two_programs_or_signals_cannot_share_an_opcua_node() -> None:
    tool = (b'<InternalElement Name="Tools" ID="tools"><Attribute Name="OpcUaObject" AttributeDataType="xs:string">'
            b'<Value>line-1/Conveyor</Value></Attribute></InternalElement>')  # fmt: skip
    renamed = PLANT.replace(b'<InternalElement Name="Conveyor" ID="conveyor-1">',
                            tool + b'<InternalElement Name="Conveyor" ID="conveyor-1"><Attribute Name="OpcUaObject" '
                            b'AttributeDataType="xs:string"><Value>line-1/Conveyor</Value></Attribute>')  # fmt: skip
    with pytest.raises(AmlError, match="both name OPC UA object"):
        aml.stored_form(renamed)
    clash = PLANT.replace(b'<ExternalInterface Name="SetDirection" ID="conveyor-1-set-direction"',
                          b'<ExternalInterface Name="SetVelocity" ID="conveyor-1-set-direction"')
    with pytest.raises(AmlError, match="declares two programs of the same name"):
        aml.stored_form(clash)


def test_integer_bounds_are_exact_and_numbers_have_no_spaces() -> None:
    document = PLANT.replace(b"<RequiredMaxValue>1000</RequiredMaxValue>",
                             b"<RequiredMaxValue>9007199254740992</RequiredMaxValue>")  # fmt: skip
    fill = aml.program(aml.stored_form(document), PROGRAMS["SetFillVolume"])
    with pytest.raises(AmlError, match="above its safe maximum"):
        fill.validate_call({"volume": "9007199254740993", "valve_check": True})
    with pytest.raises(AmlError, match="without spaces"):
        aml.program(aml.stored_form(PLANT), PROGRAMS["SetVelocity"]).validate_call({"velocity": "\n1\n"})


def test_a_store_that_cannot_be_read_stops_the_node_instead_of_failing_the_transaction() -> None:
    """The runtime's backstop turns contract bugs into a failed receipt; a node-local fault
    must not become a result that differs from the other nodes'."""
    import sqlite3

    from twinledger.contracts.runtime import Overlay

    world = World()
    twin = world.create_twin()

    class Broken(Overlay):
        def get(self, key: str) -> object:
            if key.startswith(f"twin/{twin}/program/"):
                raise sqlite3.OperationalError("disk I/O error")
            return super().get(key)

    tx = world.tx(OWNER, "twins", "call_program", {"twin": twin, "program": PROGRAMS["SetVelocity"],
                                                    "params": {"velocity": "1"}})  # fmt: skip
    with pytest.raises(sqlite3.OperationalError):
        world.runtime.execute_block(Broken(world.state), world.header(world.height + 1), (tx,), world.root)
