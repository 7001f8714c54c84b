"""Every workflow through the REST API, for an authenticated program with the right
principal roles: the node signs as the program, encrypts and decrypts for the
organisation, and dry-runs each transaction first. Refused — with one clear error and
nothing changed — for a role without the permission, another organisation's principal,
no or a revoked token, a foreign Host and a cross-site Origin."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from network_helpers import Network
from store_helpers import AUDITOR, MAINTAINER, OWNER, store_consortium

from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey
from twinledger.demo import PLANT

FRAGMENT = ('<InternalElement Name="FillLevelSensor2" ID="level-sensor-2"><Attribute Name="Model" '
            'AttributeDataType="xs:string"><Value>LS-300</Value></Attribute></InternalElement>')  # fmt: skip


@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> Iterator[Network]:
    yield from store_consortium(tmp_path_factory.mktemp("api") / "net")


def program(network: Network, i: int, name: str, roles: list[str]) -> httpx.Client:
    """A program principal of organisation i (registered on chain with ``roles``), as an
    API client of its organisation's node holding a token of its own."""
    admin = network.headers(i)
    made = httpx.post(f"{network.url(i)}/v1/auth/principals", headers=admin, timeout=30,
                      json={"name": name, "kind": "program", "scopes": ["read", "write"], "roles": roles})  # fmt: skip
    assert made.status_code == 201, made.text
    token = httpx.post(f"{network.url(i)}/v1/auth/tokens", headers=admin, json={"principal": name}, timeout=30)
    return httpx.Client(base_url=network.url(i), headers={"authorization": f"Bearer {token.json()['token']}"},
                        timeout=60)  # fmt: skip


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    return str(response.json()["error"]["message"])


def test_every_workflow_through_the_rest_api(consortium):
    mes = program(consortium, OWNER, "mes", ["engineer", "data-steward"])
    boss = program(consortium, OWNER, "line-admin", ["administrator"])
    device_id = f"line-{secrets.token_hex(3)}"
    twin = ok(mes.post("/v1/twins", json={"name": "Line", "device_id": device_id, "aml": PLANT.read_text()}), 201)["id"]
    ok(boss.post(f"/v1/twins/{twin}/roles", json={"subject": "maintainer", "role": "maintainer"}))

    ok(mes.post(f"/v1/twins/{twin}/aml/insert", json={"fragment": FRAGMENT, "parent": "filler-1",
                                                      "after": "flow-sensor-1"}))  # fmt: skip
    ok(mes.delete(f"/v1/twins/{twin}/aml/level-sensor-2"))
    ok(mes.post(f"/v1/twins/{twin}/sources", json={"uri": "https://vendor.example/line", "description": "portal"}))
    ok(mes.delete(f"/v1/twins/{twin}/sources", params={"uri": "https://vendor.example/line"}))

    feed = ok(mes.post(f"/v1/twins/{twin}/feeds", json={"component": "level-sensor-1", "attributes": ["type:level"]}),
              201)  # fmt: skip
    assert feed["reference"].startswith("store:")
    start = 1_790_000_000_000_000
    samples = [[start + i * 100_000, 180.0 + i / 10] for i in range(50)]
    pushed = ok(mes.post(f"/v1/twins/{twin}/feeds/level-sensor-1/samples", json={"samples": samples}))
    assert pushed["samples"] == 50
    assert ok(mes.get(f"/v1/twins/{twin}/feeds/level-sensor-1/samples"))["samples"] == samples
    assert ok(mes.get(f"/v1/twins/{twin}/feeds/level-sensor-1/verify"))["intact"]
    assert ok(mes.post(f"/v1/twins/{twin}/feeds/level-sensor-1/rotate"))["epoch"] == 2  # (the revocation makes 3)

    manual = os.urandom(3 * (1 << 20) + 17)  # several chunks, streamed both ways
    added = ok(mes.post(f"/v1/twins/{twin}/documents", params={"title": "Manual", "reader": ["maintainer"],
                                                                "attribute": ["type:manual"]},
                        content=manual, headers={"content-type": "application/octet-stream"}), 201)  # fmt: skip
    document = added["document"]
    assert sorted(added["readers"]) == ["maintainer", "owner"]
    assert mes.get(f"/v1/twins/{twin}/documents/{document}/content").content == manual
    maintainer = httpx.Client(base_url=consortium.url(MAINTAINER), headers=consortium.headers(MAINTAINER), timeout=60)
    auditor = httpx.Client(base_url=consortium.url(AUDITOR), headers=consortium.headers(AUDITOR), timeout=60)
    assert maintainer.get(f"/v1/twins/{twin}/documents/{document}/content").content == manual
    assert auditor.get(f"/v1/twins/{twin}/documents/{document}/content").status_code in (403, 400)
    grant = ok(boss.post("/v1/grants", json={"twin": twin, "to": "auditor", "policy": "type:manual"}), 201)
    assert auditor.get(f"/v1/twins/{twin}/documents/{document}/content").content == manual
    revoked = ok(boss.delete(f"/v1/grants/{grant['grant']}"))
    assert revoked["status"] == "revoked"
    assert revoked["feeds_rotated"] == ["level-sensor-1"], revoked  # the feed mes owns: the node holds its key
    assert auditor.get(f"/v1/twins/{twin}/documents/{document}/content").status_code in (403, 400)
    ok(mes.post(f"/v1/twins/{twin}/documents/{document}/readers", json={"add": ["auditor"]}))
    assert auditor.get(f"/v1/twins/{twin}/documents/{document}/content").content == manual
    version = ok(mes.post(f"/v1/twins/{twin}/documents/{document}/versions", content=b"v2",
                          params={"description": "fixed"}), 201)  # fmt: skip
    assert version["document"] == document
    assert mes.get(f"/v1/twins/{twin}/documents/{document}/content").content == b"v2"
    ok(mes.delete(f"/v1/twins/{twin}/documents/{document}"))

    call = ok(mes.post(f"/v1/twins/{twin}/calls", json={"program": "SetVelocity", "params": {"velocity": "1.0"}}))
    ok(mes.post(f"/v1/twins/{twin}/calls/{call['call']}/report", json={"status": "dispatched"}))
    ok(mes.post(f"/v1/twins/{twin}/calls/{call['call']}/report", json={"status": "executed", "result": "done"}))
    unsafe = refused(mes.post(f"/v1/twins/{twin}/calls", json={"program": "SetVelocity", "params": {"velocity": "3.0"}}),
                     400, "unsafe_parameter")  # fmt: skip
    assert "safe maximum" in unsafe

    recorded = ok(mes.post("/v1/records", json={"payload": "batch 7 passed", "metadata": {"line": "1"}}), 201)
    assert ok(mes.get(f"/v1/records/{recorded['record']}"))["metadata"] == {"line": "1"}

    token = ok(boss.post("/v1/write-tokens", json={"twin": twin, "recipient": "ab" * 32, "methods": ["document.add"],
                                                   "not_after": int(time.time() * 1000) + 3_600_000}), 201)  # fmt: skip
    ok(boss.post("/v1/write-tokens/present", json=token))
    assert ok(boss.post("/v1/write-tokens/revoke", json=token))["status"] == "revoked"

    plc = SigningKey.generate()
    device = {"name": "plc-9", "key": plc.public.hex(), "sharing_key": kpcpre.keygen().public.to_bytes().hex()}
    refused(mes.post(f"/v1/twins/{twin}/devices", json=device), 403, "not_permitted")  # a device gets a role
    assert ok(boss.post(f"/v1/twins/{twin}/devices", json=device), 201)["key"] == plc.public.hex()
    assert ok(boss.delete(f"/v1/twins/{twin}/devices/plc-9"))["status"] == "retired"

    audit = ok(mes.get(f"/v1/twins/{twin}/audit"))["entries"]
    by_method = {e["method"]: e for e in audit}
    assert by_method["twins.create"]["principal"] == "mes" and by_method["twins.create"]["organisation"] == "owner"
    assert by_method["authorization.grant_role"]["principal"] == "line-admin"


def test_refusals_change_nothing(consortium):
    mes = program(consortium, OWNER, "planner", ["engineer"])
    device_id = f"line-{secrets.token_hex(3)}"
    twin = ok(mes.post("/v1/twins", json={"name": "Line", "device_id": device_id, "aml": PLANT.read_text()}), 201)["id"]
    owner = httpx.Client(base_url=consortium.url(OWNER), headers=consortium.headers(OWNER), timeout=60)
    before = ok(owner.get(f"/v1/twins/{twin}"))
    count = len(ok(owner.get("/v1/twins"))["twins"])
    source = {"uri": "https://vendor.example/x", "description": ""}

    message = refused(mes.post(f"/v1/twins/{twin}/roles", json={"subject": "auditor", "role": "auditor"}), 403,
                      "not_permitted")  # fmt: skip
    assert "planner" in message and "authorization.grant_role" in message
    stranger = program(consortium, MAINTAINER, "mt-bot", ["engineer"])
    refused(stranger.post(f"/v1/twins/{twin}/sources", json=source), 403, "forbidden")
    viewer = program(consortium, OWNER, "wallboard", ["viewer"])
    refused(viewer.post(f"/v1/twins/{twin}/sources", json=source), 403, "not_permitted")
    stores = [httpx.get(f"{consortium.url(i)}/v1/store", headers=consortium.headers(i), timeout=30).json()["items"]
              for i in range(4)]  # fmt: skip
    refused(viewer.post(f"/v1/twins/{twin}/documents", params={"title": "x"}, content=os.urandom(1 << 20)), 403,
            "not_permitted")  # fmt: skip
    refused(viewer.post(f"/v1/twins/{twin}/feeds", json={"component": "level-sensor-1"}), 403, "not_permitted")
    assert [httpx.get(f"{consortium.url(i)}/v1/store", headers=consortium.headers(i), timeout=30).json()["items"]
            for i in range(4)] == stores, "a refused upload stored nothing"  # fmt: skip

    anonymous = httpx.Client(base_url=consortium.url(OWNER), timeout=30)
    refused(anonymous.post(f"/v1/twins/{twin}/sources", json=source), 401, "unauthenticated")
    refused(anonymous.post("/v1/twins", json={"name": "x", "device_id": "x", "aml": "<x/>"}), 401, "unauthenticated")
    refused(mes.post(f"/v1/twins/{twin}/sources", json=source, headers={"host": "evil.example"}), 403,
            "host_not_allowed")  # fmt: skip
    refused(mes.post(f"/v1/twins/{twin}/sources", json=source, headers={"origin": "https://evil.example"}), 403,
            "origin_not_allowed")  # fmt: skip
    token_id = ok(owner.get("/v1/auth/tokens", params={"principal": "planner"}))["tokens"][0]["id"]
    ok(owner.delete(f"/v1/auth/tokens/{token_id}"))
    refused(mes.post(f"/v1/twins/{twin}/sources", json=source), 401, "unauthenticated")

    after = ok(owner.get(f"/v1/twins/{twin}"))
    assert {k: v for k, v in after.items() if k != "height"} == {k: v for k, v in before.items() if k != "height"}
    assert len(ok(owner.get("/v1/twins"))["twins"]) == count


def test_roles_membership_and_device_requests_through_the_rest_api(consortium):
    import asyncio
    import threading

    from twinledger.config import load_config
    from twinledger.services import requests as device_requests
    from twinledger.services.access import DeviceKeys
    from twinledger.services.session import Session

    boss = program(consortium, OWNER, "chief", ["administrator"])
    device_id = f"line-{secrets.token_hex(3)}"
    twin = ok(boss.post("/v1/twins", json={"name": "Line", "device_id": device_id, "aml": PLANT.read_text()}), 201)["id"]
    ok(boss.post(f"/v1/twins/{twin}/roles", json={"subject": "maintainer", "role": "maintainer"}))
    ok(boss.put(f"/v1/twins/{twin}/permissions/maintainer", json={"methods": ["document.add"]}))
    assert ok(boss.get(f"/v1/twins/{twin}"))["permissions"]["maintainer"] == ["document.add"]
    ok(boss.delete(f"/v1/twins/{twin}/roles", params={"subject": "maintainer", "role": "maintainer"}))
    assert "org:maintainer" not in ok(boss.get(f"/v1/twins/{twin}"))["roles"]

    newcomer = {"op": "add_organisation", "name": f"supplier-{secrets.token_hex(2)}",
                "operators": [SigningKey.generate().public.hex()], "encryption_key": os.urandom(32).hex()}  # fmt: skip
    proposed = ok(boss.post("/v1/membership/proposals", json={"change": newcomer}))
    assert not proposed["applied"] and proposed["proposal"]
    for i in (MAINTAINER, AUDITOR):
        approver = httpx.Client(base_url=consortium.url(i), headers=consortium.headers(i), timeout=60)
        last = ok(approver.post(f"/v1/membership/proposals/{proposed['proposal']}/approve"))
    assert last["applied"]
    assert newcomer["name"] in [o["name"] for o in ok(boss.get("/v1/members"))["organisations"]]

    plc = DeviceKeys(SigningKey.generate(), kpcpre.keygen())
    ok(boss.post(f"/v1/twins/{twin}/devices", json={"name": "plc", "key": plc.signing.public.hex(),
                                                     "sharing_key": plc.sharing.public.to_bytes().hex()}), 201)  # fmt: skip
    ok(boss.post("/v1/grants", json={"twin": twin, "to": "device:plc", "policy": "req"}), 201)
    asker = httpx.Client(base_url=consortium.url(AUDITOR), headers=consortium.headers(AUDITOR), timeout=90)
    answers: list[httpx.Response] = []
    asking = threading.Thread(target=lambda: answers.append(asker.post(
        "/v1/requests", json={"twin": twin, "payload": "fill level?", "wait": 60})), daemon=True)  # fmt: skip
    asking.start()

    async def answer_on_the_device() -> str:
        async with Session(load_config(consortium.homes[OWNER])) as session:
            for _ in range(300):  # until the proxy has queued the request (each look asks it)
                pending = await device_requests.pending(session, twin, plc)
                if pending:
                    break
                await asyncio.sleep(0.1)
            (proxy, entry), = pending
            assert (entry["requester"], entry["payload"]) == ("auditor", b"fill level?")
            return await device_requests.answer(session, twin, plc, entry["id"].hex(), "41.5 %")

    asyncio.run(answer_on_the_device())
    asking.join(60)
    assert ok(answers[0])["answer"] == "41.5 %"
