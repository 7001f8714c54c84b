"""The sharing contract on its own: devices of a twin (registered with their keys, given
the device role, retired with their grants) and grants to them."""

from __future__ import annotations

import hashlib

from twin_helpers import World, key_for

from twinledger.contracts.sharing import device_key, grant_key
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.policy import parse_policy, to_obj

OWNER = key_for("plant-owner")
DEVICE = SigningKey(hashlib.sha256(b"plc-1").digest())
SHARING = kpcpre.keygen().public.to_bytes()


def grant_args(twin: str, recipient: str) -> dict:
    return {"twin": twin, "recipient": recipient, "policy": to_obj(parse_policy(f"twin:{twin} and kind:sensor")),
            "key_hash": bytes(32), "proxies": ["plant-owner/node-1"], "valid_until": 0}  # fmt: skip


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
