"""The sharing contract on its own: devices of a twin (registered with their keys, given
the device role, retired with their grants) and grants to them."""

from __future__ import annotations

import hashlib

from twin_helpers import ADMIN, World, key_for

from twinledger.contracts import sharing
from twinledger.contracts.sharing import EXPIRY_CURSOR, device_key, expiring_key, grant_key, twin_generation
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
        entry["nodes"]["node-1"] = {"roles": ["proxy"], "signing_key": key_for(f"{org} node").public}
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
    wrong = world.ok(OWNER, "sharing", "rekey", twin=twin, rekeys=[[maker, [digest("m2"), digest("m3")]]])
    assert wrong.events == () and len(world.get(grant_key(maker))["keys"]) == 2  # not this generation's count: passed over
    world.ok(OWNER, "sharing", "rekey", twin=twin, rekeys=[[maker, [digest("m2")]]])
    again = world.ok(OWNER, "sharing", "rekey", twin=twin, rekeys=[[maker, [digest("m3")]]])
    assert [e.type for e in again.events] == [] and len(world.get(grant_key(maker))["keys"]) == 3


def ending(world: World, at: int) -> list[bytes]:
    return [entry[1] for entry in world.get(expiring_key(at // sharing.EXPIRY_MINUTE_MS)) or []]


def test_the_first_block_past_a_grant_s_end_ends_it_and_starts_a_generation() -> None:
    world, twin = sharing_world()
    now = world.genesis.genesis_time + 1000 * (world.height + 1)
    short = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "audit-co", valid_until=now + 2500)))
    long = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "maker", valid_until=now + 3000)))
    assert ending(world, now + 2500) == [short, long] and world.get(EXPIRY_CURSOR) == (now + 2500) // 60_000
    world.ok(OWNER, "sharing", "revoke", grant=long)  # an ended grant leaves its minute at once
    assert ending(world, now + 2500) == [short]
    assert world.get(grant_key(short))["status"] == "active" and twin_generation(world.state, twin) == 1
    world.create_twin(device_id="plant-8")  # blocks go on; the next one is past the end
    world.create_twin(device_id="plant-9")
    ended = world.get(grant_key(short))
    assert ended["status"] == "expired" and ended["revoked"]["timestamp"] >= now + 2500
    assert twin_generation(world.state, twin) == 2 and ending(world, now + 2500) == []
    world.fails("already_revoked", OWNER, "sharing", "revoke", grant=short)


def test_a_block_ends_a_bounded_number_of_grants_and_the_next_ones_the_rest(monkeypatch) -> None:
    """Review: one global list of ends, rewritten per grant and per ended grant, let one
    member make blocks slow (k grants ending together cost k² in one block)."""
    monkeypatch.setattr(sharing, "MAX_ENDED_PER_BLOCK", 2)
    monkeypatch.setattr(sharing, "MAX_ENDING_PER_MINUTE", 5)
    world, twin = sharing_world()
    end = (world.genesis.genesis_time // 60_000 + 2) * 60_000 + 30_000  # one minute, well ahead
    grants = [grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "audit-co", keys=1, valid_until=end)))
              for _ in range(5)]  # fmt: skip
    refused = world.fails("bad_validity", OWNER, "sharing", "grant", **org_grant(twin, "maker", valid_until=end + 1))
    assert "5 grants already end in that minute" in refused.message
    while world.genesis.genesis_time + 1000 * (world.height + 1) < end:
        world.create_twin(device_id=f"filler-{world.height}")  # blocks before the end end nothing
    assert all(world.get(grant_key(g))["status"] == "active" for g in grants)
    statuses = []
    for _ in range(3):
        world.create_twin(device_id=f"after-{world.height}")
        statuses.append(sum(world.get(grant_key(g))["status"] == "expired" for g in grants))
    assert statuses == [2, 4, 5] and twin_generation(world.state, twin) == 5 and ending(world, end) == []


def test_grants_to_an_organisation_that_leaves_end_with_the_next_block() -> None:
    """Review: a removed organisation's grants stayed active and were re-keyed for every
    generation; with a colluding proxy it read on."""
    world, twin = sharing_world()
    auditor = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "audit-co")))
    maker = grant_id_of(world.ok(OWNER, "sharing", "grant", **org_grant(twin, "maker")))
    world.ok(ADMIN, "membership", "propose", change={"op": "remove_organisation", "name": "audit-co"})
    assert world.get(grant_key(auditor))["status"] == "active"  # until the next block begins
    world.create_twin(device_id="plant-8")
    assert world.get(grant_key(auditor))["status"] == "revoked" and world.get(grant_key(maker))["status"] == "active"
    assert twin_generation(world.state, twin) == 1 and world.get("membership/departures") is None
    rekeyed = world.ok(OWNER, "sharing", "rekey", twin=twin, rekeys=[[auditor, [digest("a1")]], [maker, [digest("m1")]]])
    assert [e.data["grant"] for e in rekeyed.events if e.type == "AccessRekeyed"] == [maker]
