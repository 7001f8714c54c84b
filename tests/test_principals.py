"""The principals contract: an organisation's people and programs, each with its own key,
acting for the organisation only within their principal roles — checked at admission and
again when applied — and named in the twin's audit trail."""

from __future__ import annotations

import copy

import pytest
from twin_helpers import PLANT, World, key_for

from twinledger.contracts.membership import member_key, organisation_of
from twinledger.contracts.principals import principal_key, registration_proof
from twinledger.crypto.keys import SigningKey
from twinledger.errors import TwinledgerError

ALICE = SigningKey(b"\x31" * 32)
MES = SigningKey(b"\x32" * 32)
ADMIN_PERSON = SigningKey(b"\x33" * 32)
OWNER = key_for("plant-owner")


def register(world: World, signer: SigningKey, name: str, key: SigningKey, roles: list[str],
             organisation: str = "plant-owner", kind: str = "person") -> None:  # fmt: skip
    proof = registration_proof(key, world.genesis.chain_id, organisation, name)
    world.ok(signer, "principals", "register", name=name, kind=kind, key=key.public, roles=roles, proof=proof)


def registered(world: World) -> World:
    register(world, OWNER, "alice", ALICE, ["engineer"])
    register(world, OWNER, "mes", MES, ["viewer"], kind="program")
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
    bob = SigningKey(b"\x44" * 32)
    world.fails("not_permitted", ALICE, "principals", "register", name="bob", kind="person", key=bob.public,
                roles=["administrator"], proof=registration_proof(bob, world.genesis.chain_id, "plant-owner", "bob"))  # fmt: skip
    world.fails("not_permitted", ALICE, "membership", "propose", change={"op": "remove_organisation", "name": "maker"})
    with pytest.raises(TwinledgerError, match=r"may not call twins\.create"):  # refused before it reaches a block
        args = world._as_client(MES, "create", {"name": "L", "device_id": "l", "aml": PLANT})
        world.runtime.check_transaction(world.state, world.tx(MES, "twins", "create", args))
    world.ok(OWNER, "principals", "set_roles", name="mes", roles=["engineer"])
    world.ok(MES, "twins", "create", name="Line", device_id="line-1", aml=PLANT)


def test_an_administrator_principal_manages_principals_and_removal_is_immediate():
    world = registered(World())
    register(world, OWNER, "root", ADMIN_PERSON, ["administrator"])
    world.ok(ADMIN_PERSON, "principals", "remove", name="alice")
    assert world.get(principal_key("plant-owner", "alice"))["status"] == "removed"
    assert organisation_of(world.state, ALICE.public) is None
    world.fails("not_permitted", ALICE, "twins", "create", name="Line", device_id="line-1", aml=PLANT)


def test_registration_refusals():
    world = registered(World())
    chain = world.genesis.chain_id
    carol, eve = SigningKey(b"\x45" * 32), SigningKey(b"\x46" * 32)
    args = {"kind": "person", "roles": []}
    world.fails("membership", OWNER, "principals", "register", name="alice", key=carol.public,
                proof=registration_proof(carol, chain, "plant-owner", "alice"), **args)  # fmt: skip
    maker = key_for("maker")
    world.fails("membership", OWNER, "principals", "register", name="carol", key=maker.public,
                proof=registration_proof(maker, chain, "plant-owner", "carol"), **args)  # fmt: skip
    world.fails("not_a_member", eve, "principals", "register", name="eve", key=eve.public,
                proof=registration_proof(eve, chain, "plant-owner", "eve"), **args)  # fmt: skip
    world.fails("bad_arguments", OWNER, "principals", "register", name="dave", kind="robot", key=carol.public,
                roles=[], proof=registration_proof(carol, chain, "plant-owner", "dave"))  # fmt: skip
    world.fails("bad_arguments", OWNER, "principals", "set_roles", name="alice", roles=["superuser"])
    world.fails("membership", key_for("maker"), "principals", "remove", name="alice")  # another organisation's


def test_nobody_registers_a_key_it_does_not_hold():
    """A device's, a token recipient's or the consortium administrator's key, which no
    membership entry names, cannot be claimed as a principal without its holder's consent."""
    from twin_helpers import ADMIN

    world = registered(World())
    chain = world.genesis.chain_id
    stolen = registration_proof(SigningKey(b"\x47" * 32), chain, "maker", "squat")  # another key's signature
    world.fails("membership", key_for("maker"), "principals", "register", name="squat", kind="program",
                key=ADMIN.public, roles=["viewer"], proof=stolen)  # fmt: skip
    own = registration_proof(ADMIN, chain, "plant-owner", "squat")  # consent for another organisation and name
    world.fails("membership", key_for("maker"), "principals", "register", name="squat", kind="program",
                key=ADMIN.public, roles=["viewer"], proof=own)  # fmt: skip
    world.ok(ADMIN, "membership", "propose", change={"op": "set_quorum", "quorum": 2})


def test_a_removed_principal_signs_nothing_and_its_write_tokens_die():
    import time

    from twinledger.contracts.authorization import WriteToken

    world = registered(World())
    twin = world.ok(OWNER, "twins", "create", name="Line", device_id="line-1", aml=PLANT).events[0].data["twin"]
    world.ok(OWNER, "authorization", "grant_role", twin=twin, subject=f"key:{MES.public.hex()}", role="maintainer",
             scopes=[])  # fmt: skip
    world.fails("not_permitted", MES, "twins", "add_source", twin=twin, uri="https://x.example", description="")
    outsider = SigningKey(b"\x48" * 32)
    token = WriteToken(world.genesis.chain_id, twin, outsider.public, ("source.add",), (), int(time.time() * 1000)
                       + 3_600_000_000, b"", b"\x07" * 16).signed(MES)  # fmt: skip
    world.fails("bad_token", outsider, "authorization", "present_token", token=token.encoded())  # a viewer issued it
    world.ok(OWNER, "principals", "remove", name="mes")
    world.fails("not_permitted", MES, "twins", "add_source", twin=twin, uri="https://x.example", description="")
    world.fails("not_permitted", MES, "records", "put", payload=b"x")
    assert organisation_of(world.state, MES.public) is None


def test_a_removed_organisations_principals_act_for_nobody_even_if_the_name_returns():
    from twin_helpers import ADMIN

    world = registered(World())
    world.ok(ADMIN, "membership", "propose", change={"op": "remove_organisation", "name": "plant-owner"})
    assert organisation_of(world.state, ALICE.public) is None
    fresh = SigningKey(b"\x49" * 32)
    world.ok(ADMIN, "membership", "propose", change={"op": "add_organisation", "name": "plant-owner",
                                                     "operators": [fresh.public], "encryption_key": b"\x22" * 32})  # fmt: skip
    assert organisation_of(world.state, ALICE.public) is None
    world.fails("not_permitted", ALICE, "twins", "create", name="Line", device_id="line-9", aml=PLANT)


def test_arguments_no_parser_foresaw_are_refused_on_every_node_alike():
    """A list where a role name belongs once raised TypeError past the runtime: one
    Byzantine proposer could stop every honest validator."""
    world = registered(World())
    chain = world.genesis.chain_id
    odd = SigningKey(b"\x50" * 32)
    world.fails("bad_arguments", OWNER, "principals", "register", name="odd", kind="person", key=odd.public,
                roles=[["administrator"]], proof=registration_proof(odd, chain, "plant-owner", "odd"))  # fmt: skip
    world.fails("bad_arguments", OWNER, "principals", "set_roles", name="alice", roles=[{"a": 1}])
    with pytest.raises(TwinledgerError, match=r"roles|malformed"):
        world.runtime.check_transaction(world.state, world.tx(OWNER, "principals", "set_roles",
                                                              {"name": "alice", "roles": [["x"]]}))  # fmt: skip


def test_executing_a_block_twice_gives_the_same_result_and_leaves_the_state_alone():
    """A dry run executes a transaction the node then executes for real: a contract that
    changed a value it read in place (revoking a role did) made the second execution
    differ, and the proposer's block was refused by every other validator."""
    from twin_helpers import VALIDATOR

    from twinledger.core.types import BlockHeader

    world = registered(World())
    twin = world.ok(OWNER, "twins", "create", name="Line", device_id="line-1", aml=PLANT).events[0].data["twin"]
    world.ok(OWNER, "authorization", "grant_role", twin=twin, subject="org:maker", role="maintainer", scopes=[])
    before = copy.deepcopy(world.state.values)
    tx = world.tx(OWNER, "authorization", "revoke_role", {"twin": twin, "subject": "org:maker", "role": "maintainer"})
    header = BlockHeader(world.genesis.chain_id, world.height + 1, world.genesis.genesis_time + 1000 * (world.height + 1),
                         bytes(32), bytes(32), 1, bytes(32), bytes(32), VALIDATOR.public)  # fmt: skip
    first = world.runtime.execute_block(world.state, header, (tx,), world.root)
    second = world.runtime.execute_block(world.state, header, (tx,), world.root)
    assert first.state_root == second.state_root and first.receipts[0].status == "ok"
    assert world.state.values == before


def test_a_data_steward_re_keys_grants_as_it_grants_and_revokes_them():
    """Review: after an expiry every grant and revocation re-keys first, and sharing.rekey
    was no principal action, so stewards could neither grant nor revoke."""
    world = World()
    steward = SigningKey(b"\x45" * 32)
    register(world, OWNER, "steward", steward, ["data-steward"])
    twin = world.create_twin()
    refused = world.call(steward, "sharing", "rekey", twin=twin, rekeys=[[b"\x01" * 32, [b"\x02" * 32]]])
    assert refused.error == "unknown_grant", refused  # the contract's answer, not "not permitted"
    viewer = SigningKey(b"\x46" * 32)
    register(world, OWNER, "viewer", viewer, ["viewer"])
    world.fails("not_permitted", viewer, "sharing", "rekey", twin=twin, rekeys=[[b"\x01" * 32, [b"\x02" * 32]]])
