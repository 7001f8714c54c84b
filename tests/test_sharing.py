"""Grants through proxy nodes on a real four-organisation consortium: the auditor reads
exactly the documents its policy covers, through a proxy of a third organisation that
never holds a data key or plaintext; revocation ends it, for old and new data."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from network_helpers import Network
from store_helpers import AUDITOR, MAINTAINER, MANUFACTURER, OWNER, cli, home, ok, store_consortium, with_client

from twinledger.cli.common import transact
from twinledger.cli.storage import organisation_key
from twinledger.config import load_config
from twinledger.crypto.policy import parse_policy, to_obj
from twinledger.store.client import StoreClient
from twinledger.store.documents import data_key, parse_reference
from twinledger.store.records import StoreError

PLANT = Path(__file__).parent.parent / "examples" / "bottling-plant.aml"
PROXY = "maintainer/node-1"


@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> Iterator[Network]:
    yield from store_consortium(tmp_path_factory.mktemp("sharing") / "net")


@pytest.fixture(scope="module")
def twin(consortium: Network) -> str:
    return str(ok("twin", "create", "--home", home(consortium, OWNER), "--aml", str(PLANT))["id"])


def add(network: Network, twin: str, path: Path, *attributes: str) -> str:
    path.write_bytes(os.urandom(300_000) + path.name.encode())
    options = [option for attribute in attributes for option in ("--attribute", attribute)]
    return str(ok("twin", "doc", "add", twin, str(path), "--home", home(network, OWNER), *options)["document"])


def get(network: Network, i: int, twin: str, document: str, destination: Path):
    return cli("twin", "doc", "get", twin, document, "-o", str(destination), "--home", home(network, i))


def capsule_of(network: Network, twin: str, document: str) -> tuple[bytes, bytes]:
    """(the item's capsule, its data key as the owner opens it)."""
    view = httpx.get(f"{network.url(OWNER)}/v1/twins/{twin}", timeout=10).json()
    reference = next(d for d in view["documents"] if d["id"] == document)["versions"][-1]["reference"]
    item, _ = parse_reference(reference)

    async def work(client: StoreClient):
        return await client.get_acl(item)

    acl = with_client(network, OWNER, work)
    return acl.capsule, data_key(acl, "owner", organisation_key(load_config(network.homes[OWNER])))


def proxy_keys(network: Network) -> list[bytes]:
    with sqlite3.connect(network.homes[MAINTAINER] / "data" / "proxy-keys.db") as db:
        return [row[0] for row in db.execute("SELECT grant_id FROM keys")]


def test_a_grant_lets_the_auditor_read_exactly_what_its_policy_covers(consortium, twin, tmp_path):
    report = add(consortium, twin, tmp_path / "report.txt", "type:report")
    figures = add(consortium, twin, tmp_path / "figures.txt", "type:production")
    refused = get(consortium, AUDITOR, twin, report, tmp_path / "early.txt")
    assert refused.returncode == 1 and "holds no active grant that covers it" in refused.stderr

    granted = ok("grant", "--twin", twin, "--to", "auditor", "--policy", "type:report or type:audit", "--proxy", PROXY,
                 "--home", home(consortium, OWNER))  # fmt: skip
    assert granted["proxies"] == {PROXY: "held"}
    assert granted["policy"] == f"twin:{twin} and (type:audit or type:report)"
    listed = ok("grants", "--twin", twin, "--home", home(consortium, AUDITOR))["grants"]
    assert [(g["id"], g["recipient"], g["status"]) for g in listed] == [(granted["grant"], "auditor", "active")]

    assert get(consortium, AUDITOR, twin, report, tmp_path / "read.txt").returncode == 0
    assert (tmp_path / "read.txt").read_bytes() == (tmp_path / "report.txt").read_bytes()
    for outsider, document in ((AUDITOR, figures), (MANUFACTURER, report), (MAINTAINER, report)):
        denied = get(consortium, outsider, twin, document, tmp_path / "denied.txt")
        assert denied.returncode == 1 and denied.stderr.count("\n") == 1, denied.stderr
        assert not (tmp_path / "denied.txt").exists()

    # The proxy's organisation re-encrypted the key yet holds neither it nor the text anywhere on disk.
    _, secret = capsule_of(consortium, twin, report)
    plaintext = (tmp_path / "report.txt").read_bytes()[:64]
    assert proxy_keys(consortium) == [bytes.fromhex(granted["grant"])]
    for path in consortium.homes[MAINTAINER].rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert secret not in content and plaintext not in content, path


def test_proxies_refuse_everyone_but_the_grant_s_parties(consortium, twin, tmp_path):
    report = add(consortium, twin, tmp_path / "report2.txt", "type:report")
    granted = ok("grant", "--twin", twin, "--to", "auditor", "--policy", "type:report", "--proxy", PROXY,
                 "--home", home(consortium, OWNER))  # fmt: skip
    grant_id = bytes.fromhex(granted["grant"])
    capsule, _ = capsule_of(consortium, twin, report)
    height = httpx.get(f"{consortium.url(OWNER)}/v1/head", timeout=10).json()["height"]

    def ask(i: int, op: str, body: dict, node: str = PROXY) -> StoreError:
        async def work(client: StoreClient):
            target = next(n for n in client.nodes if n.label == node)
            with pytest.raises(StoreError) as refused:
                await client.request(target, op, {**body, "height": height})
            return refused.value

        return with_client(consortium, i, work)

    assert ask(MANUFACTURER, "reencrypt", {"grant": grant_id, "capsule": capsule}).code == "access_denied"
    assert ask(AUDITOR, "reencrypt", {"grant": os.urandom(32), "capsule": capsule}).code == "unknown_grant"
    assert ask(AUDITOR, "reencrypt", {"grant": grant_id, "capsule": capsule[:-1] + b"\x00"}).code == "decryption_failed"
    assert ask(AUDITOR, "reencrypt", {"grant": grant_id, "capsule": capsule},
               node="manufacturer/node-1").code == "no_key"  # a proxy the grant does not name holds nothing
    assert ask(AUDITOR, "proxy_key_put", {"grant": grant_id, "key": b"k" * 100}).code == "access_denied"
    assert ask(OWNER, "proxy_key_put", {"grant": grant_id, "key": b"k" * 100}).code == "key_mismatch"
    assert ask(OWNER, "proxy_key_put", {"grant": grant_id, "key": b"k" * 100},
               node="manufacturer/node-1").code == "access_denied"  # not named by the grant
    assert ask(OWNER, "reencrypt", {"grant": grant_id, "capsule": capsule}).code == "access_denied"


def test_only_the_owner_grants_and_only_confined_to_the_twin(consortium, twin):
    owner = consortium.homes[OWNER]
    args = {"twin": twin, "recipient": "auditor", "policy": ["type:report"], "key_hash": bytes(32),
            "proxies": [PROXY], "valid_until": 0}  # fmt: skip
    confined = to_obj(parse_policy(f"twin:{twin} and type:report"))
    cases = [
        (consortium.homes[AUDITOR], args, "only the owner of twin"),
        (owner, args, "must require twin:"),
        (owner, {**args, "policy": to_obj(parse_policy(f"twin:{twin} or type:report"))}, "must require twin:"),
        (owner, {**args, "policy": confined, "recipient": "owner"}, "another member"),
        (owner, {**args, "policy": confined, "proxies": ["auditor/nope"]}, "not a proxy node"),
        (owner, {**args, "policy": [2, list(reversed(confined[1]))]}, "canonical"),
    ]
    for home_dir, arguments, complaint in cases:
        with pytest.raises(Exception, match=complaint):
            transact(home_dir, None, "sharing", "grant", arguments)
    refused = cli("grant", "--twin", twin, "--to", "auditor", "--policy", "type:report and (", "--home", str(owner))
    assert refused.returncode == 1 and "expected an attribute" in refused.stderr
    refused = cli("grant", "--twin", twin, "--to", "auditor", "--policy", "x", "--until", "2001-01-01", "--home", str(owner))
    assert refused.returncode == 1 and "lies in the past" in refused.stderr


def test_revocation_ends_access_to_old_and_new_data(consortium, twin, tmp_path):
    before = add(consortium, twin, tmp_path / "before.txt", "type:inspection")
    granted = ok("grant", "--twin", twin, "--to", "auditor", "--policy", "type:inspection", "--proxy", PROXY,
                 "--home", home(consortium, OWNER))  # fmt: skip
    assert get(consortium, AUDITOR, twin, before, tmp_path / "ok.txt").returncode == 0
    assert bytes.fromhex(granted["grant"]) in proxy_keys(consortium)

    refused = cli("revoke", granted["grant"][:12], "--home", home(consortium, AUDITOR))
    assert refused.returncode == 1 and "only owner" in refused.stderr
    ok("revoke", granted["grant"][:12], "--home", home(consortium, OWNER))
    again = cli("revoke", granted["grant"][:12], "--home", home(consortium, OWNER))
    assert again.returncode == 1 and "already revoked" in again.stderr

    after = add(consortium, twin, tmp_path / "after.txt", "type:inspection")
    for document in (before, after):
        denied = get(consortium, AUDITOR, twin, document, tmp_path / "no.txt")
        assert denied.returncode == 1 and not (tmp_path / "no.txt").exists()
    assert bytes.fromhex(granted["grant"]) not in proxy_keys(consortium)
    status = {g["id"]: g["status"] for g in ok("grants", "--home", home(consortium, OWNER))["grants"]}
    assert status[granted["grant"]] == "revoked"
    # what the auditor fetched while the grant held, it keeps; everything is under per-item keys
    assert hashlib.sha256((tmp_path / "ok.txt").read_bytes()).digest() == hashlib.sha256(
        (tmp_path / "before.txt").read_bytes()).digest()
