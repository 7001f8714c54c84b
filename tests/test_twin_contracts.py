"""The twin contracts executed by the real runtime: the role × method matrix, component
scopes, bad input that leaves state unchanged, life-cycles and history."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from twin_helpers import PLANT, PROGRAMS, World, key_for

from twinledger import aml
from twinledger.contracts.authorization import DATA_METHODS, DEFAULT_PERMISSIONS, OWNER_METHODS, ROLES
from twinledger.contracts.twinstate import call_key, checkpoint_key, document_key, feed_key, history_key
from twinledger.crypto.keys import SigningKey

OWNER = key_for("plant-owner")
ACTOR_ORG = "maintenance-co"
ACTOR = key_for(ACTOR_ORG)
DOC = hashlib.sha256(b"maintenance report").digest()
DOC2 = hashlib.sha256(b"maintenance report v2").digest()
SENSOR = b'<InternalElement Name="FillLevelSensor2" ID="level-sensor-2"/>'


def _doc(world: World, twin: str) -> None:
    world.ok(OWNER, "twins", "add_document", twin=twin, hash=DOC, title="Report", reference="store:doc-1")


def _call(world: World, twin: str) -> None:
    world.ok(OWNER, "twins", "call_program", twin=twin, program=PROGRAMS["SetFillVolume"],
             params={"volume": 500, "valve_check": True})  # fmt: skip


def _dispatched(world: World, twin: str) -> None:
    _call(world, twin)
    world.ok(OWNER, "twins", "dispatch_call", twin=twin, call=1)


def _nothing(world: World, twin: str) -> None:
    pass


Setup = Callable[[World, str], None]
CASES: dict[str, tuple[Setup, str, str, dict[str, Any]]] = {
    "aml.insert": (_nothing, "twins", "insert_aml", {"fragment": SENSOR, "parent": "filler-1"}),
    "aml.remove": (_nothing, "twins", "remove_aml", {"element": "capper-1"}),
    "document.add": (_nothing, "twins", "add_document", {"hash": DOC, "title": "Manual", "reference": "store:x"}),
    "document.version": (_doc, "twins", "add_document_version",
                         {"document": DOC.hex(), "hash": DOC2, "reference": "store:doc-2"}),
    "document.remove": (_doc, "twins", "remove_document", {"document": DOC.hex()}),
    "source.add": (_nothing, "twins", "add_source", {"uri": "https://erp.example/plant-7"}),
    "source.remove": (lambda w, t: w.ok(OWNER, "twins", "add_source", twin=t, uri="https://erp.example/plant-7"),
                      "twins", "remove_source", {"uri": "https://erp.example/plant-7"}),
    "feed.add": (_nothing, "twins", "add_feed", {"component": "flow-sensor-1", "reference": "feed:1"}),
    "feed.remove": (lambda w, t: w.ok(OWNER, "twins", "add_feed", twin=t, component="flow-sensor-1", reference="f"),
                    "twins", "remove_feed", {"component": "flow-sensor-1"}),
    "program.call": (_nothing, "twins", "call_program",
                     {"program": PROGRAMS["SetFillVolume"], "params": {"volume": 500, "valve_check": True}}),
    "program.dispatch": (_call, "twins", "dispatch_call", {"call": 1}),
    "program.report": (_dispatched, "twins", "report_call", {"call": 1, "status": "executed", "result": "ok"}),
    "anomaly.report": (_nothing, "twins", "report_anomaly",
                       {"signal": "level-sensor-1-level", "state": "raised", "deviation": "below", "since": 1}),
    "role.grant": (_nothing, "authorization", "grant_role", {"subject": "org:audit-co", "role": "auditor"}),
    "role.revoke": (lambda w, t: w.ok(OWNER, "authorization", "grant_role", twin=t, subject="org:audit-co",
                                      role="auditor"),
                    "authorization", "revoke_role", {"subject": "org:audit-co", "role": "auditor"}),
    "permissions.set": (_nothing, "authorization", "set_permissions", {"role": "auditor", "methods": ["source.add"]}),
}  # fmt: skip


def test_the_matrix_covers_every_method():
    assert set(CASES) == set(DATA_METHODS) | set(OWNER_METHODS)


@pytest.mark.parametrize("role", [*ROLES, None])
@pytest.mark.parametrize("method", sorted(CASES))
def test_role_method_matrix(role: str | None, method: str):
    world = World()
    roles = {f"org:{ACTOR_ORG}": {role: []}} if role else {}
    twin = world.create_twin(roles=roles)
    setup, contract, name, args = CASES[method]
    setup(world, twin)
    if role is not None and method in DEFAULT_PERMISSIONS[role]:
        world.ok(ACTOR, contract, name, twin=twin, **args)
    else:
        receipt = world.fails("forbidden", ACTOR, contract, name, twin=twin, **args)
        assert f"org:{ACTOR_ORG} may not {method} on twin {twin}" in receipt.message


def test_a_key_subject_acts_without_membership():
    world = World()
    agent = SigningKey(b"\x01" * 32)
    twin = world.create_twin(roles={f"key:{agent.public.hex()}": {"device-agent": []}})
    world.ok(agent, "twins", "remove_aml", twin=twin, element="level-sensor-1")
    world.fails("forbidden", agent, "twins", "add_document", twin=twin, hash=DOC, title="x", reference="r")
    world.fails("forbidden", SigningKey(b"\x02" * 32), "twins", "remove_aml", twin=twin, element="capper-1")


SCOPED = [
    ("aml.insert inside", True, "insert_aml", {"fragment": SENSOR, "parent": "filler-1"}),
    ("aml.insert outside", False, "insert_aml", {"fragment": SENSOR, "parent": "conveyor-1"}),
    ("aml.remove inside", True, "remove_aml", {"element": "level-sensor-1"}),
    ("aml.remove the scope itself", True, "remove_aml", {"element": "filler-1"}),
    ("aml.remove outside", False, "remove_aml", {"element": "capper-1"}),
    ("aml.remove the parent of the scope", False, "remove_aml", {"element": "line-1"}),
    ("feed.add inside", True, "add_feed", {"component": "flow-sensor-1", "reference": "f"}),
    ("feed.add outside", False, "add_feed", {"component": "conveyor-1", "reference": "f"}),
    ("program inside", True, "call_program", {"program": PROGRAMS["SetFillVolume"], "params": {"volume": 300,
                                                                                     "valve_check": False}}),
    ("program outside", False, "call_program", {"program": PROGRAMS["SetVelocity"], "params": {"velocity": "1.0"}}),
    ("document on a component inside", True, "add_document",
     {"hash": DOC, "title": "t", "reference": "r", "component": "level-sensor-1"}),
    ("document on the whole twin", False, "add_document", {"hash": DOC, "title": "t", "reference": "r"}),
    ("source (whole twin only)", False, "add_source", {"uri": "https://erp.example/x"}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "allowed", "method", "args"), SCOPED, ids=[s[0] for s in SCOPED])
def test_component_scoped_maintainer(label: str, allowed: bool, method: str, args: dict[str, Any]):
    world = World()
    twin = world.create_twin(roles={f"org:{ACTOR_ORG}": {"maintainer": ["filler-1"]}})
    if allowed:
        world.ok(ACTOR, "twins", method, twin=twin, **args)
    else:
        world.fails("forbidden", ACTOR, "twins", method, twin=twin, **args)


def test_owner_changes_roles_and_permissions():
    world = World()
    twin = world.create_twin()
    auditor = key_for("audit-co")
    world.fails("forbidden", auditor, "twins", "add_source", twin=twin, uri="https://a.example/1")
    world.ok(OWNER, "authorization", "grant_role", twin=twin, subject="org:audit-co", role="auditor")
    world.fails("forbidden", auditor, "twins", "add_source", twin=twin, uri="https://a.example/1")
    world.ok(OWNER, "authorization", "set_permissions", twin=twin, role="auditor", methods=["source.add"])
    world.ok(auditor, "twins", "add_source", twin=twin, uri="https://a.example/1")
    world.ok(OWNER, "authorization", "revoke_role", twin=twin, subject="org:audit-co", role="auditor")
    world.fails("forbidden", auditor, "twins", "add_source", twin=twin, uri="https://a.example/2")
    world.fails("no_such_role", OWNER, "authorization", "revoke_role", twin=twin, subject="org:audit-co",
                role="auditor")  # fmt: skip
    world.fails("last_owner", OWNER, "authorization", "revoke_role", twin=twin, subject="org:plant-owner",
                role="owner")  # fmt: skip
    world.fails("bad_arguments", OWNER, "authorization", "set_permissions", twin=twin, role="owner",
                methods=["source.add"])  # fmt: skip
    world.fails("bad_arguments", OWNER, "authorization", "grant_role", twin=twin, subject="org:audit-co",
                role="owner", scopes=["filler-1"])  # fmt: skip
    world.fails("unknown_element", OWNER, "authorization", "grant_role", twin=twin, subject="org:audit-co",
                role="maintainer", scopes=["no-such-component"])  # fmt: skip
    world.ok(OWNER, "authorization", "grant_role", twin=twin, subject="org:maker", role="owner")
    world.ok(OWNER, "authorization", "revoke_role", twin=twin, subject="org:plant-owner", role="owner")
    world.fails("forbidden", OWNER, "twins", "add_source", twin=twin, uri="https://a.example/3")


def test_only_members_create_twins_and_device_ids_are_unique():
    world = World()
    stranger = SigningKey(b"\x03" * 32)
    world.fails("not_a_member", stranger, "twins", "create", name="x", device_id="d-1", aml=PLANT)
    world.create_twin(device_id="d-1")
    world.fails("duplicate_device", OWNER, "twins", "create", name="x", device_id="d-1", aml=PLANT)
    world.fails("unknown_element", OWNER, "twins", "create", name="x", device_id="d-2", aml=PLANT,
                roles={"org:maker": {"maintainer": ["nope"]}})  # fmt: skip
    world.fails("bad_arguments", OWNER, "twins", "create", name="x", device_id="d-2", aml=PLANT,
                roles={"org:maker": {"janitor": []}})  # fmt: skip


BAD_EDITS = [
    ("malformed fragment", "invalid_aml", "insert_aml", {"fragment": b"<InternalElement ID='x'>", "parent": "line-1"}),
    ("duplicate ID", "invalid_aml", "insert_aml",
     {"fragment": b'<InternalElement Name="F" ID="filler-1"/>', "parent": "line-1"}),
    ("unknown parent", "unknown_element", "insert_aml", {"fragment": SENSOR, "parent": "no-such-parent"}),
    ("unknown sibling", "invalid_aml", "insert_aml", {"fragment": SENSOR, "parent": "filler-1", "after": "capper-1"}),
    ("element in an attribute", "invalid_aml", "insert_aml", {"fragment": SENSOR, "parent": "conveyor-1-set-velocity"}),
    ("entity expansion", "invalid_aml", "insert_aml",
     {"fragment": b'<!DOCTYPE x [<!ENTITY a "aaaa">]><InternalElement ID="e" Name="&a;"/>', "parent": "line-1"}),
    ("remove a missing element", "unknown_element", "remove_aml", {"element": "no-such-element"}),
    ("unknown program", "unknown_program", "call_program", {"program": "SelfDestruct", "params": {}}),
    ("velocity above bound", "unsafe_parameter", "call_program",
     {"program": PROGRAMS["SetVelocity"], "params": {"velocity": "2.6"}}),
    ("velocity below bound", "unsafe_parameter", "call_program",
     {"program": PROGRAMS["SetVelocity"], "params": {"velocity": "-0.1"}}),
    ("velocity not a number", "unsafe_parameter", "call_program",
     {"program": PROGRAMS["SetVelocity"], "params": {"velocity": "fast"}}),
    ("direction not allowed", "unsafe_parameter", "call_program",
     {"program": PROGRAMS["SetDirection"], "params": {"direction": "backward"}}),
    ("missing parameter", "unsafe_parameter", "call_program", {"program": PROGRAMS["SetFillVolume"], "params": {"volume": 500}}),
    ("unknown parameter", "unsafe_parameter", "call_program",
     {"program": PROGRAMS["SetVelocity"], "params": {"velocity": "1.0", "turbo": True}}),
    ("boolean for an integer", "unsafe_parameter", "call_program",
     {"program": PROGRAMS["SetFillVolume"], "params": {"volume": True, "valve_check": True}}),
    ("feed for a missing component", "unknown_element", "add_feed", {"component": "ghost", "reference": "f"}),
    ("remove a missing feed", "unknown_feed", "remove_feed", {"component": "flow-sensor-1"}),
    ("remove a missing source", "unknown_source", "remove_source", {"uri": "https://nowhere.example/"}),
    ("source that is not a URI", "bad_arguments", "add_source", {"uri": "not a uri"}),
    ("version of a missing document", "unknown_document", "add_document_version",
     {"document": DOC.hex(), "hash": DOC2, "reference": "r"}),
    ("document hash of the wrong size", "bad_arguments", "add_document", {"hash": b"short", "title": "t",
                                                                           "reference": "r"}),
    ("unknown argument", "bad_arguments", "remove_aml", {"element": "capper-1", "force": True}),
    ("dispatch a missing call", "unknown_call", "dispatch_call", {"call": 7}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "code", "method", "args"), BAD_EDITS, ids=[b[0] for b in BAD_EDITS])
def test_bad_input_is_refused_and_changes_nothing(label: str, code: str, method: str, args: dict[str, Any]):
    world = World()
    twin = world.create_twin()
    world.fails(code, OWNER, "twins", method, twin=twin, **args)


def test_unknown_twin_and_malformed_creation():
    world = World()
    world.fails("unknown_twin", OWNER, "twins", "remove_aml", twin="0000000000000000", element="x")
    world.fails("invalid_aml", OWNER, "twins", "create", name="x", device_id="d", aml=b"<CAEXFile><oops")
    world.fails("invalid_aml", OWNER, "twins", "create", name="x", device_id="d", aml=b"<NotCaex/>")
    doubled = PLANT.replace(b'ID="capper-1"', b'ID="filler-1"')
    world.fails("invalid_aml", OWNER, "twins", "create", name="x", device_id="d", aml=doubled)


def test_specification_history_keeps_every_version():
    world = World()
    twin = world.create_twin()
    world.ok(OWNER, "twins", "remove_aml", twin=twin, element="level-sensor-1")
    world.ok(OWNER, "twins", "insert_aml", twin=twin, fragment=SENSOR, parent="filler-1", after="flow-sensor-1")
    assert world.get(f"twin/{twin}")["aml_version"] == 3
    history = [world.get(history_key(twin, v)) for v in (1, 2, 3)]
    assert [(h["change"], h["element"]) for h in history] == [("create", ""), ("remove", "level-sensor-1"),
                                                              ("insert", "level-sensor-2")]  # fmt: skip
    assert all(h["organisation"] == "plant-owner" and h["key"] == OWNER.public for h in history)
    first, third = world.document(twin, 1), world.document(twin, 3)
    assert first == aml.canonical(aml.parse_specification(PLANT))
    assert b"level-sensor-2" in third and b"level-sensor-1" not in third
    assert history[2]["hash"] == hashlib.sha256(third).digest()
    text = aml.diff(first, third, "v1", "v3")
    assert '-        <InternalElement ID="level-sensor-1"' in text
    assert '+        <InternalElement ID="level-sensor-2" Name="FillLevelSensor2"/>' in text


def test_documents_have_versions_and_removal():
    world = World()
    twin = world.create_twin()
    _doc(world, twin)
    world.fails("duplicate_document", OWNER, "twins", "add_document", twin=twin, hash=DOC, title="x", reference="r")
    world.ok(OWNER, "twins", "add_document_version", twin=twin, document=DOC.hex(), hash=DOC2, reference="store:2",
             description="fixed typo")  # fmt: skip
    world.fails("duplicate_version", OWNER, "twins", "add_document_version", twin=twin, document=DOC.hex(), hash=DOC2,
                reference="store:2")  # fmt: skip
    document = world.get(document_key(twin, DOC.hex()))
    assert [v["hash"] for v in document["versions"]] == [DOC, DOC2]
    assert document["versions"][1]["description"] == "fixed typo"
    world.ok(OWNER, "twins", "remove_document", twin=twin, document=DOC.hex())
    assert world.get(document_key(twin, DOC.hex()))["removed"]["organisation"] == "plant-owner"
    world.fails("document_removed", OWNER, "twins", "add_document_version", twin=twin, document=DOC.hex(),
                hash=hashlib.sha256(b"v3").digest(), reference="r")  # fmt: skip
    world.fails("document_removed", OWNER, "twins", "remove_document", twin=twin, document=DOC.hex())


def test_program_call_life_cycle():
    world = World()
    agent = SigningKey(b"\x04" * 32)
    twin = world.create_twin(roles={f"key:{agent.public.hex()}": {"device-agent": []}})
    for _ in range(3):
        _call(world, twin)
    world.fails("bad_transition", agent, "twins", "report_call", twin=twin, call=1, status="executed")
    world.ok(agent, "twins", "dispatch_call", twin=twin, call=1)
    world.fails("bad_transition", agent, "twins", "dispatch_call", twin=twin, call=1)
    world.ok(agent, "twins", "report_call", twin=twin, call=1, status="executed", result="volume set to 500 ml")
    world.ok(agent, "twins", "dispatch_call", twin=twin, call=2)
    world.ok(agent, "twins", "report_call", twin=twin, call=2, status="failed", result="valve 3 stuck")
    world.ok(agent, "twins", "report_call", twin=twin, call=3, status="rejected", result="line is stopped")
    world.fails("bad_transition", agent, "twins", "report_call", twin=twin, call=3, status="executed")
    calls = [world.get(call_key(twin, n)) for n in (1, 2, 3)]
    assert [c["status"] for c in calls] == ["executed", "failed", "rejected"]
    assert [h["status"] for h in calls[0]["history"]] == ["queued", "dispatched", "executed"]
    assert calls[0]["result"] == "volume set to 500 ml" and calls[0]["params"] == {"volume": 500, "valve_check": True}
    assert calls[0]["component"] == "filler-1"


def test_sensor_replacement_of_section_5_2():
    """§5.2: the device agent replaces the broken level sensor's specification entry and
    feed; the maintainer attaches the maintenance report to the new sensor."""
    world = World()
    agent = SigningKey(b"\x05" * 32)
    twin = world.create_twin(roles={f"key:{agent.public.hex()}": {"device-agent": ["filler-1"]},
                                    "org:maintenance-co": {"maintainer": []}, "org:audit-co": {"auditor": []}})  # fmt: skip
    world.ok(agent, "twins", "add_feed", twin=twin, component="level-sensor-1", reference="feed:old")
    removed = world.ok(agent, "twins", "remove_aml", twin=twin, element="level-sensor-1")
    assert [e.type for e in removed.events] == ["AmlRemoved", "FeedRemoved"]
    world.ok(agent, "twins", "insert_aml", twin=twin, fragment=SENSOR, parent="filler-1", after="flow-sensor-1")
    world.ok(agent, "twins", "add_feed", twin=twin, component="level-sensor-2", reference="feed:new")
    world.ok(ACTOR, "twins", "add_document", twin=twin, hash=DOC, title="Maintenance report: level sensor replaced",
             reference="store:report", component="level-sensor-2")  # fmt: skip
    assert world.get(feed_key(twin, "level-sensor-1")) is None
    assert world.get(feed_key(twin, "level-sensor-2"))["reference"] == "feed:new"
    assert world.get(document_key(twin, DOC.hex()))["component"] == "level-sensor-2"
    assert world.get(f"twin/{twin}")["aml_version"] == 3


def test_replay_reaches_the_same_state_root():
    first = World()
    twin = first.create_twin(roles={"org:maintenance-co": {"maintainer": []}})
    _doc(first, twin)
    _call(first, twin)
    first.ok(ACTOR, "twins", "remove_aml", twin=twin, element="capper-1")
    first.fails("forbidden", key_for("maker"), "twins", "remove_aml", twin=twin, element="conveyor-1")
    second = World()
    for tx in first.transactions:
        second.run(tx)
    assert second.root == first.root
    assert second.state.values == first.state.values


def test_feed_checkpoints_come_from_the_key_that_attached_the_feed_and_only_move_forward():
    world = World()
    agent = SigningKey(b"\x06" * 32)
    twin = world.create_twin(roles={f"key:{agent.public.hex()}": {"device-agent": ["filler-1"]},
                                    "org:maintenance-co": {"maintainer": []}})  # fmt: skip
    reference = "store:" + "ab" * 32
    world.ok(agent, "twins", "add_feed", twin=twin, component="level-sensor-1", reference=reference)
    head = hashlib.sha256(b"head 9").digest()
    done = world.ok(agent, "twins", "checkpoint_feed", twin=twin, component="level-sensor-1", sequence=9, head=head)
    assert [e.type for e in done.events] == ["FeedCheckpointed"]

    def refused(code: str, signer: SigningKey, **args: Any) -> None:
        world.fails(code, signer, "twins", "checkpoint_feed", **{"twin": twin, "component": "level-sensor-1",
                                                                  "sequence": 19, "head": head, **args})  # fmt: skip

    refused("not_feed_owner", ACTOR)  # a maintainer may attach feeds, not checkpoint another key's
    refused("stale_checkpoint", agent, sequence=9)
    refused("stale_checkpoint", agent, sequence=3)
    refused("unknown_feed", agent, component="flow-sensor-1")
    refused("bad_arguments", agent, head=b"short")
    world.ok(agent, "twins", "checkpoint_feed", twin=twin, component="level-sensor-1", sequence=19, head=head)
    # Detached and attached again, the feed keeps its checkpoints and their numbering.
    world.ok(agent, "twins", "remove_feed", twin=twin, component="level-sensor-1")
    world.ok(agent, "twins", "add_feed", twin=twin, component="level-sensor-1", reference=reference)
    refused("stale_checkpoint", agent)
    latest = world.get(checkpoint_key(twin, reference))
    assert (latest["count"], latest["sequence"], latest["number"]) == (2, 19, 2)
    assert world.get(checkpoint_key(twin, reference, 1))["sequence"] == 9
