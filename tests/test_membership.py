"""The membership contract: administrator and majority changes, self-revocation, and the
effect of membership on twin access."""

from __future__ import annotations

import json

from twin_helpers import ADMIN, PLANT, World, genesis, key_for

from twinledger.contracts.membership import member_key, node_standing, organisation_key, organisations, proposal_key, quorum
from twinledger.crypto.keys import SigningKey
from twinledger.ledger.genesis import Genesis

NEW = SigningKey(b"\x11" * 32)
NEW_ORG = {"op": "add_organisation", "name": "supplier-co", "operators": [NEW.public], "encryption_key": b"\x22" * 32}


def test_genesis_members_and_json_round_trip(tmp_path):
    start = genesis()
    world = World(start)
    assert organisations(world.state) == sorted(o.name for o in start.organisations)
    assert world.get(member_key(key_for("maker").public)) == {"organisation": "maker", "kind": "operator", "node": ""}
    assert quorum(world.state) == 4
    start.write(tmp_path / "genesis.json")
    assert json.loads((tmp_path / "genesis.json").read_text())["admins"] == [ADMIN.public.hex()]
    assert Genesis.read(tmp_path / "genesis.json") == start


def test_a_genesis_that_names_a_validator_key_twice_is_refused(tmp_path):
    """Accepted before: the key counted twice toward every quorum."""
    import dataclasses

    import pytest

    from twinledger.errors import ConfigError

    start = genesis()
    twin = dataclasses.replace(start.validators[0], organisation="twin")
    doubled = dataclasses.replace(start, validators=(*start.validators, twin))
    doubled.write(tmp_path / "genesis.json")
    with pytest.raises(ConfigError, match="validator key twice"):
        Genesis.read(tmp_path / "genesis.json")


def test_an_administrator_changes_membership_alone():
    world = World()
    world.ok(ADMIN, "membership", "propose", change=NEW_ORG)
    assert "supplier-co" in organisations(world.state)
    world.ok(NEW, "twins", "create", name="Pump", device_id="pump-1", aml=PLANT)
    world.ok(ADMIN, "membership", "propose", change={"op": "remove_organisation", "name": "supplier-co"})
    assert world.get(member_key(NEW.public)) is None
    world.fails("not_a_member", NEW, "twins", "create", name="Pump", device_id="pump-2", aml=PLANT)


def test_a_majority_of_organisations_changes_membership():
    world = World()
    receipt = world.ok(key_for("maker"), "membership", "propose", change=NEW_ORG)
    proposal = receipt.events[0].data["proposal"]
    assert "supplier-co" not in organisations(world.state)
    world.fails("membership", key_for("maker"), "membership", "approve", proposal=proposal)
    world.fails("not_a_member", NEW, "membership", "approve", proposal=proposal)
    world.ok(key_for("audit-co"), "membership", "approve", proposal=proposal)
    world.ok(key_for("plant-owner"), "membership", "approve", proposal=proposal)
    assert "supplier-co" not in organisations(world.state)
    world.ok(key_for("outsider"), "membership", "approve", proposal=proposal)
    assert "supplier-co" in organisations(world.state)
    assert world.get(proposal_key(proposal))["status"] == "applied"
    world.fails("membership", key_for("analytics-co"), "membership", "approve", proposal=proposal)


def test_withdrawal_and_stale_proposals():
    world = World()
    proposal = world.ok(key_for("maker"), "membership", "propose", change=NEW_ORG).events[0].data["proposal"]
    world.fails("membership", key_for("audit-co"), "membership", "withdraw", proposal=proposal)
    world.ok(key_for("maker"), "membership", "withdraw", proposal=proposal)
    world.fails("membership", key_for("audit-co"), "membership", "approve", proposal=proposal)


def test_non_members_and_malformed_changes_are_refused():
    world = World()
    world.fails("not_a_member", NEW, "membership", "propose", change=NEW_ORG)
    world.fails("bad_arguments", ADMIN, "membership", "propose", change={"op": "make_me_king"})
    world.fails("bad_arguments", ADMIN, "membership", "propose", change={**NEW_ORG, "operators": [b"short"]})
    world.fails("bad_arguments", ADMIN, "membership", "propose", change={**NEW_ORG, "extra": 1})
    world.fails("membership", ADMIN, "membership", "propose", change={**NEW_ORG, "name": "maker"})
    taken = {**NEW_ORG, "operators": [key_for("maker").public]}
    world.fails("membership", ADMIN, "membership", "propose", change=taken)
    world.fails("membership", ADMIN, "membership", "propose", change={"op": "set_quorum", "quorum": 99})


def test_an_organisation_revokes_its_own_keys_but_not_the_last():
    world = World()
    maker = key_for("maker")
    world.fails("membership", maker, "membership", "revoke_key", key=maker.public)
    world.ok(ADMIN, "membership", "propose", change={"op": "add_operator", "organisation": "maker", "key": NEW.public})
    world.fails("membership", key_for("audit-co"), "membership", "revoke_key", key=NEW.public)
    world.ok(NEW, "membership", "revoke_key", key=maker.public)
    assert world.get(member_key(maker.public)) is None
    assert world.get(organisation_key("maker"))["operators"] == [NEW.public]


def test_nodes_and_the_kpcpre_key_slot():
    world = World()
    node = SigningKey(b"\x33" * 32)
    world.ok(ADMIN, "membership", "propose", change={
        "op": "set_node", "organisation": "maker", "node": "store-1", "signing_key": node.public,
        "encryption_key": b"\x44" * 32, "roles": ["store"], "api": "10.0.0.5:7701", "storage": "10.0.0.5:7702"})  # fmt: skip
    world.ok(ADMIN, "membership", "propose", change={"op": "set_keys", "organisation": "maker",
                                                     "kpcpre_key": b"\x55" * 96})  # fmt: skip
    org = world.get(organisation_key("maker"))
    assert org["nodes"]["store-1"]["storage"] == "10.0.0.5:7702" and org["kpcpre_key"] == b"\x55" * 96
    assert world.get(member_key(node.public))["kind"] == "node"
    world.fails("not_a_member", node, "twins", "create", name="x", device_id="d", aml=PLANT)
    world.fails("bad_arguments", ADMIN, "membership", "propose", change={
        "op": "set_node", "organisation": "maker", "node": "n", "signing_key": node.public,
        "encryption_key": b"\x44" * 32, "roles": ["wizard"]})  # fmt: skip


def test_the_membership_says_which_node_keys_are_peers_and_which_were_removed():
    """What peers check at every handshake and frame (finding 7 of the security review)."""
    world = World()
    node, other = SigningKey(b"\x33" * 32), SigningKey(b"\x66" * 32)
    world.ok(ADMIN, "membership", "propose", change=NEW_ORG)
    world.ok(ADMIN, "membership", "propose", change={
        "op": "set_node", "organisation": "supplier-co", "node": "n", "signing_key": node.public,
        "encryption_key": b"\x44" * 32, "roles": ["full"]})  # fmt: skip
    assert node_standing(world.state, "supplier-co", node.public) == "member"
    assert node_standing(world.state, "maker", node.public) == "refused"  # another organisation's key
    assert node_standing(world.state, "supplier-co", NEW.public) == "refused"  # an operator key is no node
    assert node_standing(world.state, "supplier-co", other.public) == "unknown"  # perhaps added after this state
    world.ok(ADMIN, "membership", "propose", change={"op": "remove_organisation", "name": "supplier-co"})
    assert node_standing(world.state, "supplier-co", node.public) == "refused"
    assert node_standing(world.state, "supplier-co", other.public) == "refused", "a certificate made since the removal"
    world.ok(ADMIN, "membership", "propose", change=NEW_ORG)  # the name comes back: its nodes join again as usual
    assert node_standing(world.state, "supplier-co", other.public) == "unknown"
