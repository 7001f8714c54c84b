"""A real node process: the API, its errors, proofs, and the CLI against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from twinledger.core.encoding import encode
from twinledger.core.types import encode_transaction, sign_transaction
from twinledger.crypto.keys import SigningKey

OCTETS = {"content-type": "application/octet-stream"}


def cli(*args: str, home=None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "twinledger", *args]
    if home is not None:
        cmd += ["--home", str(home)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def signed(key: SigningKey, nonce: int, chain_id: str = "acme-chain", **overrides):
    fields = dict(chain_id=chain_id, nonce=nonce, contract="records", method="put",
                  args={"payload": os.urandom(32)}, timestamp=int(time.time() * 1000))  # fmt: skip
    fields.update(overrides)
    return sign_transaction(key, **fields)


def post(node, tx_bytes: bytes) -> httpx.Response:
    return httpx.post(f"{node.url}/v1/transactions", content=tx_bytes, headers={**OCTETS, **node.headers})


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    return body["error"]["code"]


def test_submit_commit_and_proof(running_node):
    node, config, client = running_node
    key = SigningKey.generate()
    tx = signed(key, 0)
    response = post(node, encode_transaction(tx))
    assert response.status_code == 202 and response.json() == {"hash": tx.hash.hex(), "status": "accepted"}
    assert post(node, encode_transaction(tx)).json()["status"] == "duplicate"
    view = client.transaction(tx.hash.hex(), proof=True, wait=10)
    assert view["status"] == "committed" and view["receipt"]["status"] == "ok"
    assert view["receipt"]["events"][0]["type"] == "RecordStored"
    block = client.block(str(view["block"]["height"]))
    assert tx.hash.hex() in [t["hash"] for t in block["transactions"]]
    assert client.block(block["header"]["hash"])["header"] == block["header"]
    from twinledger.core.proof import parse_proof, verify_proof

    assert verify_proof(parse_proof(json.dumps(view["proof"]))).tx_hash == tx.hash


@pytest.mark.parametrize("size", [5, 300], ids=["in-thread", "worker-processes"])
def test_batch_reports_each_transaction(running_node, size):
    node, _, client = running_node
    key = SigningKey.generate()
    good = [signed(key, n) for n in range(size)]
    bad_sig = signed(key, size + 2)
    bad_sig = bad_sig.__class__(**{**{f: getattr(bad_sig, f) for f in bad_sig.__dataclass_fields__}, "signature": bytes(64)})
    middle = size // 2
    items = [encode_transaction(t) for t in good]
    items[middle:middle] = [encode_transaction(bad_sig), b"garbage"]
    result = httpx.post(f"{node.url}/v1/transactions/batch", content=encode(items), headers={**OCTETS, **node.headers}).json()
    assert result["accepted"] == size and result["rejected"] == 2
    assert [r["error"]["code"] for r in result["results"][middle : middle + 2]] == ["bad_signature", "undecodable"]
    assert [r["hash"] for r in result["results"] if "hash" in r] == [tx.hash.hex() for tx in good]
    assert client.transaction(good[-1].hash.hex(), wait=10)["status"] == "committed"
    for tx in good[:: max(1, size // 10)]:
        assert client.transaction(tx.hash.hex())["status"] == "committed"
    assert client.next_nonce(key.public) == size


@pytest.mark.parametrize(
    ("make", "code", "status"),
    [
        (lambda k: b"\x81\xa1a\xcb" + b"\x00" * 8, "undecodable", 400),
        (lambda k: encode_transaction(signed(k, 0, chain_id="other-chain")), "wrong_chain", 400),
        (lambda k: encode_transaction(signed(k, 0, contract="nope")), "unknown_contract", 400),
        (lambda k: encode_transaction(signed(k, 0, method="nope")), "unknown_method", 400),
        (lambda k: encode_transaction(signed(k, 0, args={"payload": 5})), "bad_arguments", 400),
        (lambda k: encode_transaction(signed(k, 0, timestamp=1)), "bad_timestamp", 400),
        (lambda k: encode_transaction(signed(k, 0, args={"payload": b"x" * 70000})), "undecodable", 400),
        (lambda k: encode_transaction(signed(k, 0).strip()), "stripped", 400),
        (lambda k: b"x" * 200_000, "too_large", 400),
    ],
)
def test_bad_input_gets_a_clear_error_and_loses_nothing(running_node, make, code, status):
    node, _, client = running_node
    key = SigningKey.generate()
    before = client.health()["height"]
    response = post(node, make(key))
    assert response.status_code == status and error_code(response) == code
    ok = signed(key, 1)
    assert post(node, encode_transaction(ok)).status_code == 202
    assert client.transaction(ok.hash.hex(), wait=10)["status"] == "committed"
    assert client.health()["height"] >= before


def test_replayed_nonce_is_refused(running_node):
    node, _, client = running_node
    key = SigningKey.generate()
    first = signed(key, 3)
    post(node, encode_transaction(first))
    client.transaction(first.hash.hex(), wait=10)
    resubmitted = post(node, encode_transaction(first))
    assert resubmitted.status_code == 202 and resubmitted.json()["status"] == "duplicate"
    replay = post(node, encode_transaction(signed(key, 3)))
    assert replay.status_code == 400 and error_code(replay) == "nonce_replayed"
    lower = post(node, encode_transaction(signed(key, 2)))
    assert error_code(lower) == "nonce_replayed"


def test_reads_and_errors(running_node):
    node, _, _ = running_node
    assert httpx.get(f"{node.url}/v1/transactions/zz", headers=node.headers).status_code == 400
    missing = httpx.get(f"{node.url}/v1/transactions/{'00' * 32}", headers=node.headers)
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    assert error_code(httpx.get(f"{node.url}/v1/blocks/999999", headers=node.headers)) == "not_found"
    assert error_code(httpx.get(f"{node.url}/v1/nowhere", headers=node.headers)) == "not_found"
    metrics = httpx.get(f"{node.url}/metrics", headers=node.headers).text
    assert "twinledger_height " in metrics and "twinledger_commit_latency_seconds_count" in metrics
    assert httpx.get(f"{node.url}/openapi.json", headers=node.headers).json()["info"]["title"] == "twinledger node"


def test_cli_end_to_end(running_node, tmp_path):
    node, config, _ = running_node
    home = config.home
    payload = tmp_path / "reading.json"
    payload.write_text('{"level": 0.8}')
    put = cli("record", "put", str(payload), "--meta", "sensor=ls-01", "--wait", "--json", home=home)
    assert put.returncode == 0, put.stderr
    tx_hash = json.loads(put.stdout)["hash"]
    shown = cli("tx", "show", tx_hash, "--proof", "--json", home=home)
    assert shown.returncode == 0 and json.loads(shown.stdout)["transaction"]["args"]["metadata"]["sensor"] == "ls-01"
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(shown.stdout)
    verified = cli("verify", "proof", str(proof_file), "--json")
    assert verified.returncode == 4 and json.loads(verified.stdout)["transaction"] == tx_hash, "valid, but only in itself"
    assert json.loads(verified.stdout)["pinned"] is None and "nothing pinned" in verified.stderr
    pinned = cli("verify", "proof", str(proof_file), "--json", home=home)
    assert pinned.returncode == 0 and "'acme-chain'" in json.loads(pinned.stdout)["pinned"]
    invented = tmp_path / "invented.json"
    invented.write_text(json.dumps({"proof": _proof_from_invented_validators(tmp_path, "acme-chain").to_json()}))
    assert cli("verify", "proof", str(invented)).returncode == 4, "valid in itself: only a pin tells"
    refused = cli("verify", "proof", str(invented), home=home)
    assert refused.returncode == 1 and refused.stderr.strip() == "invalid: block was committed by an untrusted validator set"
    doc = json.loads(shown.stdout)
    raw = bytearray(bytes.fromhex(doc["proof"]["header"]))
    raw[-3] ^= 1
    doc["proof"]["header"] = raw.hex()
    proof_file.write_text(json.dumps(doc))
    tampered = cli("verify", "proof", str(proof_file))
    assert tampered.returncode == 1 and tampered.stderr.startswith("invalid:")
    proof_file.write_text("{not json")
    malformed = cli("verify", "proof", str(proof_file))
    assert malformed.returncode == 3 and malformed.stderr.strip() == f"unreadable: {proof_file} is not JSON"
    missing = cli("verify", "proof", str(tmp_path / "no-such.json"))
    assert missing.returncode == 3 and missing.stderr.startswith("unreadable: cannot read"), "not the code of a forgery"
    block = cli("block", "show", "head", "--json", home=home)
    assert block.returncode == 0 and json.loads(block.stdout)["header"]["height"] >= 1
    human = cli("block", "show", "1", home=home)
    assert human.returncode == 0 and "block 1" in human.stdout
    chain = cli("verify", "chain", "--json", home=home)
    assert chain.returncode == 0 and json.loads(chain.stdout)["ok"] is True


def _proof_from_invented_validators(directory, chain_id: str):
    """A proof of a chain with the same id, run by a validator its maker invented."""
    import dataclasses

    from ledger_helpers import GENESIS, VALIDATOR, produce

    from twinledger.consensus.solo import SoloConsensus
    from twinledger.contracts import default_runtime
    from twinledger.ledger.chain import Chain
    from twinledger.ledger.store.sqlite import SqliteChainStore

    chain = Chain(SqliteChainStore(directory / "invented.db"), default_runtime(), SoloConsensus(VALIDATOR.public, VALIDATOR),
                  dataclasses.replace(GENESIS, chain_id=chain_id))  # fmt: skip
    tx = signed(SigningKey.generate(), 0, chain_id=chain_id, timestamp=GENESIS.genesis_time + 1)
    produce(chain, [tx])
    return chain.proof(tx.hash)


def test_cli_errors_are_one_line(tmp_path):
    result = cli("tx", "show", "00" * 32, home=tmp_path / "nowhere")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("section", "what"), [("api", "the API"), ("p2p", "peers"), ("storage", "the store")])
def test_a_port_in_use_is_named_with_the_setting_that_moves_it(tmp_path, section, what):
    """The finding: a port clash said "Address already in use" and no more."""
    import socket
    import tomllib

    import tomli_w

    from twinledger.config import init_network
    from twinledger.launcher import free_port_block

    init_network(tmp_path / "net", ["acme"], base_port=free_port_block(3))
    home = tmp_path / "net" / "acme"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    doc = tomllib.loads((home / "node.toml").read_text())
    doc[section]["port"] = port
    (home / "node.toml").write_text(tomli_w.dumps(doc))
    try:
        done = subprocess.run([sys.executable, "-m", "twinledger", "node", "start", "--home", str(home)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        taken.close()
    said = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cannot listen for {what} on 127.0.0.1:{port}: the port is in use" in said
    assert f"[{section}] port in {home / 'node.toml'}" in said


def test_a_network_directory_is_not_taken_for_a_home_and_its_shape_is_not_silently_changed(tmp_path):
    """The findings: --base-port on an existing network directory was ignored; --home
    pointing at a network directory advised `twinledger init`."""
    from twinledger.launcher import free_port_block

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "twinledger", *args], capture_output=True, text=True, timeout=60)

    first = free_port_block(9)
    made = cli("network", "init", "--dir", str(tmp_path / "net"), "--orgs", "owner,maintainer,auditor",
               "--base-port", str(first))  # fmt: skip
    assert made.returncode == 0, made.stderr
    again = cli("network", "up", "--dir", str(tmp_path / "net"), "--base-port", str(first + 100), "--orgs", "a,b")
    said = again.stderr.strip()
    assert again.returncode == 1 and said.count("\n") == 0 and "exists already" in said
    assert f"--base-port (its first port is {first})" in said and "--orgs (it has owner, maintainer, auditor)" in said
    wrong_home = cli("twin", "list", "--home", str(tmp_path / "net"))
    said = wrong_home.stderr.strip()
    assert wrong_home.returncode == 1 and "is a network directory" in said and f"--home {tmp_path / 'net' / 'owner'}" in said
    nowhere = cli("twin", "list", "--home", str(tmp_path / "nothing"))
    assert nowhere.returncode == 1 and f"twinledger init --home {tmp_path / 'nothing'}" in nowhere.stderr
