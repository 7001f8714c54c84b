"""`twinledger network init|up|status|down`, and the per-organisation homes with the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from twinledger.launcher import free_port_block


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinledger", *args], capture_output=True, text=True, timeout=180)


def test_network_up_status_down_and_the_homes_work_with_the_cli(tmp_path):
    directory = tmp_path / "plant-consortium"
    base = free_port_block(8)
    up = cli("network", "up", "--dir", str(directory), "--orgs", "manufacturer,owner,maintainer,auditor",
             "--base-port", str(base), "--json")  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        nodes = json.loads(up.stdout)["nodes"]
        assert [n["organisation"] for n in nodes] == ["manufacturer", "owner", "maintainer", "auditor"]
        assert all(n["state"] == "running" and n["height"] >= 1 and n["peers"] == 3 for n in nodes)
        assert len({n["head"] for n in nodes}) <= 2  # the same chain, give or take the block in flight

        payload = tmp_path / "report.txt"
        payload.write_text("maintenance report\n")
        put = cli("record", "put", "--home", str(directory / "owner"), str(payload), "--wait", "--json")
        assert put.returncode == 0, put.stderr
        tx_hash = json.loads(put.stdout)["hash"]
        shown = cli("tx", "show", tx_hash, "--home", str(directory / "auditor"), "--proof", "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "committed"
        proof = tmp_path / "proof.json"
        proof.write_text(shown.stdout)
        verified = cli("verify", "proof", str(proof), "--json")
        assert verified.returncode == 0, verified.stderr  # offline: more than 2/3 of the four validators signed
        assert json.loads(verified.stdout)["signers"].__len__() >= 3

        status = cli("network", "status", "--dir", str(directory), "--json")
        assert status.returncode == 0
        assert {n["state"] for n in json.loads(status.stdout)["nodes"]} == {"running"}
        readable = cli("network", "status", "--dir", str(directory))
        assert "manufacturer" in readable.stdout and "running" in readable.stdout

        again = cli("network", "up", "--dir", str(directory), "--json")
        assert again.returncode == 0, "up on a running network leaves it running"
        assert [n["pid"] for n in json.loads(again.stdout)["nodes"]] == [n["pid"] for n in nodes]
    finally:
        down = cli("network", "down", "--dir", str(directory), "--json")
    assert down.returncode == 0 and len(json.loads(down.stdout)["stopped"]) == 4
    after = json.loads(cli("network", "status", "--dir", str(directory), "--json").stdout)
    assert {n["state"] for n in after["nodes"]} == {"stopped"}
    checked = cli("verify", "chain", "--home", str(directory / "maintainer"), "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["ok"] is True


def test_network_commands_fail_with_one_line(tmp_path):
    missing = cli("network", "status", "--dir", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "holds no network" in missing.stderr
    bad = cli("network", "init", "--dir", str(tmp_path / "x"), "--orgs", "a,a")
    assert bad.returncode == 1 and "once" in bad.stderr
    wrong = cli("network", "init", "--dir", str(tmp_path / "y"), "--consensus", "pow")
    assert wrong.returncode == 1 and "bft or poa" in wrong.stderr
