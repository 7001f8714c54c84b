"""Twins from real AutomationML through the contracts: registration of the corpus, edits
that never leave a twin with a version it cannot read back, per-component programs."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from test_aml import LINE
from test_aml_corpus import CORPUS, VALID, _specification
from twin_helpers import PLANT, PROGRAMS, World, key_for

from twinledger import aml
from twinledger.contracts.specification import MAX_SPECIFICATION_BYTES
from twinledger.contracts.twinstate import aml_key, call_key

OWNER = key_for("plant-owner")
MAINTAINER = key_for("maintenance-co")


def _fits(path: Path) -> bool:
    return len(aml.stored_form(_specification(path))) <= MAX_SPECIFICATION_BYTES


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.mark.parametrize("path", [p for p in VALID if _fits(p)], ids=lambda p: p.name)
def test_a_real_file_registers_a_twin(world: World, path: Path) -> None:
    twin = world.create_twin(aml=_specification(path), device_id=f"dev-{abs(hash(path.name)) % 10**9}")
    assert world.get(aml_key(twin, 1)) == aml.stored_form(_specification(path))


def test_growth_past_the_limit_is_refused_and_the_twin_stays_editable() -> None:
    """Inserts that would outgrow the limit are refused before anything is stored; the
    twin keeps its last good version and takes removals and smaller inserts after."""
    world = World()
    twin = world.create_twin()
    filler = b"<Attribute Name=\"Note\" AttributeDataType=\"xs:string\"><Value>" + b"x" * 3000 + b"</Value></Attribute>"
    number = 0
    while True:
        number += 1
        fragment = f'<InternalElement Name="Part{number}" ID="part-{number}">'.encode() + filler + b"</InternalElement>"
        receipt = world.call(OWNER, "twins", "insert_aml", twin=twin, fragment=fragment, parent="line-1")
        if receipt.status != "ok":
            break
    assert receipt.error == "too_large" and "the limit is 61440" in receipt.message
    version = world.get(f"twin/{twin}")["aml_version"]
    assert len(world.get(aml_key(twin, version))) <= MAX_SPECIFICATION_BYTES
    world.ok(OWNER, "twins", "remove_aml", twin=twin, element="part-1")
    world.ok(OWNER, "twins", "call_program", twin=twin, program=PROGRAMS["SetVelocity"], params={"velocity": "1.0"})


def test_a_file_that_grows_past_the_limit_in_stored_form_is_refused_at_creation() -> None:
    padding = b"<InternalElement Name=\"Spare\" ID=\"spare-%d\"/>"
    body = b"".join(padding % n for n in range(1200))
    document = PLANT.replace(b"</InstanceHierarchy>", body + b"</InstanceHierarchy>")
    assert len(document) <= MAX_SPECIFICATION_BYTES < len(aml.stored_form(document))
    receipt = World().fails("too_large", OWNER, "twins", "create", name="p", device_id="p", aml=document)
    assert "in stored form; the limit is" in receipt.message


def test_calls_name_a_program_by_its_component_path_and_scopes_hold() -> None:
    world = World()
    twin = world.create_twin(aml=LINE, roles={"org:maintenance-co": {"maintainer": ["c3"]}})
    refused = world.fails("unknown_program", OWNER, "twins", "call_program", twin=twin, program="SetVelocity",
                          params={"velocity": "1"})  # fmt: skip
    assert "full path" in refused.message, "shorter names are the service layer's to resolve"
    world.ok(OWNER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor1/SetVelocity", params={"velocity": "1.5"})
    assert world.get(call_key(twin, 1))["program"] == "Plant/Line/Conveyor1/SetVelocity"
    world.fails("unsafe_parameter", MAINTAINER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor3/SetVelocity",
                params={"velocity": "1.5"})  # fmt: skip
    world.ok(MAINTAINER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor3/SetVelocity",
             params={"velocity": "0.5"})  # fmt: skip
    world.fails("forbidden", MAINTAINER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor1/SetVelocity",
                params={"velocity": "0.5"})  # fmt: skip


def test_removing_a_linked_component_through_the_contract() -> None:
    world = World()
    twin = world.create_twin(aml=(CORPUS / "uax__Part2.aml").read_bytes())
    spec = world.get(aml_key(twin, 1))
    link = etree.fromstring(spec).xpath("//InternalLink")[0]
    target = link.get("RefPartnerSideB").split(":")[0]
    refused = world.fails("linked_element", OWNER, "twins", "remove_aml", twin=twin, element=target)
    assert repr(link.get("Name")) in refused.message
    receipt = world.ok(OWNER, "twins", "remove_aml", twin=twin, element=target, links="remove")
    (removed,) = [e for e in receipt.events if e.type == "AmlRemoved"]
    assert removed.data["links"] and link.get("Name") in removed.data["links"][0]
    assert not etree.fromstring(world.get(aml_key(twin, 2))).xpath("//InternalLink")


def _model_state(world: World, twin: str) -> dict[str, object]:
    prefix = f"twin/{twin}/"
    kinds = ("element/", "program/", "class-program/", "signal/")
    return {k[len(prefix):]: v for k, v in world.contract_state().items()
            if k.startswith(prefix) and k[len(prefix):].startswith(kinds)}  # fmt: skip


def test_the_model_on_chain_follows_every_edit_and_changes_only_what_the_edit_touched() -> None:
    """Elements, programs and signals are kept per entry; after each edit they are what
    the current version gives, and an edit rewrites only the entries it changed."""
    from twinledger.contracts.twinmodel import model_entries

    world = World()
    twin = world.create_twin(aml=LINE)
    assert _model_state(world, twin) == model_entries(aml.model(world.get(aml_key(twin, 1))))
    before = _model_state(world, twin)
    fragment = (b'<InternalElement Name="Conveyor4" ID="c4" RefBaseSystemUnitPath="Lib/Conveyor">'
                b'<ExternalInterface Name="Speed" ID="c4-speed" RefBaseClassPath="TwinledgerInterfaceClassLib/Signal"/>'
                b"</InternalElement>")  # fmt: skip
    world.ok(OWNER, "twins", "insert_aml", twin=twin, fragment=fragment, parent="line", after="c3")
    after = _model_state(world, twin)
    assert after == model_entries(aml.model(world.get(aml_key(twin, 2))))
    assert {k for k in after if after.get(k) != before.get(k)} == {
        "element/c4", "element/c4-speed", "program/Plant/Line/Conveyor4/SetVelocity",
        "signal/c4-speed"}  # fmt: skip
    world.ok(OWNER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor4/SetVelocity", params={"velocity": "2"})
    world.ok(OWNER, "twins", "remove_aml", twin=twin, element="c4")
    assert _model_state(world, twin) == before
    world.fails("unknown_program", OWNER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor4/SetVelocity",
                params={"velocity": "2"})  # fmt: skip
