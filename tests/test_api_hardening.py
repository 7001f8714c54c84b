"""What an adversarial review of the API's authentication found, each kept fixed: scope
and role escalation through the admin API and write tokens, a principal removed on chain
still served, concurrent guessing past the login limit, oversized unauthenticated bodies,
a readable accounts database, streams outliving their credentials, a foreign cookie
hiding the session, and WebSocket upgrades past the guard."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from twinledger.contracts import calls
from twinledger.crypto.keys import SigningKey


@pytest.fixture(scope="module")
def api(running_node):
    node, config, client = running_node
    with httpx.Client(base_url=node.url, timeout=60) as http:
        yield http, node.headers, config, client


def make(api: Any, name: str, scopes: list[str], roles: list[str], **extra: Any) -> dict[str, str]:
    """A principal with a token of its own (its headers)."""
    http, headers, _, _ = api
    made = http.post("/v1/auth/principals", headers=headers,
                     json={"name": name, "kind": "program", "scopes": scopes, "roles": roles, **extra})  # fmt: skip
    assert made.status_code == 201, made.text
    token = http.post("/v1/auth/tokens", headers=headers, json={"principal": name})
    assert token.status_code == 201, token.text
    return {"authorization": f"Bearer {token.json()['token']}"}


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_admin_scope_is_not_operator_power(api):
    http, headers, _, _ = api
    helpdesk = make(api, "helpdesk", ["read", "admin"], ["viewer"])
    for method, path, body in (("GET", "/v1/auth/principals", None),
                               ("POST", "/v1/auth/tokens", {"principal": "operator"}),
                               ("POST", "/v1/auth/principals", {"name": "x1", "kind": "program", "scopes": ["read"],
                                                                "roles": ["administrator"]})):  # fmt: skip
        refused = http.request(method, path, json=body, headers=helpdesk)
        assert refused.status_code == 403 and "no administrator" in refused.json()["error"]["message"], path
    chief = make(api, "chief", ["read", "admin"], ["administrator"])
    assert http.post("/v1/auth/tokens", json={"principal": "operator"}, headers=chief).status_code == 403
    wider = http.post("/v1/auth/principals", headers=chief, json={"name": "x2", "kind": "program",
                                                                    "scopes": ["read", "write"], "roles": []})  # fmt: skip
    assert wider.status_code == 403 and "may give the scopes" in wider.json()["error"]["message"]
    made = http.post("/v1/auth/principals", headers=chief, json={"name": "x3", "kind": "program", "scopes": ["read"],
                                                                   "roles": ["viewer"]})  # fmt: skip
    assert made.status_code == 201, made.text
    assert all(t["principal"] != "operator" for t in http.get("/v1/auth/tokens", headers=chief).json()["tokens"])
    assert any(t["principal"] == "operator" for t in http.get("/v1/auth/tokens", headers=headers).json()["tokens"])


def test_a_viewer_issues_no_write_token_and_changes_no_readers(api):
    http, headers, _, _ = api
    from twinledger.demo import PLANT

    twin = http.post("/v1/twins", headers=headers, json={"name": "L", "device_id": f"l-{os.urandom(3).hex()}",
                                                          "aml": PLANT.read_text()}).json()["id"]  # fmt: skip
    viewer = make(api, "watcher", ["read", "write"], ["viewer"])
    refused = http.post("/v1/write-tokens", headers=viewer, json={"twin": twin, "recipient": "ab" * 32,
                                                                   "methods": ["source.add"],
                                                                   "not_after": int(time.time() * 1000) + 60_000})  # fmt: skip
    assert refused.status_code == 403 and code(refused) == "not_permitted"
    refused = http.post(f"/v1/twins/{twin}/documents/{'00' * 32}/readers", headers=viewer, json={"add": ["acme"]})
    assert refused.status_code == 403 and code(refused) == "not_permitted"


def test_a_principal_removed_on_chain_is_no_longer_served(api):
    http, headers, config, client = api
    bot = make(api, "bot", ["read", "write"], ["engineer"])
    assert http.post("/v1/records", json={"payload": "x"}, headers=bot).status_code == 201
    client.commit(config.signing_key("operator"), *_parts(calls.remove_principal("bot")),
                  http.get("/v1/health").json()["chain_id"], check=True)  # fmt: skip
    refused = http.post("/v1/records", json={"payload": "y"}, headers=bot)
    assert refused.status_code == 401 and "removed on chain" in refused.json()["error"]["message"]
    assert http.get("/v1/auth/whoami", headers=bot).status_code == 401


def _parts(call: calls.ContractCall) -> tuple[str, str, dict[str, Any]]:
    return call.contract, call.method, call.args


def test_concurrent_guesses_count_against_the_login_limit(api):
    http, headers, _, _ = api
    http.post("/v1/auth/principals", headers=headers, json={"name": "frank", "kind": "person", "scopes": ["read"],
                                                              "roles": [], "password": "the right password"})  # fmt: skip
    start = threading.Barrier(12)

    def guess(i: int) -> int:
        start.wait()
        return http.post("/v1/auth/login", json={"name": "frank", "password": f"wrong {i}"}).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(guess, range(12)))
    assert codes.count(401) <= 5 and codes.count(429) >= 7, codes
    assert http.post("/v1/auth/login", json={"name": "frank", "password": "the right password"}).status_code == 429


def test_bodies_are_bounded_before_they_are_read(api):
    http, _, _, _ = api
    huge = http.post("/v1/auth/login", content=b'{"name": "x", "password": "' + b"a" * (1 << 20) + b'"}',
                     headers={"content-type": "application/json"})  # fmt: skip
    assert huge.status_code == 413 and code(huge) == "too_large"


def test_the_accounts_database_is_the_owners_alone(api):
    _, _, config, _ = api
    for path in (config.home / "data").glob("accounts.db*"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_an_event_stream_ends_when_its_principal_is_removed(api):
    http, headers, _, _ = api
    reader = make(api, "screen", ["read"], ["viewer"])
    ended = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{http.base_url}/v1/events", headers=reader, timeout=30) as stream:
            for _ in stream.iter_lines():
                pass
        ended.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert http.delete("/v1/auth/principals/screen", headers=headers).status_code == 200
    assert ended.wait(15), "the stream kept serving a removed principal"


def test_a_foreign_cookie_does_not_hide_the_session(api):
    http, headers, _, _ = api
    http.post("/v1/auth/principals", headers=headers, json={"name": "gina", "kind": "person", "scopes": ["read"],
                                                              "roles": [], "password": "another long password"})  # fmt: skip
    login = http.post("/v1/auth/login", json={"name": "gina", "password": "another long password"})
    session = login.cookies["twinledger_session"]
    cookie = f'prefs={{"theme":"dark"}}; msg=hello world; twinledger_session={session}'
    with httpx.Client(base_url=http.base_url, timeout=30) as browser:
        assert browser.get("/v1/auth/whoami", headers={"cookie": cookie}).json()["name"] == "gina"


def test_websocket_upgrades_are_refused_by_the_guard(api):
    from twinledger.api.auth import Guard

    _, _, config, _ = api
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the application must not see a WebSocket")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    guard = Guard(app, accounts=None, config=config)  # type: ignore[arg-type]
    asyncio.run(guard({"type": "websocket", "path": "/graphql", "headers": []}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_a_program_that_signs_its_own_transactions_gets_no_signature_from_the_node(api):
    http, headers, _, _ = api
    from twinledger.contracts.principals import registration_proof

    own = SigningKey.generate()
    chain_id = http.get("/v1/health").json()["chain_id"]
    proof = registration_proof(own, chain_id, "acme", "byok").hex()
    byok = make(api, "byok", ["read", "write"], ["engineer"], key=own.public.hex(), key_proof=proof)
    refused = http.post("/v1/records", json={"payload": "x"}, headers=byok)
    assert refused.status_code == 403 and "signs its own transactions" in refused.json()["error"]["message"]


def test_second_review_holds(api):
    """Readers at creation need sharing; a role without data appends no sample; an empty
    scope list is capped too; a document whose hash is the dry run's old placeholder does
    not block uploads; bounds hold for JSON paths that end like upload paths, and for
    chunked bodies."""
    import socket

    from twinledger.demo import PLANT

    http, headers, config, client = api
    twin = http.post("/v1/twins", headers=headers, json={"name": "L", "device_id": f"l-{os.urandom(3).hex()}",
                                                          "aml": PLANT.read_text()}).json()["id"]  # fmt: skip
    engineer = make(api, "eng2", ["read", "write"], ["engineer"])
    shared = http.post(f"/v1/twins/{twin}/documents", params={"title": "x", "reader": ["acme"]}, content=b"data",
                       headers=engineer)  # fmt: skip
    assert shared.status_code == 403 and code(shared) == "not_permitted"
    own = http.post(f"/v1/twins/{twin}/documents", params={"title": "x"}, content=b"data", headers=engineer)
    assert own.status_code == 201, own.text

    feed = http.post(f"/v1/twins/{twin}/feeds", json={"component": "level-sensor-1"}, headers=engineer)
    assert feed.status_code == 201, feed.text
    assert http.put("/v1/auth/principals/eng2", headers=headers).status_code in (404, 405)
    chain_id = http.get("/v1/health").json()["chain_id"]
    client.commit(config.signing_key("operator"), *_parts(calls.set_principal_roles("eng2", ["viewer"])), chain_id,
                  check=True)  # fmt: skip
    pushed = http.post(f"/v1/twins/{twin}/feeds/level-sensor-1/samples", json={"samples": [[1, 1.0]]}, headers=engineer)
    assert pushed.status_code == 403 and code(pushed) == "not_permitted"
    assert http.get(f"/v1/twins/{twin}/feeds/level-sensor-1/samples", headers=headers).json()["samples"] == []

    reader_admin = make(api, "half-admin", ["read", "admin"], ["administrator"])
    widened = http.post("/v1/auth/tokens", json={"principal": "eng2"}, headers=reader_admin)
    assert widened.status_code == 403 and "may give the scopes" in widened.json()["error"]["message"]

    client.commit(config.signing_key("operator"), *_parts(calls.add_document(twin, bytes(32), "squat", "", "store:x",
                                                                             "text/plain", 1)), chain_id, check=True)  # fmt: skip
    assert http.post(f"/v1/twins/{twin}/documents", params={"title": "y"}, content=b"more",
                     headers=headers).status_code == 201  # fmt: skip

    with socket.create_connection((http.base_url.host, http.base_url.port)) as raw:
        raw.sendall(f"PUT /v1/twins/{twin}/permissions/documents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"authorization: {headers['authorization']}\r\ncontent-type: application/json\r\n"
                    f"content-length: {200 << 20}\r\n\r\n".encode())  # fmt: skip
        assert raw.recv(200).startswith(b"HTTP/1.1 413")

    def chunks() -> Any:
        yield b'{"name": "x", "password": "'
        for _ in range(64):
            yield b"a" * 1024
        yield b'"}'

    chunked = http.post("/v1/auth/login", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text



def test_a_person_changes_their_password_and_their_sessions_end(api):
    http, headers, _, _ = api
    http.post("/v1/auth/principals", headers=headers, json={"name": "hana", "kind": "person", "scopes": ["read", "write"],
                                                              "roles": ["engineer"], "password": "first password!"})  # fmt: skip
    with httpx.Client(base_url=http.base_url, timeout=30) as browser:
        csrf = browser.post("/v1/auth/login", json={"name": "hana", "password": "first password!"}).json()["csrf"]
        wrong = browser.post("/v1/auth/password", headers={"x-csrf-token": csrf},
                             json={"old_password": "not it at all", "new_password": "second password!"})  # fmt: skip
        assert wrong.status_code == 401
        changed = browser.post("/v1/auth/password", headers={"x-csrf-token": csrf},
                               json={"old_password": "first password!", "new_password": "second password!"})  # fmt: skip
        assert changed.status_code == 200, changed.text
        assert browser.get("/v1/auth/whoami").status_code == 401  # the session ended
        assert browser.post("/v1/auth/login", json={"name": "hana", "password": "first password!"}).status_code == 401
        again = browser.post("/v1/auth/login", json={"name": "hana", "password": "second password!"})
        assert again.status_code == 200
        signed = browser.post("/v1/records", json={"payload": "still my key"},
                              headers={"x-csrf-token": again.json()["csrf"]})  # fmt: skip
        assert signed.status_code == 201, signed.text


def test_x_forwarded_for_does_not_change_who_the_limiter_counts(api):
    """Last in this module: it spends the client address's allowance of failed logins."""
    http, _, _, _ = api
    statuses = [http.post("/v1/auth/login", json={"name": f"nobody-{i}", "password": "guess"},
                          headers={"x-forwarded-for": f"10.0.{i}.1"}).status_code for i in range(22)]  # fmt: skip
    assert 429 in statuses, statuses
