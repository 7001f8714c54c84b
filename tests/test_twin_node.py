"""Twins on a real node process: the CLI, REST with time travel, GraphQL, the event
stream and the audit trail with offline proofs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from twinledger.config import init_home, load_config
from twinledger.launcher import start_node
from twinledger.services.remote import NodeClient

PLANT = Path(__file__).parent.parent / "examples" / "bottling-plant.aml"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinledger", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    """A node of the plant owner with the bottling plant registered."""
    root = tmp_path_factory.mktemp("twins")
    home = root / "owner"
    init_home(home, "plant-owner", api_port=0, block_interval_ms=50)
    node = start_node(home)
    client = NodeClient(load_config(home))
    try:
        created = cli("twin", "create", "--home", str(home), "--aml", str(PLANT), "--device-id", "plant-7", "--json")
        assert created.returncode == 0, created.stderr
        yield home, client, json.loads(created.stdout), root
    finally:
        client.close()
        node.stop()


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return result


def test_the_sensor_replacement_through_the_cli(plant):
    home, client, created, root = plant
    twin, h = created["id"], ["--home", str(home)]
    listed = json.loads(ok("twin", "list", *h, "--json").stdout)
    assert [t["device_id"] for t in listed["twins"]] == ["plant-7"]

    ok("twin", "feed", "add", twin, "level-sensor-1", "--reference", "feed:old-sensor", *h)
    ok("twin", "aml", "remove", twin, "level-sensor-1", *h)
    fragment = root / "sensor.xml"
    fragment.write_text('<InternalElement Name="FillLevelSensor2" ID="level-sensor-2">'
                        '<Attribute Name="Model" AttributeDataType="xs:string"><Value>LS-300</Value></Attribute>'
                        "</InternalElement>")  # fmt: skip
    ok("twin", "aml", "insert", "plant-7", "--fragment", str(fragment), "--parent", "filler-1", "--after",
       "flow-sensor-1", *h)  # fmt: skip
    ok("twin", "feed", "add", twin, "level-sensor-2", "--reference", "feed:new-sensor", *h)
    report = root / "report.txt"
    report.write_text("Level sensor LS-200 replaced by LS-300 after bottles flooded.\n")
    doc = json.loads(ok("twin", "doc", "add", twin, str(report), "--title", "Maintenance report", "--component",
                        "level-sensor-2", *h, "--json").stdout)["document"]  # fmt: skip

    now = json.loads(ok("twin", "show", twin, *h, "--json").stdout)
    assert now["aml_version"] == 3 and now["specification"]["version"] == 3
    assert "level-sensor-2" in ok("twin", "aml", "show", twin, *h).stdout, "read from the store, checked on chain"
    assert [f["component"] for f in now["feeds"]] == ["level-sensor-2"]
    assert [d["id"] for d in now["documents"]] == [doc]
    before = json.loads(ok("twin", "show", twin, *h, "--at", str(created["height"]), "--json").stdout)
    assert before["aml_version"] == 1 and before["specification"]["hash"] != now["specification"]["hash"]
    assert "level-sensor-1" in ok("twin", "aml", "show", twin, "--version", "1", *h).stdout
    assert before["documents"] == [] and before["feeds"] == []

    history = json.loads(ok("twin", "aml", "history", twin, *h, "--json").stdout)
    assert [(v["change"], v["element"]) for v in history] == [("create", ""), ("remove", "level-sensor-1"),
                                                              ("insert", "level-sensor-2")]  # fmt: skip
    diff = ok("twin", "aml", "diff", twin, "1", *h).stdout
    assert "-" in diff and "level-sensor-1" in diff and "LS-300" in diff
    readable = ok("twin", "show", twin, *h).stdout
    assert "FillLevelSensor2" in readable and "Maintenance" in readable and "plant-owner" in readable


def test_unsafe_and_malformed_calls_fail_with_one_line(plant):
    home, _, created, _ = plant
    twin, h = created["id"], ["--home", str(home)]
    unsafe = cli("twin", "call", twin, "SetVelocity", "velocity=3.0", *h)
    assert unsafe.returncode == 1 and unsafe.stderr.count("\n") == 1
    assert "above its safe maximum 2.5" in unsafe.stderr
    missing = cli("twin", "aml", "remove", twin, "no-such-element", *h)
    assert missing.returncode == 1 and "no element with ID or path 'no-such-element'" in missing.stderr
    unknown = cli("twin", "show", "no-such-twin", *h)
    assert unknown.returncode == 1 and "no twin or device 'no-such-twin'" in unknown.stderr
    bad_role = cli("twin", "role", "grant", twin, "maker", "janitor", *h)
    assert bad_role.returncode == 1 and "'role' must be one of" in bad_role.stderr
    queued = json.loads(ok("twin", "call", twin, "SetVelocity", "velocity=1.5", *h, "--json").stdout)
    assert queued["receipt"]["events"][0]["data"]["params"] == {"velocity": "1.5"}
    calls = json.loads(ok("twin", "calls", twin, *h, "--status", "queued", "--json").stdout)
    assert [c["program"] for c in calls] == ["BottlingPlant/BottlingLine1/Conveyor/SetVelocity"]


def test_audit_lists_every_change_with_proofs_that_verify_offline(plant):
    home, _, created, root = plant
    twin, h = created["id"], ["--home", str(home)]
    ok("twin", "source", "add", twin, "https://erp.example/plant-7", *h)
    bundle = root / "audit.json"
    audit = json.loads(ok("twin", "audit", twin, *h, "--out", str(bundle), "--json").stdout)
    methods = [e["method"] for e in audit["entries"]]
    assert methods[0] == "twins.create" and methods[-1] == "twins.add_source"
    assert all(e["verified"] for e in audit["entries"])
    whole = json.loads(ok("verify", "proof", str(bundle), *h, "--json").stdout)  # the file the audit wrote
    assert whole["valid"] and [e["call"] for e in whole["entries"]] == methods and whole["pinned"]
    first = root / "first.json"
    first.write_text(json.dumps(audit["entries"][0]["proof"]))
    assert json.loads(ok("verify", "proof", str(first), *h, "--json").stdout)["call"] == "twins.create"
    tampered = dict(audit["entries"][0]["proof"])
    encoded = bytearray.fromhex(tampered["transaction"])
    encoded[-1] ^= 1  # the last byte of the signature
    tampered["transaction"] = encoded.hex()
    first.write_text(json.dumps(tampered))
    assert cli("verify", "proof", str(first), *h).returncode == 1
    forged = json.loads(bundle.read_text())
    forged["entries"][-1]["proof"] = forged["entries"][0]["proof"]  # a proof of another change in its place
    bundle.write_text(json.dumps(forged))
    refused = cli("verify", "proof", str(bundle), *h)
    assert refused.returncode == 1 and refused.stderr.startswith(f"invalid: entry {len(methods)}: the proof is of")


def test_rest_graphql_and_openapi_read_the_same_service(plant):
    _, client, created, _ = plant
    twin = created["id"]
    rest = client.request("GET", f"/v1/twins/{twin}")
    query = """query($ref: String!) { twin(ref: $ref) { id deviceId amlVersion documents { title }
               feeds { component reference } history { version change } audit { method } } }"""
    body = client.request("POST", "/graphql", json={"query": query, "variables": {"ref": "plant-7"}})
    graph = body["data"]["twin"]
    assert graph["id"] == twin and graph["deviceId"] == "plant-7" and graph["amlVersion"] == rest["aml_version"]
    assert [d["title"] for d in graph["documents"]] == [d["title"] for d in rest["documents"]]
    assert len(graph["audit"]) == len(client.request("GET", f"/v1/twins/{twin}/audit")["entries"])
    missing = client.request("POST", "/graphql", json={"query": '{ twin(ref: "nope") { id } }'})
    assert missing["errors"][0]["extensions"]["code"] == "not_found"
    paths = client.request("GET", "/openapi.json")["paths"]
    assert {"/v1/twins", "/v1/twins/{ref}", "/v1/twins/{ref}/audit", "/v1/events"} <= set(paths)
    with pytest.raises(Exception, match="height 999999 is not between 0 and the head"):
        client.request("GET", f"/v1/twins/{twin}", params={"at": 999999})


def events(client: NodeClient, count: int, stop_type: str | None = None, **request: object) -> list[dict]:
    """Read the event stream until ``count`` events (or one of ``stop_type``) arrived."""
    received: list[dict] = []
    with httpx.Client(base_url=client.url,
                      headers=client.auth_headers, timeout=30) as http, http.stream("GET", "/v1/events", **request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                received.append(json.loads(line[6:]))
                if len(received) >= count or received[-1]["type"] == stop_type:
                    return received
    return received


def test_events_stream_replays_and_follows_filtered_by_twin(plant):
    home, client, created, root = plant
    other = cli("twin", "create", "--home", str(home), "--aml", str(PLANT), "--device-id", "plant-8", "--json")
    assert other.returncode == 0, other.stderr
    live: list[dict] = []
    follower = threading.Thread(target=lambda: live.extend(
        events(client, 1, params={"twin": created["id"]})), daemon=True)  # fmt: skip
    follower.start()
    replayed = events(client, 10_000, "SourceAdded", params={"twin": created["id"], "since": 0})
    assert replayed[0]["type"] == "TwinCreated"
    assert {e["data"]["twin"] for e in replayed} == {created["id"]}
    ids = [tuple(int(p) for p in e["id"].split(":")) for e in replayed]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    note = root / "live.txt"
    note.write_text("live event\n")
    ok("twin", "doc", "add", created["id"], str(note), "--title", "live", "--home", str(home))
    follower.join(30)
    assert [(e["type"], e["data"]["title"]) for e in live] == [("DocumentAdded", "live")]

    resumed = events(client, 1, params={"twin": created["id"]}, headers={"last-event-id": replayed[-2]["id"]})
    assert resumed == [replayed[-1]]


def test_an_amlx_container_becomes_a_twin_with_documents_and_comes_back_out(plant):
    """The tool's container in: the root document is the specification, the manuals are
    documents; out again: the same specification and the same manuals, at the same paths."""
    from test_aml_corpus import SAP_UNPACKED, _zipped

    from twinledger import aml

    home, _client, _created, root = plant
    h = ["--home", str(home)]
    container = root / "component.amlx"
    container.write_bytes(_zipped(SAP_UNPACKED))
    created = json.loads(ok("twin", "create", "--aml", str(container), "--device-id", "sap-component", *h,
                            "--json").stdout)  # fmt: skip
    assert len(created["documents"]) == 3
    view = json.loads(ok("twin", "show", created["id"], *h, "--json").stdout)
    assert sorted(d["title"] for d in view["documents"]) == [
        "/files/TestPDFDeviceManual.pdf", "/files/TestTXTDeviceManual.txt", "/files/TestTXTWarranty.txt"]  # fmt: skip

    ok("twin", "aml", "export", created["id"], "-o", str(root / "out.amlx"), *h)
    package = aml.read_package((root / "out.amlx").read_bytes())
    stored = ok("twin", "aml", "show", created["id"], *h).stdout.encode()
    assert package.specification == stored and package.root_name == "/sap-component.aml"
    original = {p.name: p.data for p in aml.read_package(container.read_bytes()).parts}
    assert {p.name: p.data for p in package.parts} == original
    ok("twin", "aml", "export", created["id"], "-o", str(root / "out.aml"), *h)
    assert (root / "out.aml").read_bytes() == stored

    commented = root / "commented.aml"  # 75 KB as written, 5 KB stored: the stored form is what is sent
    commented.write_bytes(PLANT.read_bytes().replace(b"<InstanceHierarchy", b"<!-- " + b"x" * 70_000 + b" -->"
                                                     b"<InstanceHierarchy", 1))  # fmt: skip
    ok("twin", "create", "--aml", str(commented), "--device-id", "commented", *h)

    stricter = root / "stricter.aml"  # the tool's new export: the conveyor may run 2.0 m/s at most now
    stricter.write_bytes(PLANT.read_bytes().replace(b"<RequiredMaxValue>2.5</RequiredMaxValue>",
                                                    b"<RequiredMaxValue>2.0</RequiredMaxValue>"))  # fmt: skip
    ok("twin", "aml", "replace", "commented", str(stricter), *h)
    refused = cli("twin", "call", "commented", "SetVelocity", "velocity=2.4", *h)
    assert refused.returncode == 1 and "above its safe maximum 2" in refused.stderr

    bomb = root / "bomb.amlx"
    bomb.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    refused = cli("twin", "create", "--aml", str(bomb), "--device-id", "bomb", *h)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "not a readable zip" in refused.stderr


def test_programs_are_listed_with_their_paths_and_rules_and_called_by_a_tail(plant):
    home, client, created, _root = plant
    h = ["--home", str(home)]
    listed = json.loads(ok("twin", "programs", "plant-7", *h, "--json").stdout)["programs"]
    velocity = next(p for p in listed if p["name"] == "SetVelocity")
    assert velocity["path"] == "BottlingPlant/BottlingLine1/Conveyor/SetVelocity" and velocity["component"] == "conveyor-1"
    assert velocity["parameters"] == [{"name": "velocity", "type": "number", "minimum": "0.0", "maximum": "2.5",
                                       "allowed": [], "unit": "m/s"}]  # fmt: skip
    table = subprocess.run([sys.executable, "-m", "twinledger", "twin", "programs", "plant-7", *h], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}).stdout  # fmt: skip
    assert "0 … 2.5 m/s" in table and "one of forward, stop" in table
    queued = ok("twin", "call", "plant-7", "Conveyor/SetVelocity", "velocity=1.0", *h).stdout
    assert "BottlingPlant/BottlingLine1/Conveyor/SetVelocity" in queued
    ambiguous = cli("twin", "call", "plant-7", "Nothing/SetVelocity", "velocity=1.0", *h)
    assert ambiguous.returncode == 1 and "no program 'Nothing/SetVelocity'" in ambiguous.stderr


def test_libraries_are_stored_once_and_a_swapped_library_is_caught(plant):
    """A tool's export embeds class libraries in every file: stored once by content, they
    are reused by every later version and by the home's next twin; a version whose
    skeleton names another stored item for a library is refused on reading, with the
    library named, and a replace repairs it."""
    import asyncio

    from test_aml_corpus import CORPUS

    from twinledger import aml
    from twinledger.aml.libraries import split
    from twinledger.contracts import calls
    from twinledger.contracts.modeldelta import encode_delta
    from twinledger.services import specification as spec
    from twinledger.services.session import Session
    from twinledger.store.documents import upload_document

    home, _client, _created, root = plant
    h = ["--home", str(home)]
    source = CORPUS / "uax__Part2.aml"
    cell = json.loads(ok("twin", "create", "--aml", str(source), "--device-id", "cell", *h, "--json").stdout)["id"]
    fragment = root / "robot.aml"
    fragment.write_text('<InternalElement Name="RB9" ID="rb-9"/>')
    ok("twin", "aml", "insert", cell, "--fragment", str(fragment), "--parent", "{d6d584a2-4f97-42a8-9354-c9b3ee7d5362}",
       *h)  # fmt: skip
    copy = json.loads(ok("twin", "create", "--aml", str(source), "--device-id", "cell-copy", *h, "--json").stdout)["id"]

    async def stored(twin: str, version: int) -> spec.Fetched:
        async with Session.of_home(home) as session:
            return await spec.fetch(session, await spec.record(session, twin, version))

    versions = [asyncio.run(stored(twin, version)) for twin, version in ((cell, 1), (cell, 2), (copy, 1))]
    library = split(versions[0].data)[1][0]
    assert library.name == "AutomationMLExtendedRoleClassLib"
    assert [v.libraries for v in versions] == [{library.digest: versions[0].libraries[library.digest]}] * 3, \
        "one stored copy serves both versions of the twin and the other twin"
    assert b'ID="rb-9"' in versions[1].data and versions[2].data == versions[0].data
    intact = json.loads(ok("twin", "aml", "verify", cell, *h, "--json").stdout)
    assert [(v["version"], v["libraries"], v["intact"]) for v in intact] == [(1, 1, True), (2, 1, True)]

    async def swap() -> None:  # a writer who names another stored item for the library
        async with Session.of_home(home) as session:
            current = await spec.current(session, cell)
            skeleton, libraries = split(current.specification)
            other = await upload_document(await session.store(), b"  <RoleClassLib Name='Other'/>\n", session.signer,
                                          session.organisation, await spec.readers_of(session, None))  # fmt: skip
            placed = [spec.Placed(lib.name, lib.offset, lib.digest, other.reference) for lib in libraries]
            container = await upload_document(await session.store(), spec.encode_layout(skeleton, placed),
                                              session.signer, session.organisation,
                                              await spec.readers_of(session, None))  # fmt: skip
            delta = encode_delta(current.chain["entries"], aml.model(current.specification))
            version = calls.SpecificationVersion(spec.digest_of(current.specification), container.manifest,
                                                 container.reference, len(current.specification), model=delta,
                                                 base=bytes.fromhex(current.chain["hash"]))  # fmt: skip
            await session.transact(calls.replace_aml(cell, version))

    asyncio.run(swap())
    with pytest.raises(spec.SpecificationMismatch, match="library 'AutomationMLExtendedRoleClassLib' of version 3"):
        asyncio.run(stored(cell, 3))  # this process read the good copy before: its cache must not hide the swap
    refused = cli("twin", "aml", "show", cell, *h)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "library 'AutomationMLExtendedRoleClassLib' of version 3" in refused.stderr
    edit = cli("twin", "aml", "remove", cell, "rb-9", *h)
    assert edit.returncode == 1 and "AutomationMLExtendedRoleClassLib" in edit.stderr, "no edit builds on it"
    ok("twin", "aml", "replace", cell, str(source), *h)
    assert ok("twin", "aml", "show", cell, *h).stdout.encode() == versions[0].data
    audit = cli("twin", "aml", "verify", cell, *h)
    assert audit.returncode == 1 and audit.stderr.count("\n") == 1, audit.stderr
    assert "1 of 4 versions are not what the chain records: version 3: library 'AutomationMLExtendedRoleClassLib'" \
        in audit.stderr and "intact" in audit.stdout, "the history keeps the swapped version, and says so"
    assert asyncio.run(stored(cell, 4)).libraries == versions[0].libraries, "the home's copy is reused"


def test_a_document_goes_to_stdout_whole_and_verified(plant):
    """``-o -`` streams the document for a pipe (a file named ``-`` before), only after it
    was verified against the chain; the report goes to stderr, out of the data's way."""
    home, _client, created, root = plant
    h = ["--home", str(home)]
    manual = root / "manual.bin"
    manual.write_bytes(bytes(range(256)) * 4096)  # 1 MiB with every byte value
    document = json.loads(ok("twin", "doc", "add", created["id"], str(manual), *h, "--json").stdout)["document"]
    piped = subprocess.run([sys.executable, "-m", "twinledger", "twin", "doc", "get", created["id"], document[:8], "-o",
                            "-", *h], capture_output=True, timeout=120, cwd=root)  # fmt: skip
    assert piped.returncode == 0 and piped.stdout == manual.read_bytes(), piped.stderr
    assert b"wrote stdout" in piped.stderr and not (root / "-").exists()
    both = cli("twin", "doc", "get", created["id"], document, "-o", "-", "--json", *h)
    assert both.returncode == 1 and both.stderr.count("\n") == 1 and "choose one" in both.stderr
    assert ok("--version").stdout.startswith("twinledger ")
