"""Grants through proxy nodes on a real four-organisation consortium: the auditor reads
exactly the documents its policy covers, through a proxy of a third organisation that
never holds a data key or plaintext; revocation ends it, for old and new data."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from network_helpers import Network, wait_for
from store_helpers import AUDITOR, MAINTAINER, MANUFACTURER, OWNER, cli, home, ok, store_consortium, with_client
from test_revocation import collude

from twinledger.cli.common import run
from twinledger.config import load_config
from twinledger.contracts.calls import ContractCall
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import EncryptionKey, SigningKey, read_secret_file, write_secret_file
from twinledger.crypto.policy import parse_policy, to_obj
from twinledger.services.remote import sharing_public
from twinledger.sharing.proxy import device_request
from twinledger.sharing.requests import collect_response, make_request, send_request, take_requests
from twinledger.store import feeds
from twinledger.store.client import StoreClient
from twinledger.store.documents import CapsuleKey, data_key, parse_reference
from twinledger.store.feeds import FeedWriter, parse_feed_reference, rotate_feed
from twinledger.store.items import StoreError

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
    view = httpx.get(f"{network.url(OWNER)}/v1/twins/{twin}", headers=network.headers(OWNER), timeout=10).json()
    reference = next(d for d in view["documents"] if d["id"] == document)["versions"][-1]["reference"]
    item, _ = parse_reference(reference)

    async def work(client: StoreClient):
        return await client.get_acl(item)

    acl = with_client(network, OWNER, work)
    return acl.capsule, data_key(acl, "owner", load_config(network.homes[OWNER]).encryption_key())


def proxy_keys(network: Network) -> list[bytes]:
    with sqlite3.connect(network.homes[MAINTAINER] / "data" / "proxy-keys.db") as db:
        return [row[0] for row in db.execute("SELECT DISTINCT grant_id FROM grant_keys")]


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
    height = httpx.get(f"{consortium.url(OWNER)}/v1/head", headers=consortium.headers(OWNER), timeout=10).json()["height"]

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
    assert ask(AUDITOR, "proxy_key_put", {"grant": grant_id, "generation": 0, "key": b"k" * 100}).code == "access_denied"
    assert ask(OWNER, "proxy_key_put", {"grant": grant_id, "generation": 0, "key": b"k" * 100}).code == "key_mismatch"
    assert ask(OWNER, "proxy_key_put", {"grant": grant_id, "generation": 5, "key": b"k" * 100}).code == "key_mismatch"
    assert ask(OWNER, "proxy_key_put", {"grant": grant_id, "key": b"k" * 100}).code == "bad_request"
    assert ask(OWNER, "proxy_key_put", {"grant": grant_id, "generation": 0, "key": b"k" * 100},
               node="manufacturer/node-1").code == "access_denied"  # not named by the grant
    assert ask(OWNER, "reencrypt", {"grant": grant_id, "capsule": capsule}).code == "access_denied"


def test_only_the_owner_grants_and_only_confined_to_the_twin(consortium, twin):
    owner = consortium.homes[OWNER]
    args = {"twin": twin, "recipient": "auditor", "policy": ["type:report"], "keys": [bytes(32)],
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
            run(home_dir, lambda session, a=arguments: session.transact(ContractCall("sharing", "grant", a)))
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


def grant_keys(network: Network, grant: str) -> dict[int, bytes]:
    """The keys a grant's proxy holds, by generation: what a colluding proxy hands its recipient."""
    with sqlite3.connect(network.homes[MAINTAINER] / "data" / "proxy-keys.db") as db:
        return dict(db.execute("SELECT generation, key FROM grant_keys WHERE grant_id = ?", (bytes.fromhex(grant),)))


def test_a_revoked_recipient_with_its_proxy_s_keys_opens_nothing_written_afterwards(consortium, tmp_path):
    """kp1.py #1: the auditor and the proxy collude; the other grantee keeps reading."""
    twin = ok("twin", "create", "--home", home(consortium, OWNER), "--aml", str(PLANT), "--device-id", "plant-kp1")["id"]
    before = add(consortium, twin, tmp_path / "before.txt", "type:spec")
    grant = {to: ok("grant", "--twin", twin, "--to", to, "--policy", "type:spec", "--proxy", PROXY,
                    "--home", home(consortium, OWNER))["grant"] for to in ("auditor", "manufacturer")}  # fmt: skip
    stolen = kpcpre.ReEncryptionKey.from_bytes(grant_keys(consortium, grant["auditor"])[0])
    auditor_secret = load_config(consortium.homes[AUDITOR]).sharing_key()

    revoked = ok("revoke", grant["auditor"], "--home", home(consortium, OWNER))
    assert revoked["generation"] == 1 and revoked["rekeyed"] == {grant["manufacturer"]: {PROXY: "held"}}
    after = add(consortium, twin, tmp_path / "after.txt", "type:spec")

    # the other grantee reads old and new data; the revoked one neither, through any proxy
    for document in (before, after):
        assert get(consortium, MANUFACTURER, twin, document, tmp_path / f"m-{document}").returncode == 0
        assert get(consortium, AUDITOR, twin, document, tmp_path / f"a-{document}").returncode == 1
    assert set(grant_keys(consortium, grant["manufacturer"])) == {0, 1} and grant_keys(consortium, grant["auditor"]) == {}

    # with the key the proxy kept, the auditor opens what was written before, without a
    # proxy — and nothing written after
    old_capsule, old_key = capsule_of(consortium, twin, before)
    new_capsule, new_key = capsule_of(consortium, twin, after)
    assert collude(stolen, auditor_secret, kpcpre.Ciphertext.from_bytes(old_capsule)) == old_key
    fresh = kpcpre.Ciphertext.from_bytes(new_capsule)
    assert "generation:1" in fresh.attributes and collude(stolen, auditor_secret, fresh) is None
    assert collude(stolen, auditor_secret, fresh, ("generation:0",)) != new_key


def test_an_expired_grant_is_ended_by_the_chain_and_the_others_are_re_keyed(consortium, tmp_path):
    twin = ok("twin", "create", "--home", home(consortium, OWNER), "--aml", str(PLANT), "--device-id", "plant-exp")["id"]
    until = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    short = ok("grant", "--twin", twin, "--to", "auditor", "--policy", "type:spec", "--until", until, "--proxy", PROXY,
               "--home", home(consortium, OWNER))["grant"]  # fmt: skip
    lasting = ok("grant", "--twin", twin, "--to", "manufacturer", "--policy", "type:spec", "--proxy", PROXY,
                 "--home", home(consortium, OWNER))["grant"]  # fmt: skip

    def status() -> dict[str, dict]:
        return {g["id"]: g for g in ok("grants", "--twin", twin, "--home", home(consortium, OWNER))["grants"]}

    # past its end it is listed expired at once (the finding: "an expired grant still shows active"), and the
    # next block ends it on chain
    ended = wait_for(lambda: status()[short].get("revoked") and status()[short], "the chain to end the grant")
    assert ended["status"] == "expired" and ended["revoked"]["timestamp"] >= ended["valid_until"]
    assert ok("twin", "show", twin, "--home", home(consortium, OWNER))["generation"] == 1
    assert len(status()[lasting]["keys"]) == 1, "not re-keyed yet: the owner's key is needed"

    # until the owner re-keys, data of the new generation waits for the lasting grant
    after = add(consortium, twin, tmp_path / "after.txt", "type:spec")
    assert get(consortium, MANUFACTURER, twin, after, tmp_path / "early.txt").returncode == 1
    rekeyed = ok("rekey", twin, "--home", home(consortium, OWNER))
    assert rekeyed["rekeyed"] == {lasting: {PROXY: "held"}} and len(status()[lasting]["keys"]) == 2
    assert ok("rekey", twin, "--home", home(consortium, OWNER))["rekeyed"] == {}
    assert get(consortium, MANUFACTURER, twin, after, tmp_path / "late.txt").returncode == 0
    assert get(consortium, AUDITOR, twin, after, tmp_path / "never.txt").returncode == 1


def test_who_reads_what_typos_are_caught_and_a_grant_is_previewed(consortium, tmp_path):
    """The finding: policies and attributes with typos were accepted and covered nothing,
    nothing showed what a grant covers or who reads an item, doc list hid attributes."""
    owner = ["--home", home(consortium, OWNER)]
    twin = ok("twin", "create", *owner, "--aml", str(PLANT), "--device-id", "plant-who")["id"]
    report = add(consortium, twin, tmp_path / "report.txt", "type:report")
    add(consortium, twin, tmp_path / "quality.txt", "type:quality", "line:7")
    ok("twin", "feed", "add", twin, "level-sensor-1", *owner, "--attribute", "type:level")

    for given, meant in (("typereport", "type:report"), ("type=report", "type:report"), ("typ:report", "type:report")):
        refused = cli("twin", "doc", "add", twin, str(tmp_path / "report.txt"), "--attribute", given, *owner)
        assert refused.returncode == 1 and f"did you mean '{meant}'" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1
    listed = ok("twin", "doc", "list", twin, *owner)
    assert sorted(d["title"] for d in listed) == ["quality.txt", "report.txt"], "nothing stored by a refused add"
    assert {d["title"]: sorted(d["attributes"]) for d in listed}["quality.txt"] == \
        sorted(["kind:document", "line:7", "type:quality", f"twin:{twin}"])  # fmt: skip
    piped = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # as a shell pipe has it (pytest sets 80)
    table = subprocess.run([sys.executable, "-m", "twinledger", "twin", "doc", "list", twin, *owner], env=piped,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert table.returncode == 0 and "line:7 type:quality" in table.stdout and report in table.stdout, "whole, off a tty"

    preview = ok("grant", "--twin", twin, "--to", "auditor", "--policy", "type:report or type:level", "--dry-run", *owner)
    assert sorted(i["name"] for i in preview["covered"]) == ["level-sensor-1", "report.txt v1"]
    assert [i["name"] for i in preview["not_covered"]] == ["quality.txt v1"] and preview["unmatched"] == []
    assert ok("grants", "--twin", twin, *owner)["grants"] == [], "a dry run makes nothing"
    for policy, complaint in (("typ:quality", "did you mean 'type:quality'"), ("type=quality", "did you mean 'type:quality'"),
                              ("shfit:night", "attribute key 'shfit' is in no item"), ("quality", "is not KEY:VALUE")):
        refused = cli("grant", "--twin", twin, "--to", "auditor", "--policy", policy, "--proxy", PROXY, *owner)
        assert refused.returncode == 1 and complaint in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    declared = ok("grant", "--twin", twin, "--to", "auditor", "--policy", "shfit:night", "--declare", "shfit", "--dry-run",
                  *owner)  # fmt: skip
    assert declared["covered"] == [] and declared["unmatched"] == ["shfit:night"]

    made = ok("grant", "--twin", twin, "--to", "auditor", "--policy", "type:report", "--proxy", PROXY, *owner)
    assert made["covered"] == ["report.txt v1"] and made["unmatched"] == []
    view = {i["name"]: i for i in ok("access", twin, *owner)["items"]}
    assert view["report.txt v1"]["readers"] == ["owner"]
    assert [(g["recipient"], g["status"], g["grant"]) for g in view["report.txt v1"]["grants"]] == \
        [("auditor", "active", made["grant"])]  # fmt: skip
    assert view["quality.txt v1"]["grants"] == [] and view["level-sensor-1"]["grants"] == []
    shown = cli("access", twin, *owner)
    assert shown.returncode == 0 and "auditor" in shown.stdout and "active" in shown.stdout


def samples(path: Path, count: int, start: int) -> Path:
    path.write_text("time,value\n" + "".join(f"{(start + i * 10_000) / 1e6:.6f},{i}\n" for i in range(count)))
    return path


def test_a_feed_is_shared_by_grant_and_gets_a_new_key_when_the_grant_is_revoked(consortium, tmp_path):
    twin = ok("twin", "create", "--home", home(consortium, OWNER), "--aml", str(PLANT), "--device-id", "plant-feed")["id"]
    ok("twin", "feed", "add", twin, "level-sensor-1", "--home", home(consortium, OWNER), "--attribute", "type:level")
    start = 1_790_000_000_000_000
    ok("twin", "feed", "push", twin, "level-sensor-1", str(samples(tmp_path / "a.csv", 300, start)),
       "--home", home(consortium, OWNER))  # fmt: skip
    denied = cli("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, AUDITOR))
    assert denied.returncode == 1 and "holds no active grant" in denied.stderr

    granted = ok("grant", "--twin", twin, "--to", "auditor", "--policy", "kind:sensor and type:level",
                 "--proxy", PROXY, "--home", home(consortium, OWNER))  # fmt: skip
    read = ok("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, AUDITOR))
    assert [value for _, value in read["samples"]] == list(range(300))

    revoked = ok("revoke", granted["grant"], "--home", home(consortium, OWNER))
    assert revoked["feeds_rotated"] == ["level-sensor-1"] and revoked["feeds_not_rotated"] == {}
    ok("twin", "feed", "push", twin, "level-sensor-1", str(samples(tmp_path / "b.csv", 200, start + 10**8)),
       "--home", home(consortium, OWNER))  # fmt: skip
    assert cli("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, AUDITOR)).returncode == 1

    # the owner reads both epochs, each segment with its own key, and the history verifies
    everything = ok("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, OWNER))
    assert [value for _, value in everything["samples"]] == list(range(300)) + list(range(200))
    verified = ok("twin", "feed", "verify", twin, "level-sensor-1", "--home", home(consortium, OWNER))
    assert verified["intact"] and verified["segments_opened"]

    # the revoked party could not open the new epoch even with every key it ever received
    view = httpx.get(f"{consortium.url(OWNER)}/v1/twins/{twin}", headers=consortium.headers(OWNER), timeout=10).json()
    item = parse_feed_reference(view["feeds"][0]["reference"])

    async def epochs(client: StoreClient):
        acl = await client.get_acl(item)
        updates = await client.feed_updates(acl)
        return acl, {u.key_commitment for u in updates}

    acl, commitments = with_client(consortium, OWNER, epochs)
    assert len(acl.retired) == 1 and len(commitments) == 2 and acl.retired[0].commitment in commitments

    # a new grant later shares the whole history again: old data, no device touched
    ok("grant", "--twin", twin, "--to", "auditor", "--policy", "type:level", "--proxy", PROXY,
       "--home", home(consortium, OWNER))  # fmt: skip
    again = ok("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, AUDITOR))
    assert [value for _, value in again["samples"]] == list(range(300)) + list(range(200))


def test_a_running_writer_adopts_the_epoch_a_revocation_started(consortium, tmp_path, monkeypatch):
    twin = ok("twin", "create", "--home", home(consortium, OWNER), "--aml", str(PLANT), "--device-id", "plant-writer")["id"]
    ok("twin", "feed", "add", twin, "level-sensor-1", "--home", home(consortium, OWNER))
    view = httpx.get(f"{consortium.url(OWNER)}/v1/twins/{twin}", headers=consortium.headers(OWNER), timeout=10).json()
    item = parse_feed_reference(view["feeds"][0]["reference"])
    config = load_config(consortium.homes[OWNER])
    owner, key = config.signing_key("operator"), config.encryption_key()
    monkeypatch.setattr(feeds, "ACL_REFRESH", 0.0)

    async def work(client: StoreClient):
        running = await FeedWriter.open(client, owner, "owner", key, item)
        running.extend([(1_790_000_000_000_000 + i, float(i)) for i in range(10)])
        first = (await running.flush())[0]
        public = sharing_public(members(consortium), "owner")
        assert public is not None

        async def now() -> CapsuleKey:
            return CapsuleKey(public, 0)

        await rotate_feed(client, owner, "owner", key, item, now)
        running.extend([(1_790_000_001_000_000 + i, float(i)) for i in range(10)])
        second = (await running.flush())[0]
        return first, second, await client.get_acl(item)

    first, second, acl = with_client(consortium, OWNER, work)
    assert first.key_commitment != second.key_commitment
    assert acl.retired[0].commitment == first.key_commitment


def members(network: Network) -> dict:
    return httpx.get(f"{network.url(OWNER)}/v1/members", headers=network.headers(OWNER), timeout=10).json()


def test_a_processing_service_writes_only_with_a_token_from_the_owner(consortium, twin, tmp_path):
    service = SigningKey.generate()
    key_file = tmp_path / "service.key"
    write_secret_file(key_file, "ed25519", service.seed)
    owner = home(consortium, OWNER)

    def add_source(uri: str):
        return cli("twin", "source", "add", twin, uri, "--home", owner, "--key", str(key_file))

    refused = add_source("https://analytics.example/a")
    assert refused.returncode == 1 and "no valid write token" in refused.stderr
    issued = ok("token", "issue", "--home", owner, "--twin", twin, "--to", service.public.hex(), "--method",
                "source.add", "--until", (datetime.now(UTC) + timedelta(days=60)).isoformat(),
                "--out", str(tmp_path / "t.json"))  # fmt: skip
    assert issued["methods"] == ["source.add"] and issued["recipient"] == service.public.hex()
    assert add_source("https://analytics.example/b").returncode == 1  # issued is not yet in force
    ok("token", "present", str(tmp_path / "t.json"), "--home", owner, "--key", str(key_file))
    assert add_source("https://analytics.example/c").returncode == 0
    removal = cli("twin", "source", "remove", twin, "https://analytics.example/c", "--home", owner, "--key", str(key_file))
    assert removal.returncode == 1  # only what the token names
    stolen = cli("token", "revoke", str(tmp_path / "t.json"), "--home", home(consortium, AUDITOR))
    assert stolen.returncode == 1 and "may not role.revoke" in stolen.stderr
    ok("token", "revoke", str(tmp_path / "t.json"), "--home", owner)
    assert add_source("https://analytics.example/d").returncode == 1
    again = cli("token", "present", str(tmp_path / "t.json"), "--home", owner, "--key", str(key_file))
    assert again.returncode == 1 and "was revoked" in again.stderr


def test_a_replaced_device_recovers_the_twin_s_state_through_its_own_grant(consortium, tmp_path):
    owner = home(consortium, OWNER)
    twin = ok("twin", "create", "--home", owner, "--aml", str(PLANT), "--device-id", "plant-m3")["id"]
    old = ok("device", "add", "--twin", twin, "--name", "plc-1", "--out", str(tmp_path / "plc-1"), "--home", owner)
    ok("grant", "--twin", twin, "--to", "device:plc-1", "--policy", "kind:sensor", "--proxy", PROXY, "--home", owner)
    # the device keeps the twin in sync: it owns and writes the level sensor's feed
    device_key = str(tmp_path / "plc-1" / "device.key")
    ok("twin", "feed", "add", twin, "level-sensor-1", "--home", owner, "--key", device_key)
    ok("twin", "feed", "push", twin, "level-sensor-1", str(samples(tmp_path / "m3.csv", 250, 1_790_000_000_000_000)),
       "--home", owner, "--key", device_key)  # fmt: skip
    written = ok("twin", "feed", "read", twin, "level-sensor-1", "--home", owner, "--device", str(tmp_path / "plc-1"))
    assert len(written["samples"]) == 250

    # plc-1 is stolen: retire it (role and grants end), register plc-2 with new keys and a grant of its own
    retired = ok("device", "retire", "plc-1", "--twin", twin, "--home", owner)
    assert retired["grants_ended"] == 1
    lost = cli("twin", "feed", "read", twin, "level-sensor-1", "--home", owner, "--device", str(tmp_path / "plc-1"))
    assert lost.returncode == 1 and "holds no active grant" in lost.stderr
    removal = cli("twin", "feed", "remove", twin, "level-sensor-1", "--home", owner, "--key", device_key)
    assert removal.returncode == 1 and "may not feed.remove" in removal.stderr
    new = ok("device", "add", "--twin", twin, "--name", "plc-2", "--out", str(tmp_path / "plc-2"), "--home", owner)
    assert new["key"] != old["key"]
    ok("grant", "--twin", twin, "--to", "device:plc-2", "--policy", "kind:sensor", "--proxy", PROXY, "--home", owner)
    recovered = ok("twin", "feed", "read", twin, "level-sensor-1", "--home", owner, "--device", str(tmp_path / "plc-2"))
    assert recovered["samples"] == written["samples"]  # no key left the old device

    listing = ok("device", "list", "--twin", twin, "--home", owner)
    assert sorted((d["name"], d["status"]) for d in listing) == [("plc-1", "retired"), ("plc-2", "active")]

    # the proxy re-encrypts for a device only on that device's signature, sent through its owner's nodes
    grant = next(g for g in ok("grants", "--twin", twin, "--home", owner)["grants"] if g["status"] == "active")
    view = httpx.get(f"{consortium.url(OWNER)}/v1/twins/{twin}", headers=consortium.headers(OWNER), timeout=10).json()
    item = parse_feed_reference(view["feeds"][0]["reference"])
    height = httpx.get(f"{consortium.url(OWNER)}/v1/head", headers=consortium.headers(OWNER), timeout=10).json()["height"]

    async def fetch_capsule(client: StoreClient) -> bytes:
        return (await client.get_acl(item)).capsule

    capsule = with_client(consortium, OWNER, fetch_capsule)

    def ask(i: int, signer: SigningKey | None) -> str:
        async def work(client: StoreClient) -> str:
            body = {"grant": bytes.fromhex(grant["id"]), "capsule": capsule, "height": height}
            if signer is not None:
                body["device_signature"] = signer.sign(device_request(body["grant"], capsule, height))
            proxy = next(n for n in client.nodes if n.label == PROXY)
            try:
                await client.request(proxy, "reencrypt", body)
            except StoreError as exc:
                return exc.code
            return "ok"

        return with_client(consortium, i, work)

    plc2 = SigningKey(read_secret_file(tmp_path / "plc-2" / "device.key", "ed25519"))
    assert ask(OWNER, plc2) == "ok"
    assert ask(OWNER, None) == "access_denied"
    assert ask(OWNER, SigningKey.generate()) == "access_denied"
    assert ask(AUDITOR, plc2) == "access_denied"  # not through the owner's nodes


def test_an_external_request_reaches_the_chosen_device_and_only_the_requester_reads_the_answer(consortium, tmp_path):
    owner = home(consortium, OWNER)
    twin = ok("twin", "create", "--home", owner, "--aml", str(PLANT), "--device-id", "plant-req")["id"]
    plc = tmp_path / "plc"
    ok("device", "add", "--twin", twin, "--name", "plc", "--out", str(plc), "--home", owner)
    routing = ok("grant", "--twin", twin, "--to", "device:plc", "--policy", "req", "--proxy", PROXY, "--home", owner)
    assert routing["policy"] == f"req and twin:{twin}"

    # the CLI end to end: the auditor asks, the device answers, the auditor reads the answer
    asking = subprocess.Popen([sys.executable, "-m", "twinledger", "request", "send", "--twin", twin, "--payload",
                               "fill level?", "--wait", "120", "--json", "--home", home(consortium, AUDITOR)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for _ in range(60):  # until the proxy has queued the request (each look is a CLI run)
            pending = ok("device", "requests", "--twin", twin, "--device", str(plc), "--home", owner)
            if pending:
                break
        assert [(p["requester"], p["payload"]) for p in pending] == [("auditor", "fill level?")]
        ok("device", "respond", pending[0]["id"][:12], "--twin", twin, "--device", str(plc), "--answer", "41.5 %",
           "--home", owner)  # fmt: skip
        stdout, stderr = asking.communicate(timeout=120)
    finally:
        asking.kill()
    assert asking.returncode == 0, stderr
    assert json.loads(stdout)["answer"] == "41.5 %"

    # and the rules, over the protocol
    members = httpx.get(f"{consortium.url(OWNER)}/v1/members", headers=consortium.headers(OWNER), timeout=10).json()
    owner_key = sharing_public(members, "owner")
    height = httpx.get(f"{consortium.url(OWNER)}/v1/head", headers=consortium.headers(OWNER), timeout=10).json()["height"]

    def send(i: int, request, target: str = twin) -> str:
        async def work(client: StoreClient) -> str:
            try:
                await send_request(client, [PROXY], target, request, height)
            except StoreError as exc:
                return exc.code
            return "queued"

        return with_client(consortium, i, work)

    first, _ = make_request(owner_key, twin, 0, b"status?")
    assert send(MANUFACTURER, first) == "queued"
    assert send(MANUFACTURER, first) == "replayed_request"
    codes = [send(MANUFACTURER, make_request(owner_key, twin, 0, b"again?")[0]) for _ in range(20)]
    assert codes[:18] == ["queued"] * 18 and codes[-1] == "rate_limited"  # 20 a minute per organisation and twin
    forged = replace(make_request(owner_key, twin, 0, b"x")[0], body=os.urandom(64))
    assert send(AUDITOR, forged) == "queued"  # the proxy cannot see inside; the device finds it does not open
    listed = ok("device", "requests", "--twin", twin, "--device", str(plc), "--home", owner)
    assert any(entry["payload"] is None and entry["requester"] == "auditor" for entry in listed)
    other = ok("twin", "create", "--home", owner, "--aml", str(PLANT), "--device-id", "plant-req-2")["id"]
    assert send(AUDITOR, make_request(owner_key, other, 0, b"?")[0], other) == "no_route"
    assert send(AUDITOR, make_request(owner_key, other, 0, b"?")[0]) == "bad_request"  # attributes of another twin

    async def peek(client: StoreClient) -> str:
        try:
            await collect_response(client, PROXY, first.id, EncryptionKey.generate())
        except StoreError as exc:
            return exc.code
        return "answered or pending"

    assert with_client(consortium, AUDITOR, peek) == "unknown_request"  # only the requester collects
    secret = kpcpre.SecretKey.from_bytes(read_secret_file(plc / "device-sharing.key", "kpcpre"))

    def take(i: int, signer: SigningKey) -> str:
        async def work(client: StoreClient) -> str:
            try:
                return f"{len(await take_requests(client, PROXY, twin, signer, secret, 0, height))} requests"
            except StoreError as exc:
                return exc.code

        return with_client(consortium, i, work)

    device = SigningKey(read_secret_file(plc / "device.key", "ed25519"))
    assert take(OWNER, device).endswith("requests")
    assert take(OWNER, SigningKey.generate()) == "access_denied"  # not a device of the twin
    assert take(AUDITOR, device) == "access_denied"  # not through the owner's nodes
