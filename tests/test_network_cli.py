"""`twinledger network init|up|status|down`, and the per-organisation homes with the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twinledger import aml
from twinledger.aml.libraries import split
from twinledger.config import load_config
from twinledger.launcher import free_port_block
from twinledger.services import specification as spec
from twinledger.services.library_copies import Placed
from twinledger.services.remote import NodeClient
from twinledger.services.session import Session

PLANT = Path(__file__).parent.parent / "examples" / "bottling-plant.aml"
CORPUS = Path(__file__).parent / "data" / "aml" / "files"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinledger", *args], capture_output=True, text=True, timeout=180)


def test_network_up_status_down_and_the_homes_work_with_the_cli(tmp_path):
    directory = tmp_path / "plant-consortium"
    base = free_port_block(12)
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
        verified = cli("verify", "proof", str(proof), "--json", "--home", str(directory / "auditor"))
        assert verified.returncode == 0, verified.stderr  # offline: more than 2/3 of the four validators signed
        assert json.loads(verified.stdout)["signers"].__len__() >= 3

        _twin_on_the_consortium(directory, tmp_path)

        status = cli("network", "status", "--dir", str(directory), "--json")
        assert status.returncode == 0
        assert {n["state"] for n in json.loads(status.stdout)["nodes"]} == {"running"}
        readable = cli("network", "status", "--dir", str(directory))
        assert "manufacturer" in readable.stdout and "running" in readable.stdout

        again = cli("network", "up", "--dir", str(directory), "--json")
        assert again.returncode == 0, "up on a running network leaves it running"
        assert [n["pid"] for n in json.loads(again.stdout)["nodes"]] == [n["pid"] for n in nodes]
        _the_first_hour(directory, tmp_path)
        _a_write_without_quorum_is_pending_and_commits_once(directory, tmp_path)
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


def _a_write_without_quorum_is_pending_and_commits_once(directory: Path, tmp_path: Path) -> None:
    """Two of four validators down: no block can commit. A write says it is pending (exit
    75, apart from failure) and names its transaction; sent again, it is that transaction,
    not a second one; once the validators are back, the same command reports it
    committed — one record, however often it was sent."""
    from twinledger.launcher import running_pid, stop_pid

    for org in ("maintainer", "auditor"):
        pid = running_pid(directory / org)
        assert pid is not None and stop_pid(pid)
    payload = tmp_path / "shift-report.txt"
    payload.write_text("shift report, line 7\n")
    put = [sys.executable, "-m", "twinledger", "record", "put", "--home", str(directory / "owner"), str(payload),
           "--wait", "--json"]  # fmt: skip
    impatient = {**os.environ, "TWINLEDGER_COMMIT_WAIT": "2"}
    first = subprocess.run(put, capture_output=True, text=True, timeout=120, env=impatient)
    assert first.returncode == 75 and first.stderr.startswith("pending: transaction ") and \
        first.stderr.count("\n") == 1, first.stderr
    tx = first.stderr.split()[2]
    assert f"twinledger tx wait {tx}" in first.stderr
    assert "the chain cannot commit now — this node reaches 2 of the 4 validators and a block needs 3; out of reach: " \
        "maintainer, auditor" in first.stderr, "and why"
    status = cli("network", "status", "--dir", str(directory))
    assert "the chain cannot commit: manufacturer reaches 2 of the 4 validators" in " ".join(status.stdout.split())
    again = subprocess.run(put, capture_output=True, text=True, timeout=120, env=impatient)
    assert again.returncode == 75 and again.stderr.split()[2] == tx, "sent again: the same transaction"
    still = cli("tx", "wait", tx, "--home", str(directory / "owner"), "--timeout", "1")
    assert still.returncode == 75 and still.stderr.count("\n") == 1, still.stderr
    manual = [sys.executable, "-m", "twinledger", "twin", "doc", "add", "plant-7", str(payload), "--title", "manual",
              "--home", str(directory / "owner"), "--json"]  # fmt: skip
    document = subprocess.run(manual, capture_output=True, text=True, timeout=120, env=impatient)
    assert document.returncode == 75, document.stderr
    retried = subprocess.run(manual, capture_output=True, text=True, timeout=120, env=impatient)
    assert retried.returncode == 75 and retried.stderr.split()[2] == document.stderr.split()[2], \
        "an upload sent again is the same write: not stored twice, not registered twice"

    assert cli("network", "up", "--dir", str(directory), "--json").returncode == 0, "the two validators return"
    done = subprocess.run(put, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["hash"] == tx, done.stderr
    added = subprocess.run(manual, capture_output=True, text=True, timeout=120)
    assert added.returncode == 0 and json.loads(added.stdout)["tx"] == document.stderr.split()[2], added.stderr
    titles = [d["title"] for d in json.loads(cli("twin", "show", "plant-7", "--home", str(directory / "owner"),
                                                 "--json").stdout)["documents"]]  # fmt: skip
    assert titles.count("manual") == 1
    waited = cli("tx", "wait", tx, "--home", str(directory / "auditor"), "--json")
    assert waited.returncode == 0 and json.loads(waited.stdout)["receipt"]["status"] == "ok"
    repeat = subprocess.run(put, capture_output=True, text=True, timeout=120)
    assert repeat.returncode == 0 and json.loads(repeat.stdout)["hash"] != tx, "once it committed, a repeat is a new write"
    nonce = NodeClient(load_config(directory / "owner"))
    try:
        sender = nonce.transaction(tx)["transaction"]["sender"]
        assert nonce.next_nonce(bytes.fromhex(sender)) == nonce.transaction(tx)["transaction"]["nonce"] + 3, \
            "the key spent two nonces on two writes, each sent three times (and one on the repeat)"
    finally:
        nonce.close()


def _plant_as_a_tool_exports_it(tmp_path: Path) -> Path:
    """The bottling plant with a standard library embedded, as engineering tools write it:
    stored apart, shared with every organisation given a role."""
    from lxml import etree

    libraries = b"".join(etree.tostring(library) for library in etree.parse(str(CORPUS / "uax__Part2.aml")).iter(
        "RoleClassLib"))  # AutomationMLBaseRoleClassLib, and AutomationMLExtendedRoleClassLib (5 KB) built on it
    path = tmp_path / "bottling-plant.aml"
    path.write_bytes(PLANT.read_bytes().replace(b"</CAEXFile>", libraries + b"</CAEXFile>"))
    assert [library.name for library in split(aml.stored_form(path.read_bytes()))[1]] == [
        "AutomationMLExtendedRoleClassLib"]  # fmt: skip
    return path


def _twin_on_the_consortium(directory: Path, tmp_path: Path) -> None:
    """The owner registers the plant and makes the maintainer its maintainer; the
    maintainer edits it; the auditor may not. Every node then holds the same twin."""
    home = {org: str(directory / org) for org in ("manufacturer", "owner", "maintainer", "auditor")}
    plant = _plant_as_a_tool_exports_it(tmp_path)
    created = cli("twin", "create", "--home", home["owner"], "--aml", str(plant), "--device-id", "plant-7",
                  "--role", "maintainer=maintainer", "--role", "auditor=auditor", "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    twin = json.loads(created.stdout)["id"]
    unreadable = cli("twin", "aml", "show", twin, "--home", home["manufacturer"])
    assert unreadable.returncode == 1 and unreadable.stderr.count("\n") == 1, "no role, no specification"
    granted = cli("twin", "role", "grant", twin, "manufacturer", "manufacturer", "--home", home["owner"])
    assert granted.returncode == 0, granted.stderr
    shown = cli("twin", "aml", "show", twin, "--home", home["manufacturer"])
    assert shown.returncode == 0 and 'ID="level-sensor-1"' in shown.stdout, "a role makes it a reader"
    assert "AutomationMLExtendedRoleClassLib" in shown.stdout, "of its skeleton and its stored library"
    removed = cli("twin", "aml", "remove", twin, "level-sensor-1", "--home", home["maintainer"], "--json")
    assert removed.returncode == 0, removed.stderr
    after = cli("twin", "aml", "show", twin, "--home", home["manufacturer"])
    assert after.returncode == 0 and 'ID="level-sensor-1"' not in after.stdout, "and of the maintainer's version"
    assert after.stdout.count("<RoleClass ") == shown.stdout.count("<RoleClass ") > 0

    async def layouts() -> list[list[Placed]]:
        async with Session.of_home(Path(home["manufacturer"])) as session:
            return [(await spec.fetch(session, await spec.record(session, twin, v))).layout for v in (1, 2)]

    owners, maintainers = asyncio.run(layouts())
    assert [p.digest for p in owners] == [p.digest for p in maintainers] and \
        owners[0].reference != maintainers[0].reference, "each key reuses only its own copies: nobody else can take " \
        "a reader away from the versions it wrote"
    refused = cli("twin", "aml", "remove", twin, "capper-1", "--home", home["auditor"])
    assert refused.returncode == 1 and "org:auditor may not aml.remove" in refused.stderr
    height = json.loads(removed.stdout)["block"]["height"]
    views = []
    for org, path in home.items():
        client = NodeClient(load_config(Path(path)))
        try:
            client.block(str(height), wait=30)
            views.append(client.request("GET", f"/v1/twins/{twin}", params={"at": height}))
        finally:
            client.close()
        assert views[-1]["aml_version"] == 2, org
    assert all(view == views[0] for view in views)


def _the_first_hour(directory: Path, tmp_path: Path) -> None:
    """Issue 22's first hour, as a plant engineer types it: a twin, a document, a feed
    backfilled from a historian's CSV and exported, a previewed grant, who reads what, a
    revoke, an audit verified offline — with a validator stopped part-way — and the bad
    inputs a new user makes, each one line and a non-zero exit, never a traceback."""
    from twinledger.launcher import running_pid, stop_pid

    owner, auditor = str(directory / "owner"), str(directory / "auditor")
    said: list[subprocess.CompletedProcess[str]] = []

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = cli(*args)
        said.append(done)
        assert done.returncode == code, (args, done.stderr)
        if code:
            assert done.stderr.count("\n") == 1, (args, done.stderr)
        return done

    def data(*args: str) -> dict:
        return json.loads(run(*args, "--json").stdout)

    twin = data("twin", "create", "--home", owner, "--aml", str(PLANT), "--device-id", "line-9",
                "--role", "auditor=auditor")["id"]  # fmt: skip
    report = tmp_path / "inspection.txt"
    report.write_text("inspection of line 9: seals replaced\n")
    document = data("twin", "doc", "add", twin, str(report), "--attribute", "type:report", "--home", owner)["document"]
    piped = subprocess.run([sys.executable, "-m", "twinledger", "twin", "doc", "add", twin, "-", "--title", "shift note",
                            "--home", owner, "--json"], input="night shift: filler 2 cleaned\n", capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    note = json.loads(piped.stdout)["document"]
    assert run("twin", "doc", "get", twin, note, "-o", "-", "--home", owner).stdout == "night shift: filler 2 cleaned\n"
    history = tmp_path / "level.csv"
    history.write_text("time,value\n" + "".join(f"2026-11-30T{i // 3600:02}:{i // 60 % 60:02}:{i % 60:02},{180 + i % 7}\n"
                                                for i in range(3600)))  # fmt: skip
    run("twin", "feed", "add", twin, "level-sensor-1", "--home", owner)
    pushed = data("twin", "feed", "push", twin, "level-sensor-1", str(history), "--home", owner)
    assert (pushed["samples"], pushed["updates"]) == (3600, 1), "an hour at 1 Hz is one segment"

    stopped = running_pid(directory / "maintainer")  # a validator goes down part-way: 3 of 4 still commit
    assert stopped is not None and stop_pid(stopped)
    exported = tmp_path / "level-export.csv"
    assert data("twin", "feed", "export", twin, "level-sensor-1", "-o", str(exported), "--home", owner)["samples"] == 3600
    assert exported.read_text().splitlines()[1] == "2026-11-30T00:00:00.000000+00:00,180.0"
    preview = data("grant", "--twin", twin, "--to", "manufacturer", "--policy", "type:report", "--dry-run", "--home", owner)
    assert [i["name"] for i in preview["covered"]] == ["inspection.txt v1"]
    grant = data("grant", "--twin", twin, "--to", "manufacturer", "--policy", "type:report", "--home", owner)["grant"]
    readers = {i["name"]: i for i in data("access", twin, "--home", owner)["items"]}
    assert [g["recipient"] for g in readers["inspection.txt v1"]["grants"]] == ["manufacturer"]
    run("network", "up", "--dir", str(directory))  # the validator returns (started as the command line starts it)
    manufacturer = str(directory / "manufacturer")
    assert run("twin", "doc", "get", twin, document[:8].upper(), "-o", "-", "--home", manufacturer).stdout == \
        report.read_text()  # fmt: skip
    data("revoke", grant[:10], "--home", owner)
    audit = tmp_path / "audit.json"
    run("twin", "audit", twin, "--out", str(audit), "--home", auditor)
    assert "audit of twin" in run("verify", "proof", str(audit), "--home", auditor).stdout
    piped = subprocess.run([sys.executable, "-m", "twinledger", "verify", "proof", "-", "--home", auditor, "--json"],
                           input=run("twin", "audit", twin, "--out", "-", "--home", auditor).stdout, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert piped.returncode == 0 and json.loads(piped.stdout)["valid"], "twin audit --out - | verify proof -"

    mistakes = [  # (command, the words the one line must hold, exit code)
        (("twin", "doc", "get", twin, document[:8], "-o", "-", "--home", manufacturer), "no active grant", 1),
        (("twin", "doc", "add", twin, str(tmp_path / "missing.pdf"), "--home", owner), "no file", 1),
        (("twin", "doc", "add", twin, "-", "--home", owner), "give --title", 1),
        (("grant", "--twin", twin, "--to", "auditor", "--policy", "type:report", "--bogus", "--home", owner),
         "no such option: --bogus", 2),
        (("twin", "doc", "add", twin, str(report), "--attribute", "typereport", "--home", owner), "type:report", 1),
        (("grant", "--twin", twin, "--to", "auditor", "--policy", "typ:report", "--home", owner), "type:report", 1),
        (("grant", "--twin", twin, "--to", "nobody", "--policy", "type:report", "--home", owner), "nobody", 1),
        (("twin", "doc", "get", twin, "abc", "-o", "-", "--home", owner), "at least 8", 1),
        (("twin", "show", "no-such-twin", "--home", owner), "no-such-twin", 1),
        (("twin", "feed", "export", twin, "level-sensor-1", "-o", "x.xlsx", "--format", "xlsx", "--home", owner),
         "no export format", 1),
        (("twin", "list", "--home", str(directory)), "is a network directory", 1),
        (("verify", "proof", str(tmp_path / "nothing.json"), "--home", auditor), "unreadable", 3),
    ]
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("time,value\n2026-11-30T02:00:00,nan\n")
    mistakes.append((("twin", "feed", "push", twin, "level-sensor-1", str(bad_csv), "--home", owner), "line 2", 1))
    with ThreadPoolExecutor(4) as pool:  # each mistake is its own process: side by side
        answers = list(pool.map(lambda mistake: cli(*mistake[0]), mistakes))
    for (command, words, code), done in zip(mistakes, answers, strict=True):
        said.append(done)
        assert done.returncode == code and done.stderr.count("\n") == 1 and words in done.stderr, (command, done.stderr)
    assert not any("Traceback" in done.stdout + done.stderr for done in said)
