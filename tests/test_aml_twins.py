"""Twins from real AutomationML through the contracts: registration of the corpus, a
10 MB plant model on chain as its model (the document off chain), per-component programs,
and the contract's side of a version: a model delta it checks and authorizes entry by
entry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lxml import etree
from test_aml import LINE
from test_aml_corpus import CORPUS, VALID, _specification
from twin_helpers import World, key_for

from twinledger import aml
from twinledger.bench.aml import plant_model, station
from twinledger.contracts.twinmodel import model_entries
from twinledger.contracts.twinstate import call_key
from twinledger.core.encoding import encode

OWNER = key_for("plant-owner")
MAINTAINER = key_for("maintenance-co")


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_a_real_file_registers_a_twin(world: World, path: Path) -> None:
    twin = world.create_twin(aml=_specification(path), device_id=f"dev-{abs(hash(path.name)) % 10**9}")
    assert world.document(twin, 1) == aml.stored_form(_specification(path))
    assert _model_state(world, twin) == model_entries(aml.model(world.document(twin, 1)))


def test_a_10_mb_plant_registers_its_model_in_parts_and_an_edit_costs_its_delta() -> None:
    """The document stays off chain; its model (2.5 MB here) is staged in parts and taken
    whole by the creation; inserting and removing a station write a few hundred bytes,
    and the versions diff readably."""
    world = World()
    document = plant_model(10 * 1024 * 1024)
    start = time.perf_counter()
    twin = world.create_twin(aml=document, device_id="plant-10mb")
    created = time.perf_counter() - start
    assert [t.method for t in world.transactions].count("stage") > 1, "the model was staged in parts"
    assert not [k for k in world.contract_state() if k.startswith("staging/")], "and taken whole"
    assert world.get(f"twin/{twin}/program/Plant/Line7/Station3/MoveTo")["declared_in"] == "PlantSystemUnitClassLib/Robot"
    before = dict(world.state.values)
    world.ok(OWNER, "twins", "insert_aml", twin=twin, fragment=station(7, 999).encode(), parent="line-7", after="l7-s40")
    written = {k: v for k, v in world.state.values.items() if before.get(k) != v and k.startswith(f"twin/{twin}/")}
    assert sum(len(k) + len(encode(v)) for k, v in written.items()) < 4096
    world.ok(OWNER, "twins", "call_program", twin=twin, program="Plant/Line7/Station999/MoveTo", params={"position": 90})
    change = aml.diff(world.document(twin, 1), world.document(twin, 2))
    assert '+      <InternalElement ID="l7-s999"' in change and "\n-" not in change, "a readable diff at 10 MB"
    world.ok(OWNER, "twins", "remove_aml", twin=twin, element="l7-s999")
    assert world.document(twin) == world.document(twin, 1)
    assert created < 60, f"creating a 10 MB twin took {created:.0f} s"


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
    spec = world.document(twin, 1)
    link = etree.fromstring(spec).xpath("//InternalLink")[0]
    target = link.get("RefPartnerSideB").split(":")[0]
    refused = world.fails("linked_element", OWNER, "twins", "remove_aml", twin=twin, element=target)
    assert repr(link.get("Name")) in refused.message
    receipt = world.ok(OWNER, "twins", "remove_aml", twin=twin, element=target, links="remove")
    (removed,) = [e for e in receipt.events if e.type == "AmlRemoved"]
    assert removed.data["links"] and link.get("Name") in removed.data["links"][0]
    assert not etree.fromstring(world.document(twin, 2)).xpath("//InternalLink")


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
    assert _model_state(world, twin) == model_entries(aml.model(world.document(twin, 1)))
    before = _model_state(world, twin)
    fragment = (b'<InternalElement Name="Conveyor4" ID="c4" RefBaseSystemUnitPath="Lib/Conveyor">'
                b'<ExternalInterface Name="Speed" ID="c4-speed" RefBaseClassPath="TwinledgerInterfaceClassLib/Signal"/>'
                b"</InternalElement>")  # fmt: skip
    world.ok(OWNER, "twins", "insert_aml", twin=twin, fragment=fragment, parent="line", after="c3")
    after = _model_state(world, twin)
    assert after == model_entries(aml.model(world.document(twin, 2)))
    assert {k for k in after if after.get(k) != before.get(k)} == {
        "element/c4", "element/c4-speed", "program/Plant/Line/Conveyor4/SetVelocity",
        "signal/c4-speed"}  # fmt: skip
    world.ok(OWNER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor4/SetVelocity", params={"velocity": "2"})
    world.ok(OWNER, "twins", "remove_aml", twin=twin, element="c4")
    assert _model_state(world, twin) == before
    world.fails("unknown_program", OWNER, "twins", "call_program", twin=twin, program="Plant/Line/Conveyor4/SetVelocity",
                params={"velocity": "2"})  # fmt: skip
