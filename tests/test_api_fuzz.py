"""A schema-driven fuzz test over the whole OpenAPI document, authenticated with every
scope: each operation gets requests generated from its own parameter and body schemas
(valid, boundary and junk values), and no answer may be a 5xx; every refusal is the one
error model, {"error": {"code", "message"}}."""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STREAMS = {"/v1/events", "/v1/feeds/{feed}/updates"}
"""Server-Sent Event streams never end by themselves; their parameters are tested in test_twin_node and test_feeds."""
EXAMPLES = 8
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)  # fmt: skip
TEXT = st.one_of(st.text(max_size=40), st.text(string.hexdigits, min_size=0, max_size=70),
                 st.sampled_from(["", "0", "-1", "acme", "..", "%00", "a" * 300, "ab" * 32]))  # fmt: skip


def schema_strategy(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of a JSON schema (the subset FastAPI writes), now and then junk instead."""
    if "$ref" in schema:
        return schema_strategy(components[schema["$ref"].rsplit("/", 1)[1]], components, depth)
    choices = schema.get("anyOf") or schema.get("oneOf")
    if choices:
        return st.one_of([schema_strategy(s, components, depth) for s in choices])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        return TEXT
    if kind == "integer":
        return st.one_of(st.integers(-5, 5), st.integers(-(2**70), 2**70), st.integers(1_700_000_000_000, 1 << 62))
    if kind == "number":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-10, 10))
    if kind == "boolean":
        return st.booleans()
    if kind == "array" and depth < 3:
        item = schema.get("items", {})
        if "prefixItems" in schema:
            return st.tuples(*(schema_strategy(s, components, depth + 1) for s in schema["prefixItems"])).map(list)
        return st.lists(schema_strategy(item, components, depth + 1), max_size=3)
    if kind == "object" and depth < 3:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        fixed = {name: schema_strategy(s, components, depth + 1) for name, s in properties.items() if name in required}
        optional = {name: schema_strategy(s, components, depth + 1) for name, s in properties.items()
                    if name not in required}  # fmt: skip
        return st.fixed_dictionaries(fixed, optional=optional)
    return JSON


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, item in sorted(document["paths"].items())
            for method, operation in sorted(item.items()) if path not in STREAMS]  # fmt: skip


@pytest.fixture(scope="module")
def api(running_node):
    node, _, _ = running_node
    with httpx.Client(base_url=node.url, headers=node.headers, timeout=120) as http:
        yield http, http.get("/openapi.json").json()


def test_the_document_covers_the_workflows(api):
    _, document = api
    paths = set(document["paths"])
    assert {"/v1/twins", "/v1/twins/{ref}/documents", "/v1/twins/{ref}/feeds/{component}/samples", "/v1/grants",
            "/v1/write-tokens", "/v1/auth/login", "/v1/auth/tokens", "/v1/records"} <= paths  # fmt: skip
    assert len(operations(document)) >= 60


def test_digits_that_are_not_ascii_are_bad_requests(api):
    """'²'.isdigit() is true and int('²') raises: a block id of '²' was a server error."""
    http, _ = api
    for path in ("/v1/blocks/%C2%B2", "/v1/blocks/%D9%A3", "/v1/blocks/9223372036854775808"):  # the last: past SQLite
        response = http.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:200])


def test_no_operation_answers_with_a_server_error(api):
    http, document = api
    components = document.get("components", {}).get("schemas", {})
    for method, path, spec in operations(document):
        fuzz(http, components, method, path, spec)


def fuzz(http: httpx.Client, components: dict[str, Any], method: str, path: str, spec: dict[str, Any]) -> None:
    parameters = spec.get("parameters", [])
    body = spec.get("requestBody", {}).get("content", {})

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def request(data: st.DataObject) -> None:
        url, query = path, {}
        for parameter in parameters:
            value = data.draw(schema_strategy(parameter.get("schema", {}), components), label=parameter["name"])
            if parameter["name"] == "wait":
                value = 0  # a valid wait only delays the answer
            if parameter["in"] == "path":
                url = url.replace("{" + parameter["name"] + "}", quote(str(value), safe="") or "x")
            elif parameter["in"] == "query" and (parameter.get("required") or data.draw(st.booleans())):
                query[parameter["name"]] = value if not isinstance(value, (dict, list)) or not value else str(value)
        kwargs: dict[str, Any] = {"params": {k: v for k, v in query.items() if v is not None}}
        if "application/json" in body:
            kwargs["json"] = data.draw(st.one_of(schema_strategy(body["application/json"].get("schema", {}),
                                                                 components), JSON))  # fmt: skip
        elif method in ("POST", "PUT"):
            kwargs["content"] = data.draw(st.binary(max_size=64))
        response = http.request(method, url, **kwargs)
        assert response.status_code < 500, f"{method} {url} {kwargs} -> {response.status_code} {response.text[:300]}"
        if response.status_code >= 400 and not path.startswith("/graphql"):  # GraphQL answers in its own protocol
            assert response.headers.get("content-type", "").startswith("application/json"), (
                f"{method} {url} -> {response.status_code} {response.headers.get('content-type')} {response.text[:200]}")
            error = response.json()["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]

    request()
