"""The principals contract: an organisation's people and programs, each with its own key,
acting for the organisation only within their principal roles — checked at admission and
again when applied — and named in the twin's audit trail."""

from __future__ import annotations

import pytest
from twin_helpers import PLANT, World, key_for

from twinledger.contracts.membership import member_key, organisation_of
from twinledger.contracts.principals import principal_key
from twinledger.crypto.keys import SigningKey
from twinledger.errors import TwinledgerError

ALICE = SigningKey(b"\x31" * 32)
MES = SigningKey(b"\x32" * 32)
ADMIN_PERSON = SigningKey(b"\x33" * 32)
OWNER = key_for("plant-owner")


def registered(world: World) -> World:
    world.ok(OWNER, "principals", "register", name="alice", kind="person", key=ALICE.public, roles=["engineer"])
    world.ok(OWNER, "principals", "register", name="mes", kind="program", key=MES.public, roles=["viewer"])
    return world


def test_a_principal_acts_for_its_organisation_and_is_named_in_the_audit_trail():
    world = registered(World())
    assert organisation_of(world.state, ALICE.public) == "plant-owner"
    assert world.get(member_key(ALICE.public))["principal"] == "alice"
    created = world.ok(ALICE, "twins", "create", name="Line", device_id="line-1", aml=PLANT)
    twin = created.events[0].data["twin"]
    (entry,) = [v for k, v in world.state.values.items() if k.startswith(f"twin/{twin}/log/")]
    assert (entry["organisation"], entry["principal"], entry["key"]) == ("plant-owner", "alice", ALICE.public)
    assert world.get(f"twin/{twin}")["owner"] == "plant-owner"


def test_roles_bound_what_a_principal_may_sign():
    world = registered(World())
    world.fails("not_permitted", MES, "twins", "create", name="Line", device_id="line-1", aml=PLANT)
    world.fails("not_permitted", ALICE, "principals", "register", name="bob", kind="person", key=b"\x44" * 32,
                roles=["administrator"])  # fmt: skip
    world.fails("not_permitted", ALICE, "membership", "propose", change={"op": "remove_organisation", "name": "maker"})
    with pytest.raises(TwinledgerError, match=r"may not call twins\.create"):  # refused before it reaches a block
        world.runtime.check_transaction(world.state, world.tx(MES, "twins", "create",
                                                              {"name": "L", "device_id": "l", "aml": PLANT}))  # fmt: skip
    world.ok(OWNER, "principals", "set_roles", name="mes", roles=["engineer"])
    world.ok(MES, "twins", "create", name="Line", device_id="line-1", aml=PLANT)


def test_an_administrator_principal_manages_principals_and_removal_is_immediate():
    world = registered(World())
    world.ok(OWNER, "principals", "register", name="root", kind="person", key=ADMIN_PERSON.public,
             roles=["administrator"])  # fmt: skip
    world.ok(ADMIN_PERSON, "principals", "remove", name="alice")
    assert world.get(principal_key("plant-owner", "alice"))["status"] == "removed"
    assert organisation_of(world.state, ALICE.public) is None
    world.fails("not_a_member", ALICE, "twins", "create", name="Line", device_id="line-1", aml=PLANT)


def test_registration_refusals():
    world = registered(World())
    world.fails("membership", OWNER, "principals", "register", name="alice", kind="person", key=b"\x45" * 32,
                roles=[])  # fmt: skip
    world.fails("membership", OWNER, "principals", "register", name="carol", kind="person",
                key=key_for("maker").public, roles=[])  # fmt: skip
    world.fails("not_a_member", SigningKey(b"\x46" * 32), "principals", "register", name="eve", kind="person",
                key=b"\x47" * 32, roles=["administrator"])  # fmt: skip
    world.fails("bad_arguments", OWNER, "principals", "register", name="dave", kind="robot", key=b"\x48" * 32,
                roles=[])  # fmt: skip
    world.fails("bad_arguments", OWNER, "principals", "set_roles", name="alice", roles=["superuser"])
    world.fails("membership", key_for("maker"), "principals", "remove", name="alice")  # another organisation's


def test_a_removed_organisations_principals_act_for_nobody():
    from twin_helpers import ADMIN

    world = registered(World())
    world.ok(ADMIN, "membership", "propose", change={"op": "remove_organisation", "name": "plant-owner"})
    assert organisation_of(world.state, ALICE.public) is None
