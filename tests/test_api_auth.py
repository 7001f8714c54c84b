"""The API authenticates every request but the health check and the login: API tokens
for programs (scoped, expiring, revocable), login sessions for people (Argon2id
passwords, HttpOnly SameSite=Strict cookies, CSRF tokens, a login rate limit), a Host
allow-list against DNS rebinding and an Origin check on every state-changing request.
Each refusal is one clear error and changes nothing."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from twinledger.contracts.principals import registration_proof
from twinledger.core.types import encode_transaction, sign_transaction
from twinledger.crypto.keys import SigningKey

OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def api(running_node):
    node, config, client = running_node
    with httpx.Client(base_url=node.url, timeout=30) as http:
        yield http, node.headers, config


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def admin_post(api: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    http, headers, _ = api
    response = http.post(path, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_without_credentials_only_the_health_check_answers(api):
    http, headers, _ = api
    assert http.get("/v1/health").status_code == 200
    for path in ("/v1/head", "/v1/twins", "/v1/members", "/openapi.json", "/docs", "/metrics"):
        refused = http.get(path)
        assert refused.status_code == 401 and code(refused) == "unauthenticated", path
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert http.post("/graphql", json={"query": "{ twins { id } }"}).status_code == 401
    assert http.post("/v1/store/repair").status_code == 401
    assert http.get("/v1/head", headers={"authorization": "Bearer tl1.0000.nope"}).status_code == 401
    assert http.get("/v1/auth/whoami", headers=headers).json()["name"] == "operator"


def test_a_foreign_host_header_is_refused_even_with_a_token(api):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    http, headers, _ = api
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
        refused = http.get("/v1/head", headers={**headers, "host": host})
        assert refused.status_code == 403 and code(refused) == "host_not_allowed", host
    assert http.get("/v1/health", headers={"host": "evil.example"}).status_code == 403
    assert http.get("/v1/head", headers={**headers, "host": "localhost"}).status_code == 200


def test_a_cross_site_origin_may_not_change_anything(api):
    http, headers, _ = api
    height = http.get("/v1/head", headers=headers).json()["height"]
    refused = http.post("/v1/store/repair", headers={**headers, "origin": "https://evil.example"})
    assert refused.status_code == 403 and code(refused) == "origin_not_allowed"
    tx = sign_transaction(SigningKey.generate(), chain_id="x", nonce=0, contract="records", method="put",
                          args={"payload": b"x"}, timestamp=0)  # fmt: skip
    refused = http.post("/v1/transactions", content=encode_transaction(tx),
                        headers={**headers, **OCTETS, "origin": "http://localhost.evil.example"})  # fmt: skip
    assert refused.status_code == 403 and code(refused) == "origin_not_allowed"
    same = f"http://{http.base_url.host}:{http.base_url.port}"
    assert http.get("/v1/head", headers={**headers, "origin": "https://evil.example"}).status_code == 200
    assert http.post("/graphql", json={"query": "{ twins { id } }"}, headers={**headers, "origin": same}).status_code == 200
    assert http.get("/v1/head", headers=headers).json()["height"] >= height


def test_program_tokens_are_scoped_expiring_and_revocable(api):
    http, headers, _ = api
    reader = admin_post(api, "/v1/auth/principals", {"name": "dashboard", "kind": "program", "scopes": ["read"],
                                                       "roles": ["viewer"]})  # fmt: skip
    assert reader["key_held_by_node"] and reader["block"] >= 1
    issued = admin_post(api, "/v1/auth/tokens", {"principal": "dashboard", "label": "wallboard"})
    token = {"authorization": f"Bearer {issued['token']}"}
    assert http.get("/v1/twins", headers=token).status_code == 200
    who = http.get("/v1/auth/whoami", headers=token).json()
    assert (who["name"], who["scopes"], who["via"]) == ("dashboard", ["read"], "token")
    for method, path in (("POST", "/v1/store/repair"), ("GET", "/v1/auth/tokens"), ("POST", "/v1/transactions")):
        refused = http.request(method, path, headers=token)
        assert refused.status_code == 403 and code(refused) == "forbidden", path
        assert "lacks the" in refused.json()["error"]["message"]
    wider = http.post("/v1/auth/tokens", json={"principal": "dashboard", "scopes": ["write"]}, headers=headers)
    assert wider.status_code == 400 and "holds the scopes read only" in wider.json()["error"]["message"]
    assert http.delete(f"/v1/auth/tokens/{issued['id']}", headers=headers).json()["status"] == "revoked"
    assert http.get("/v1/twins", headers=token).status_code == 401
    listed = {t["id"]: t for t in http.get("/v1/auth/tokens", headers=headers).json()["tokens"]}
    assert listed[issued["id"]]["revoked"] and "token" not in listed[issued["id"]]

    soon = int(time.time() * 1000) + 1500
    short = admin_post(api, "/v1/auth/tokens", {"principal": "dashboard", "expires": soon})
    short_token = {"authorization": f"Bearer {short['token']}"}
    assert http.get("/v1/twins", headers=short_token).status_code == 200
    time.sleep(max(0.0, soon / 1000 - time.time()) + 0.1)  # the token's lifetime is the feature under test
    assert http.get("/v1/twins", headers=short_token).status_code == 401
    past = http.post("/v1/auth/tokens", json={"principal": "dashboard", "expires": 1}, headers=headers)
    assert past.status_code == 400


def test_a_program_submits_only_transactions_signed_with_its_own_key(api):
    http, headers, config = api
    own = SigningKey.generate()
    chain_id = http.get("/v1/health").json()["chain_id"]
    body = {"name": "mes", "kind": "program", "scopes": ["read", "write"], "roles": ["engineer"], "key": own.public.hex()}
    assert http.post("/v1/auth/principals", json=body, headers=headers).status_code == 400  # no proof it holds the key
    stolen = registration_proof(SigningKey.generate(), chain_id, "acme", "mes").hex()
    assert http.post("/v1/auth/principals", json=body | {"key_proof": stolen}, headers=headers).status_code == 400
    proof = registration_proof(own, chain_id, "acme", "mes").hex()
    admin_post(api, "/v1/auth/principals", body | {"key_proof": proof})
    token = {"authorization": f"Bearer {admin_post(api, '/v1/auth/tokens', {'principal': 'mes'})['token']}"}

    def record(key: SigningKey) -> bytes:
        nonce = http.get(f"/v1/accounts/{key.public.hex()}/nonce", headers=token).json()["next_nonce"]
        return encode_transaction(sign_transaction(key, chain_id=chain_id, nonce=nonce, contract="records",
                                                   method="put", args={"payload": b"reading"},
                                                   timestamp=int(time.time() * 1000)))  # fmt: skip

    refused = http.post("/v1/transactions", content=record(SigningKey.generate()), headers={**token, **OCTETS})
    assert refused.status_code == 403 and "its own key" in refused.json()["error"]["message"]
    accepted = http.post("/v1/transactions", content=record(own), headers={**token, **OCTETS})
    assert accepted.status_code == 202, accepted.text
    committed = http.get(f"/v1/transactions/{accepted.json()['hash']}", params={"wait": 30}, headers=token).json()
    assert committed["receipt"]["status"] == "ok"


def test_people_log_in_with_a_password_and_a_csrf_token(api):
    http, headers, _ = api
    alice = admin_post(api, "/v1/auth/principals", {"name": "alice", "kind": "person", "scopes": ["read", "write"],
                                                     "roles": ["engineer"], "password": "correct horse battery"})  # fmt: skip
    members = http.get("/v1/members", headers=headers).json()
    (entry,) = [p for p in members["principals"] if p["name"] == "alice"]
    assert entry["key"] == alice["key"] and entry["roles"] == ["engineer"] and entry["organisation"] == "acme"
    short = http.post("/v1/auth/principals", json={"name": "bob", "kind": "person", "scopes": ["read"],
                                                   "password": "short"}, headers=headers)  # fmt: skip
    assert short.status_code == 400

    with httpx.Client(base_url=http.base_url, timeout=30) as browser:
        wrong = browser.post("/v1/auth/login", json={"name": "alice", "password": "wrong horse"})
        assert wrong.status_code == 401 and code(wrong) == "unauthenticated" and "twinledger_session" not in browser.cookies
        nobody = browser.post("/v1/auth/login", json={"name": "nobody", "password": "wrong horse"})
        assert nobody.json()["error"]["message"] == wrong.json()["error"]["message"]
        login = browser.post("/v1/auth/login", json={"name": "alice", "password": "correct horse battery"})
        assert login.status_code == 200, login.text
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        csrf = login.json()["csrf"]
        who = browser.get("/v1/auth/whoami").json()
        assert (who["name"], who["via"]) == ("alice", "session")
        refused = browser.post("/v1/store/repair")
        assert refused.status_code == 403 and code(refused) in ("csrf", "forbidden")
        refused = browser.post("/graphql", json={"query": "{ twins { id } }"})
        assert refused.status_code == 403 and code(refused) == "csrf"
        ok = browser.post("/graphql", json={"query": "{ twins { id } }"}, headers={"x-csrf-token": csrf})
        assert ok.status_code == 200
        assert browser.post("/v1/auth/logout", headers={"x-csrf-token": csrf}).status_code == 200
        browser.cookies.clear()
        assert browser.get("/v1/auth/whoami").status_code == 401


def test_failed_logins_are_rate_limited(api):
    http, headers, _ = api
    admin_post(api, "/v1/auth/principals", {"name": "carol", "kind": "person", "scopes": ["read"],
                                            "password": "a long enough password"})  # fmt: skip
    codes = [http.post("/v1/auth/login", json={"name": "carol", "password": f"guess {i}"}).status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    limited = http.post("/v1/auth/login", json={"name": "carol", "password": "a long enough password"})
    assert limited.status_code == 429 and "too many failed logins" in limited.json()["error"]["message"]


def test_the_command_line_manages_principals_and_api_tokens(api, running_node, tmp_path):
    import json
    import subprocess
    import sys

    http, _, config = api

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "twinledger", *args, "--home", str(config.home)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    secret = tmp_path / "password"
    secret.write_text("a password of some length\n")
    made = cli("principal", "add", "dora", "--kind", "person", "--scope", "read", "--role", "viewer",
               "--password-file", str(secret), "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["roles"] == ["viewer"]
    assert http.post("/v1/auth/login", json={"name": "dora", "password": "a password of some length"}).status_code == 200
    bad = cli("principal", "add", "eve", "--scope", "read", "--role", "superuser")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "superuser" in bad.stderr
    assert cli("principal", "add", "robot", "--scope", "read", "--scope", "write", "--role", "engineer").returncode == 0
    token_file = tmp_path / "robot.token"
    issued = cli("api-token", "issue", "--principal", "robot", "--scope", "read", "--out", str(token_file), "--json")
    assert issued.returncode == 0, issued.stderr
    assert token_file.stat().st_mode & 0o777 == 0o600 and "token" not in json.loads(issued.stdout)
    bearer = {"authorization": f"Bearer {token_file.read_text().strip()}"}
    assert http.get("/v1/auth/whoami", headers=bearer).json()["name"] == "robot"
    listed = json.loads(cli("api-token", "list", "--principal", "robot", "--json").stdout)
    assert [t["id"] for t in listed] == [json.loads(issued.stdout)["id"]]
    assert cli("api-token", "revoke", listed[0]["id"]).returncode == 0
    assert http.get("/v1/auth/whoami", headers=bearer).status_code == 401
    assert "robot" in cli("principal", "list").stdout
    removed = cli("principal", "remove", "robot", "--json")
    assert removed.returncode == 0, removed.stderr
    members = http.get("/v1/members", headers=api[1]).json()
    (robot,) = [p for p in members["principals"] if p["name"] == "robot"]
    assert robot["status"] == "removed"


def test_graphql_mutations_run_the_workflows_and_need_the_write_scope(api):
    import secrets

    from twinledger.demo import PLANT

    http, headers, _ = api
    admin_post(api, "/v1/auth/principals", {"name": "grapher", "kind": "program", "scopes": ["read"], "roles": []})
    reader = {"authorization": f"Bearer {admin_post(api, '/v1/auth/tokens', {'principal': 'grapher'})['token']}"}
    create = ("mutation($aml: String!, $device: String!) { createTwin(name: \"Line\", deviceId: $device, aml: $aml) }")
    variables = {"aml": PLANT.read_text(), "device": f"line-{secrets.token_hex(3)}"}
    refused = http.post("/graphql", json={"query": create, "variables": variables}, headers=reader).json()
    assert refused["data"] is None and refused["errors"][0]["extensions"]["code"] == "forbidden"
    assert http.get("/v1/twins", headers=headers).json()["twins"] == [] or all(
        t["device_id"] != variables["device"] for t in http.get("/v1/twins", headers=headers).json()["twins"])

    twin = http.post("/graphql", json={"query": create, "variables": variables}, headers=headers).json()
    twin_id = twin["data"]["createTwin"]
    source = http.post("/graphql", headers=headers, json={"query": 'mutation($t: String!) { addSource(ref: $t, '
                                                                   'uri: "https://vendor.example") { tx block } }',
                                                          "variables": {"t": twin_id}}).json()  # fmt: skip
    assert source.get("data") and source["data"]["addSource"]["block"] >= 1, source
    call = http.post("/graphql", headers=headers, json={"query": 'mutation($t: String!) { callProgram(ref: $t, '
                                                                 'program: "SetVelocity", params: {velocity: "1.0"}) }',
                                                        "variables": {"t": twin_id}}).json()  # fmt: skip
    assert call["data"]["callProgram"] == 1
    unsafe = http.post("/graphql", headers=headers, json={"query": 'mutation($t: String!) { callProgram(ref: $t, '
                                                                   'program: "SetVelocity", params: {velocity: "9"}) }',
                                                          "variables": {"t": twin_id}}).json()  # fmt: skip
    assert unsafe["errors"][0]["extensions"]["code"] == "unsafe_parameter"
    view = http.get(f"/v1/twins/{twin_id}", headers=headers).json()
    assert [s["uri"] for s in view["sources"]] == ["https://vendor.example"] and len(view["calls"]) == 1


def test_a_transaction_names_its_signer_as_the_membership_had_it(api):
    http, headers, _ = api
    admin_post(api, "/v1/auth/principals", {"name": "logger", "kind": "program", "scopes": ["read", "write"],
                                            "roles": ["engineer"]})  # fmt: skip
    token = {"authorization": f"Bearer {admin_post(api, '/v1/auth/tokens', {'principal': 'logger'})['token']}"}
    record = http.post("/v1/records", json={"payload": "shift log"}, headers=token)
    assert record.status_code == 201, record.text
    http.delete("/v1/auth/principals/logger", headers=headers).raise_for_status()
    view = http.get(f"/v1/transactions/{record.json()['record']}", headers=headers).json()
    assert view["signer"] | {"key": ""} == {"key": "", "organisation": "acme", "kind": "principal",
                                            "principal": "logger", "node": ""}  # fmt: skip
