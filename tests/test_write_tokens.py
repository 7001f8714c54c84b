"""Write tokens (Armored Twins phase 2 step 2, M1 step 3): the owner's signed leave for a
processing service's key to change a twin's state — which methods, where, until when —
put into force on chain and ended by expiry or revocation."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import pytest
from twin_helpers import ADMIN, World, key_for

from twinledger.contracts.authorization import MAX_TOKEN_LIFE_MS, MAX_TOKENS, WriteToken
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey
from twinledger.errors import TwinledgerError
from twinledger.services.tokens import TokenFile, read_token_file

OWNER = key_for("plant-owner")
SERVICE = SigningKey(hashlib.sha256(b"analytics service").digest())
DOC = hashlib.sha256(b"analysis").digest()
SENSOR = b'<InternalElement Name="FillLevelSensor2" ID="level-sensor-2"/>'


def token(world: World, issuer: SigningKey = OWNER, *, twin: str, methods: tuple[str, ...] = ("document.add",),
          scopes: tuple[str, ...] = (), lasts: int = 60_000, chain: str | None = None) -> WriteToken:  # fmt: skip
    """A token valid until ``lasts`` ms after the next block."""
    not_after = world.genesis.genesis_time + 1000 * (world.height + 1) + lasts
    return WriteToken(chain or world.genesis.chain_id, twin, SERVICE.public, methods, scopes, not_after,
                      issuer.public, os.urandom(16)).signed(issuer)  # fmt: skip


def add_document(world: World, twin: str, code: str | None = None) -> None:
    args = {"twin": twin, "hash": os.urandom(32), "title": "Analysis", "reference": "store:analysis"}
    if code is None:
        world.ok(SERVICE, "twins", "add_document", **args)
    else:
        world.fails(code, SERVICE, "twins", "add_document", **args)


def test_a_service_without_a_token_cannot_write_and_with_one_can() -> None:
    world = World()
    twin = world.create_twin()
    add_document(world, twin, "forbidden")
    issued = token(world, twin=twin)
    receipt = world.ok(SERVICE, "authorization", "present_token", token=issued.encoded())
    assert [e.type for e in receipt.events] == ["TokenPresented"]
    add_document(world, twin)
    world.fails("forbidden", SERVICE, "twins", "add_source", twin=twin, uri="https://erp.example/x")  # not in the token
    log = [world.get(f"twin/{twin}/log/{n:08d}") for n in range(1, 5)]
    assert "authorization.present_token" in [entry["method"] for entry in log if entry]


def test_a_scoped_token_allows_only_inside_its_components() -> None:
    world = World()
    twin = world.create_twin()
    world.ok(SERVICE, "authorization", "present_token",
             token=token(world, twin=twin, methods=("aml.insert",), scopes=("filler-1",)).encoded())  # fmt: skip
    world.ok(SERVICE, "twins", "insert_aml", twin=twin, fragment=SENSOR, parent="filler-1")
    world.fails("forbidden", SERVICE, "twins", "insert_aml", twin=twin, fragment=SENSOR.replace(b"2", b"3"),
                parent="conveyor-1")  # fmt: skip


def test_a_token_ends_when_it_expires() -> None:
    world = World()
    twin = world.create_twin()
    world.ok(SERVICE, "authorization", "present_token", token=token(world, twin=twin, lasts=1500).encoded())
    add_document(world, twin)  # the block after presenting: within the token's time
    add_document(world, twin, "forbidden")  # two blocks on, past it
    world.fails("expired_token", SERVICE, "authorization", "present_token", token=token(world, twin=twin, lasts=-1).encoded())


def test_a_revoked_token_stops_working_and_cannot_come_back() -> None:
    world = World()
    twin = world.create_twin()
    issued = token(world, twin=twin)
    world.ok(SERVICE, "authorization", "present_token", token=issued.encoded())
    world.fails("token_in_force", SERVICE, "authorization", "present_token", token=issued.encoded())
    world.fails("forbidden", SERVICE, "authorization", "revoke_token", twin=twin, token=issued.id,
                recipient=SERVICE.public)  # fmt: skip
    world.ok(OWNER, "authorization", "revoke_token", twin=twin, token=issued.id, recipient=SERVICE.public)
    add_document(world, twin, "forbidden")
    world.fails("revoked_token", SERVICE, "authorization", "present_token", token=issued.encoded())
    world.fails("already_revoked", OWNER, "authorization", "revoke_token", twin=twin, token=issued.id,
                recipient=SERVICE.public)  # fmt: skip


def test_only_who_may_grant_roles_issues_tokens_and_they_stop_when_it_no_longer_may() -> None:
    world = World()
    maintainer = key_for("maintenance-co")
    steward = SigningKey(hashlib.sha256(b"steward").digest())
    twin = world.create_twin(roles={"org:maintenance-co": {"maintainer": []}, f"key:{steward.public.hex()}": {"owner": []}})
    world.fails("bad_token", SERVICE, "authorization", "present_token",
                token=token(world, maintainer, twin=twin).encoded())  # fmt: skip
    world.ok(SERVICE, "authorization", "present_token", token=token(world, steward, twin=twin).encoded())
    add_document(world, twin)
    world.ok(OWNER, "authorization", "revoke_role", twin=twin, subject=f"key:{steward.public.hex()}", role="owner")
    add_document(world, twin, "forbidden")


def test_forged_tampered_and_foreign_tokens_are_refused() -> None:
    world = World()
    twin = world.create_twin()
    other = world.create_twin(device_id="plant-8")
    issued = token(world, twin=twin)
    widened = replace(issued, methods=("document.add", "source.add"))  # signature no longer fits
    world.fails("bad_arguments", SERVICE, "authorization", "present_token", token=widened.encoded())
    forged = replace(issued, issuer=OWNER.public, signature=SERVICE.sign(issued.signing_bytes()))
    world.fails("bad_arguments", SERVICE, "authorization", "present_token", token=forged.encoded())
    world.fails("bad_token", SERVICE, "authorization", "present_token",
                token=token(world, twin=twin, chain="another-chain").encoded())  # fmt: skip
    world.fails("bad_arguments", SERVICE, "authorization", "present_token", token=b"\x00" * 40)
    world.fails("bad_arguments", SERVICE, "authorization", "present_token",
                token=replace(issued, methods=("role.grant",)).signed(OWNER).encoded())  # fmt: skip
    world.ok(SERVICE, "authorization", "present_token", token=issued.encoded())
    add_document(world, other, "forbidden")  # a token for one twin is no leave for another


# -- after the security review of write tokens ----------------------------------------------------


def test_a_revocation_naming_the_wrong_recipient_still_ends_the_token() -> None:
    """Review F1: the revocation mark is what counts at every use, whoever it named."""
    world = World()
    twin = world.create_twin()
    issued = token(world, twin=twin)
    world.ok(SERVICE, "authorization", "present_token", token=issued.encoded())
    world.ok(OWNER, "authorization", "revoke_token", twin=twin, token=issued.id, recipient=key_for("nobody").public)
    add_document(world, twin, "forbidden")


def test_the_token_file_s_fields_are_the_signed_token_s(tmp_path) -> None:
    world = World()
    issued = TokenFile.of(token(world, twin=world.create_twin()))
    path = tmp_path / "token.json"
    path.write_text(json.dumps({**issued.view(), "recipient": key_for("nobody").public.hex()}))
    with pytest.raises(TwinledgerError, match="do not match the signed token"):
        read_token_file(path)
    path.write_text(json.dumps(issued.view()))
    assert read_token_file(path) == issued


def test_a_retired_device_and_a_removed_operator_key_write_through_no_token_and_no_role() -> None:
    """Review F2: retiring a device or removing an operator key left their tokens working."""
    world = World()
    twin = world.create_twin()
    device = SigningKey(hashlib.sha256(b"plc").digest())
    world.ok(OWNER, "sharing", "add_device", twin=twin, name="plc", key=device.public,
             sharing_key=kpcpre.keygen().public.to_bytes())  # fmt: skip
    given = replace(token(world, twin=twin), recipient=device.public).signed(OWNER)
    world.ok(device, "authorization", "present_token", token=given.encoded())
    world.ok(device, "twins", "add_document", twin=twin, hash=os.urandom(32), title="by the device", reference="store:x")
    world.ok(OWNER, "sharing", "retire_device", twin=twin, key=device.public)
    world.fails("forbidden", device, "twins", "add_document", twin=twin, hash=os.urandom(32), title="x", reference="s:x")
    world.fails("revoked_token", device, "authorization", "present_token", token=given.encoded())  # not again
    later = replace(token(world, twin=twin), recipient=device.public).signed(OWNER)
    world.fails("bad_token", device, "authorization", "present_token", token=later.encoded())  # nor a new one

    spare = key_for("plant-owner spare")
    world.ok(ADMIN, "membership", "propose", change={"op": "add_operator", "organisation": "plant-owner", "key": spare.public})
    world.ok(spare, "twins", "add_document", twin=twin, hash=os.urandom(32), title="as an operator", reference="store:y")
    world.ok(OWNER, "authorization", "grant_role", twin=twin, subject=f"key:{spare.public.hex()}", role="maintainer")
    world.ok(spare, "authorization", "present_token", token=replace(token(world, twin=twin), recipient=spare.public)
             .signed(OWNER).encoded())  # fmt: skip
    world.ok(OWNER, "membership", "revoke_key", key=spare.public)
    world.fails("forbidden", spare, "twins", "add_document", twin=twin, hash=os.urandom(32), title="x", reference="s:y")


def test_tokens_are_leave_for_at_most_a_year_and_dead_ones_free_their_slots() -> None:
    """Review F4: an unbounded end was accepted; tokens of an issuer who lost the right
    kept the recipient's slots full."""
    world = World()
    steward = SigningKey(hashlib.sha256(b"steward").digest())
    twin = world.create_twin(roles={f"key:{steward.public.hex()}": {"owner": []}})
    forever = token(world, twin=twin, lasts=MAX_TOKEN_LIFE_MS + 60_000)
    world.fails("bad_token", SERVICE, "authorization", "present_token", token=forever.encoded())
    for _ in range(MAX_TOKENS):
        world.ok(SERVICE, "authorization", "present_token", token=token(world, steward, twin=twin).encoded())
    world.fails("forbidden", SERVICE, "authorization", "present_token", token=token(world, twin=twin).encoded())
    world.ok(OWNER, "authorization", "revoke_role", twin=twin, subject=f"key:{steward.public.hex()}", role="owner")
    presented = world.ok(SERVICE, "authorization", "present_token", token=token(world, twin=twin).encoded())
    (event,) = presented.events
    assert event.data["issuer"] == OWNER.public and event.data["scopes"] == []  # the audit trail says who allowed it
