"""The sharing contract on its own: devices of a twin (registered with their keys, given
the device role, retired with their grants) and grants to them."""

from __future__ import annotations

import hashlib

from twin_helpers import World, key_for

from twinledger.contracts.sharing import EXPIRING_KEY, device_key, grant_key, twin_generation
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.policy import parse_policy, to_obj

OWNER = key_for("plant-owner")
DEVICE = SigningKey(hashlib.sha256(b"plc-1").digest())
SHARING = kpcpre.keygen().public.to_bytes()


def grant_args(twin: str, recipient: str) -> dict:
    return {"twin": twin, "recipient": recipient, "policy": to_obj(parse_policy(f"twin:{twin} and kind:sensor")),
            "keys": [bytes(32)], "proxies": ["plant-owner/node-1"], "valid_until": 0}  # fmt: skip


def test_a_device_is_registered_gets_its_role_and_loses_role_and_grants_when_retired() -> None:
    world = World()
    twin = world.create_twin()
    recipient = f"device:{DEVICE.public.hex()}"
    world.fails("bad_recipient", OWNER, "sharing", "grant", **grant_args(twin, recipient))
    world.fails("forbidden", DEVICE, "sharing", "add_device", twin=twin, name="plc-1", key=DEVICE.public,
                sharing_key=SHARING)  # fmt: skip
    world.fails("bad_arguments", OWNER, "sharing", "add_device", twin=twin, name="plc-1", key=DEVICE.public,
                sharing_key=b"\x01" * 96)  # fmt: skip
    world.ok(OWNER, "sharing", "add_device", twin=twin, name="plc-1", key=DEVICE.public, sharing_key=SHARING)
    world.fails("duplicate_device", OWNER, "sharing", "add_device", twin=twin, name="again", key=DEVICE.public,
                sharing_key=SHARING)  # fmt: skip
    world.ok(DEVICE, "twins", "remove_aml", twin=twin, element="level-sensor-1")  # the device-agent role
    assert world.get(f"twin/{twin}/roles")[f"key:{DEVICE.public.hex()}"] == {"device-agent": []}

    world.fails("not_a_proxy", OWNER, "sharing", "grant", **grant_args(twin, recipient))  # no node in this world
    world.state.values["membership/organisation/plant-owner"]["nodes"]["node-1"] = {"roles": ["proxy"]}
    granted = world.ok(OWNER, "sharing", "grant", **grant_args(twin, recipient))
    grant_id = next(e.data["grant"] for e in granted.events if e.type == "AccessGranted")
    assert world.get(grant_key(grant_id))["recipient_key"] == SHARING
    assert world.get(device_key(twin, DEVICE.public))["grants"] == [grant_id]

    world.fails("forbidden", DEVICE, "sharing", "retire_device", twin=twin, key=DEVICE.public)
    retired = world.ok(OWNER, "sharing", "retire_device", twin=twin, key=DEVICE.public)
    assert [e.type for e in retired.events] == ["AccessRevoked", "DeviceRetired"]
    assert world.get(grant_key(grant_id))["status"] == "revoked"
    assert f"key:{DEVICE.public.hex()}" not in world.get(f"twin/{twin}/roles")
    world.fails("forbidden", DEVICE, "twins", "remove_aml", twin=twin, element="capper-1")
    world.fails("unknown_device", OWNER, "sharing", "retire_device", twin=twin, key=DEVICE.public)
    world.fails("bad_recipient", OWNER, "sharing", "grant", **grant_args(twin, recipient))


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def sharing_world() -> tuple[World, str]:
    """A twin of plant-owner; audit-co and maker with sharing keys; proxies at plant-owner and audit-co."""
    world = World()
    twin = world.create_twin()
    for org in ("plant-owner", "audit-co", "maker"):
        entry = world.state.values[f"membership/organisation/{org}"]
        entry["kpcpre_key"] = SHARING
        entry["nodes"]["node-1"] = {"roles": ["proxy"]}
    return world, twin


def org_grant(twin: str, to: str, keys: int = 1, **extra: object) -> dict:
    return {**grant_args(twin, to), "keys": [digest(f"{to}/{n}") for n in range(keys)], **extra}


def grant_id_of(receipt) -> bytes:
    return next(e.data["grant"] for e in receipt.events if e.type == "AccessGranted")


def test_a_grant_s_proxies_never_belong_to_its_recipient() -> None:
    """A recipient holding its own re-encryption key strips the blinding and keeps an ABE
    key for the owner's policy (security review, kp1.py #1): the contract refuses it."""
    world, twin = sharing_world()
    refused = world.fails("proxy_of_recipient", OWNER, "sharing", "grant",
                          **org_grant(twin, "audit-co", proxies=["audit-co/node-1", "plant-owner/node-1"]))  # fmt: skip
    assert "belongs to the recipient audit-co" in refused.message
    world.ok(OWNER, "sharing", "grant", **org_grant(twin, "audit-co", proxies=["maker/node-1"]))


def test_every_ended_grant_starts_a_generation_the_others_are_re_keyed_for() -> None:
    world, twin = sharing_world()
    assert twin_generation(world.state, twin) == 0
    world.fails("bad_arguments", OWNER, "sharing", "grant",
                **org_grant(twin, "audit-co", policy=to_obj(parse_policy(f"twin:{twin} and generation:0"))))  # fmt: skip
    world.fails("wrong_generation", OWNER, "sharing", "grant", **org_grant(twin, "audit-co", keys=2))
    auditor = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "audit-co")))
    maker = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "maker")))

    # revoking the auditor raises the generation and, in the same transaction, re-keys the maker
    world.fails("wrong_generation", OWNER, "sharing", "revoke", grant=auditor, rekeys=[[maker, [digest("a"), digest("b")]]])
    other_twin = world.create_twin(device_id="plant-8")
    elsewhere = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(other_twin, "maker")))
    world.fails("not_rekeyable", OWNER, "sharing", "revoke", grant=auditor, rekeys=[[elsewhere, [digest("a")]]])
    world.fails("not_grant_owner", key_for("maker"), "sharing", "revoke", grant=auditor)
    revoked = world.ok(OWNER, "sharing", "revoke", grant=auditor,  # a key for the grant it ends is no key at all
                       rekeys=[[maker, [digest("maker/1")]], [auditor, [digest("audit-co/1")]]])  # fmt: skip
    assert [e.type for e in revoked.events] == ["AccessRevoked", "AccessRekeyed"]
    assert twin_generation(world.state, twin) == 1
    assert world.get(grant_key(maker))["keys"] == [digest("maker/0"), digest("maker/1")]
    assert world.get(grant_key(auditor))["keys"] == [digest("audit-co/0")]  # never a key for generation 1

    # a new grant covers every generation so far: one key each
    world.fails("wrong_generation", OWNER, "sharing", "grant", **org_grant(twin, "audit-co", keys=1))
    again = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "audit-co", keys=2)))

    # revoked without re-keying: the others lag until the owner re-keys them, once
    world.ok(OWNER, "sharing", "revoke", grant=again)
    assert twin_generation(world.state, twin) == 2
    world.fails("not_twin_owner", key_for("maker"), "sharing", "rekey", twin=twin, rekeys=[[maker, [digest("m2")]]])
    world.fails("bad_arguments", OWNER, "sharing", "rekey", twin=twin, rekeys=[[maker, []]])
    world.ok(OWNER, "sharing", "rekey", twin=twin, rekeys=[[maker, [digest("m2")]]])
    world.fails("wrong_generation", OWNER, "sharing", "rekey", twin=twin, rekeys=[[maker, [digest("m3")]]])
    assert len(world.get(grant_key(maker))["keys"]) == 3


def test_the_first_block_past_a_grant_s_end_ends_it_and_starts_a_generation() -> None:
    world, twin = sharing_world()
    now = world.genesis.genesis_time + 1000 * (world.height + 1)
    short = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "audit-co", valid_until=now + 2500)))
    long = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "maker", valid_until=now + 60_000)))
    assert [entry[1] for entry in world.get(EXPIRING_KEY)] == [short, long]
    world.ok(OWNER, "sharing", "revoke", grant=long)  # an ended grant leaves the list at once
    assert [entry[1] for entry in world.get(EXPIRING_KEY)] == [short]
    assert world.get(grant_key(short))["status"] == "active" and twin_generation(world.state, twin) == 1
    world.create_twin(device_id="plant-8")  # blocks go on; the next one is past the end
    world.create_twin(device_id="plant-9")
    ended = world.get(grant_key(short))
    assert ended["status"] == "expired" and ended["revoked"]["timestamp"] >= now + 2500
    assert twin_generation(world.state, twin) == 2 and world.get(EXPIRING_KEY) == []
    world.fails("already_revoked", OWNER, "sharing", "revoke", grant=short)
