"""The device agent against the real plant simulator and a real node: feeds filled from
OPC UA, alerts from the anomaly check, the §5.2 sensor replacement without human help,
program calls re-checked at the agent, and no reading lost while the node is down."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from network_helpers import free_port, wait_for
from store_helpers import cli as tl
from store_helpers import ok
from twin_helpers import World, key_for

from twinledger import aml
from twinledger.agent.anomaly import CLEAR_AFTER, RAISE_AFTER, AnomalyCheck
from twinledger.agent.plant import NAMESPACE
from twinledger.agent.spool import Spool, spool_key
from twinledger.config import init_home
from twinledger.crypto.keys import SigningKey
from twinledger.errors import DecryptionFailed
from twinledger.ingest.opcua import ApplicationIdentity, DeviceTrust, application_identity, device_session, fingerprint
from twinledger.launcher import NodeProcess, start_node
from twinledger.services.session import Session
from twinledger.store.documents import capsule_generation, data_key
from twinledger.store.feeds import parse_feed_reference
from twinledger.store.items import key_commitment

PLANT = Path(__file__).resolve().parent.parent / "examples" / "bottling-plant.aml"
SPEC = PLANT.read_bytes()
OWNER = key_for("plant-owner")



# -- the parts on their own ----------------------------------------------------------------------


def test_the_specification_names_the_signals_and_the_replacement():
    signals = {s.id: s for s in aml.signals(SPEC)}
    level = signals["level-sensor-1-level"]
    assert (level.opcua_node, level.kind, level.minimum, level.maximum) == ("level-sensor-1/Level", "sensor", 180, 195)
    assert signals["line-1-bottles-filled"].kind == "production" and signals["line-1-bottles-filled"].minimum is None
    assert level.deviation(120.0) == "below" and level.deviation(199.0) == "above" and level.deviation(187.5) is None
    plan = aml.replacement(SPEC, "level-sensor-1", "LS-300", "LS300-0117")
    assert (plan.old, plan.new, plan.parent) == ("level-sensor-1", "level-sensor-2", "filler-1")
    after = aml.insert(aml.remove(SPEC, plan.old).specification, plan.fragment, plan.parent, plan.after).specification
    (new,) = [i for i in aml.identities(after) if i.element_id == "level-sensor-2"]
    assert (new.model, new.serial, new.opcua_object) == ("LS-300", "LS300-0117", "level-sensor-1")
    moved = {s.id: s for s in aml.signals(after)}["level-sensor-2-level"]
    assert moved.opcua_node == "level-sensor-1/Level" and (moved.minimum, moved.maximum) == (180, 195)
    with pytest.raises(aml.AmlError, match="must carry numbers"):
        aml.signals(SPEC.replace(b'Name="Value" AttributeDataType="xs:double" Unit="mm"',
                                 b'Name="Value" AttributeDataType="xs:string" Unit="mm"'))  # fmt: skip


def test_the_anomaly_check_ignores_noise_and_raises_and_clears_on_runs():
    level = {s.id: s for s in aml.signals(SPEC)}["level-sensor-1-level"]
    check = AnomalyCheck(level)
    assert check.observe([(1, 187.0), (2, 170.0), (3, 188.0), (4, 200.0), (5, 199.0), (6, 187.0)]) == []
    low = [(10 + i, 120.0) for i in range(RAISE_AFTER)]
    (raised,) = check.observe(low)
    assert (raised.state, raised.deviation, raised.since) == ("raised", "below", 10)
    assert check.observe([(20, 187.0), (21, 121.0)]) == []
    (cleared,) = check.observe([(30 + i, 186.0) for i in range(CLEAR_AFTER)])
    assert (cleared.state, cleared.since) == ("cleared", 30)
    assert AnomalyCheck(level, open_=True).observe([(1, 100.0)] * 5) == [], "an open alert is not raised again"


SPOOL_KEY = spool_key(SigningKey(hashlib.sha256(b"plc").digest()))


def test_the_spool_keeps_readings_in_order_across_a_restart(tmp_path):
    spool = Spool(tmp_path / "agent" / "spool.db", SPOOL_KEY)
    spool.add([("a/Level", 100, 1.0), ("a/Level", 100, 2.0), ("a/Level", 50, 3.0), ("b/Flow", 7, 4.0)])
    assert [(r.time, r.value) for r in spool.pending("a/Level")] == [(100, 1.0), (101, 2.0), (102, 3.0)]
    spool.close()
    again = Spool(tmp_path / "agent" / "spool.db", SPOOL_KEY)
    again.add([("a/Level", 90, 5.0)])
    assert [r.time for r in again.pending("a/Level")] == [100, 101, 102, 103]
    assert again.drop_until("a/Level", 101) == 2 and again.count() == 3


def test_the_spool_holds_no_reading_in_the_clear_and_only_its_owner_reads_it(tmp_path):
    """Security review: the spool held plaintext samples at 0644."""
    path = tmp_path / "agent" / "spool.db"
    spool = Spool(path, SPOOL_KEY)
    spool.add([("a/Level", 100, 187.25)])
    spool.close()
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT value FROM sealed_samples").fetchone()
    assert isinstance(stored, bytes) and struct.pack(">d", 187.25) not in stored
    with sqlite3.connect(path) as db:  # a sample moved to another time does not open there
        db.execute("UPDATE sealed_samples SET time = 101")
    with pytest.raises(DecryptionFailed):
        Spool(path, SPOOL_KEY).pending("a/Level")
    with pytest.raises(DecryptionFailed):
        Spool(path, spool_key(SigningKey.generate())).pending("a/Level")


def test_samples_an_earlier_agent_spooled_in_the_clear_are_sealed_not_lost(tmp_path):
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, "
                   "time INTEGER NOT NULL, value REAL NOT NULL)")  # fmt: skip
        db.executemany("INSERT INTO samples (node, time, value) VALUES (?, ?, ?)", [("a/Level", 5, 1.5), ("a/Level", 6, 2.5)])
    spool = Spool(path, SPOOL_KEY)
    assert [(r.time, r.value) for r in spool.pending("a/Level")] == [(5, 1.5), (6, 2.5)]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'samples'").fetchone() is None


def test_the_contract_records_alerts_once_and_clears_them_with_the_component():
    world = World()
    twin = world.ok(OWNER, "twins", "create", name="plant", device_id="p-1", aml=SPEC).events[0].data["twin"]
    raised = world.ok(OWNER, "twins", "report_anomaly", twin=twin, signal="level-sensor-1-level", state="raised",
                      deviation="below", since=5, sequence=3)  # fmt: skip
    event = next(e for e in raised.events if e.type == "AnomalyRaised")
    assert (event.data["deviation"], event.data["minimum"], event.data["maximum"]) == ("below", "180", "195")
    assert "value" not in event.data, "alerts carry the range, not the reading"
    again = world.call(OWNER, "twins", "report_anomaly", twin=twin, signal="level-sensor-1-level", state="raised",
                       deviation="below", since=6)  # fmt: skip
    assert again.error == "anomaly_open"
    assert world.call(OWNER, "twins", "report_anomaly", twin=twin, signal="flow-sensor-1-flow", state="cleared",
                      since=6).error == "no_anomaly"  # fmt: skip
    assert world.call(OWNER, "twins", "report_anomaly", twin=twin, signal="conveyor-1", state="raised",
                      deviation="above", since=6).error == "unknown_signal"  # fmt: skip
    assert world.call(OWNER, "twins", "report_anomaly", twin=twin, signal="flow-sensor-1-flow", state="raised",
                      deviation="sideways", since=6).error == "bad_arguments"  # fmt: skip
    removed = world.ok(OWNER, "twins", "remove_aml", twin=twin, element="level-sensor-1")
    assert [e.type for e in removed.events] == ["AmlRemoved", "AnomalyCleared"]


def test_the_agent_refuses_contradicting_or_unreadable_opc_ua_options(tmp_path):
    home, device, bad = tmp_path / "owner", tmp_path / "plc-1", tmp_path / "plant.der"
    init_home(home, "owner", api_port=0)
    device.mkdir()
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    args = ("agent", "--home", str(home), "--twin", "t", "--device", str(device), "--opcua", "opc.tcp://127.0.0.1:1/",
            "--opcua-server-cert", str(bad))  # fmt: skip
    for extra, why in ((["--opcua-insecure"], "--opcua-insecure and --opcua-server-cert contradict each other"),
                       ([], f"{bad} is not a readable X.509 certificate")):  # fmt: skip
        done = tl(*args, *extra)
        assert done.returncode == 1 and done.stderr.strip() == f"error: {why}", done.stderr


# -- the agent with a node and the plant ---------------------------------------------------------


@dataclass
class Line:
    home: Path
    node: NodeProcess
    twin: str
    device: Path
    url: str
    plant: subprocess.Popen[str]
    certs: Path
    """The plant's certificate and trust list."""
    console: ApplicationIdentity
    """The test's own OPC UA identity, which the plant trusts."""

    def session(self) -> AbstractAsyncContextManager[Client]:
        return device_session(self.url, self.console, DeviceTrust(self.certs / "opcua.der"))

    def trust(self, certificate: Path, name: str) -> None:
        shutil.copyfile(certificate, self.certs / "trusted" / f"{name}.der")

    def view(self) -> dict[str, Any]:
        return ok("twin", "show", self.twin, "--home", str(self.home))

    def plant_call(self, obj: str, method: str, *args: Any) -> Any:
        async def call() -> Any:
            async with self.session() as client:
                ns = await client.get_namespace_index(NAMESPACE)
                return await client.get_node(ua.NodeId(obj, ns)).call_method(ua.NodeId(f"{obj}/{method}", ns), *args)

        return asyncio.run(call())

    def plant_read(self, name: str) -> Any:
        async def read() -> Any:
            async with self.session() as client:
                ns = await client.get_namespace_index(NAMESPACE)
                return await client.get_node(ua.NodeId(name, ns)).read_value()

        return asyncio.run(read())

    def feed(self, component: str) -> list[tuple[int, float]]:
        return [(t, v) for t, v in ok("twin", "feed", "read", self.twin, component, "--home", str(self.home))["samples"]]


@contextmanager
def plant_line(tmp_path: Path, rate: float = 20.0, trust_agent: bool = True) -> Iterator[Line]:
    """A node, the twin of the plant with its PLC as a device, and the plant simulator
    over OPC UA security; with ``trust_agent`` the plant trusts the device's agent."""
    home, certs = tmp_path / "owner", tmp_path / "plant-opcua"
    init_home(home, "owner", api_port=0, block_interval_ms=50)
    node = start_node(home)
    port = free_port()
    plant = subprocess.Popen([sys.executable, "-m", "twinledger", "plant", "run", "--port", str(port), "--rate",
                              str(rate), "--seed", "5", "--certs", str(certs)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    line = None
    try:
        assert plant.stdout is not None and "bottling plant at" in plant.stdout.readline()
        twin = ok("twin", "create", "--home", str(home), "--aml", str(PLANT))["id"]
        added = ok("device", "add", "--home", str(home), "--twin", twin, "--name", "plc-1", "--out",
                   str(tmp_path / "plc-1"))  # fmt: skip
        console = application_identity(tmp_path / "console", "test console", "urn:twinledger:test:console", server=False)
        line = Line(home, node, twin, tmp_path / "plc-1", f"opc.tcp://127.0.0.1:{port}/twinledger/plant/", plant, certs,
                    console)  # fmt: skip
        line.trust(console.path, "console")
        if trust_agent:
            line.trust(Path(added["opcua_certificate"]), "plc-1")
        yield line
    finally:
        plant.terminate()
        plant.wait(10)
        (line.node if line else node).stop()


@contextmanager
def running_agent(line: Line, log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as sink:
        agent = subprocess.Popen([sys.executable, "-m", "twinledger", "agent", "--home", str(line.home), "--twin",
                                  line.twin, "--device", str(line.device), "--opcua", line.url, "--flush-seconds",
                                  "0.5", "--json"], stdout=sink, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            yield agent
        finally:
            agent.terminate()
            agent.wait(30)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_the_agent_gets_readings_only_over_a_secure_session_the_device_trusts(tmp_path):
    log = tmp_path / "agent.log"
    with plant_line(tmp_path, trust_agent=False) as line, running_agent(line, log):
        refused = wait_for(lambda: "does not trust this client's certificate" in log.read_text() and log.read_text(),
                           "the plant to refuse the agent")  # fmt: skip
        assert f"add {line.device / 'opcua.der'} to its trusted certificates" in refused
        assert "connected to the device" not in refused
        line.trust(line.device / "opcua.der", "plc-1")
        wait_for(lambda: "connected to the device" in log.read_text(), "the agent to connect once trusted")
        wait_for(lambda: len(line.feed("level-sensor-1-level")) >= 5, "readings in the level feed")
    said = log.read_text()
    plant = (line.certs / "opcua.der").read_bytes()
    assert "(Aes256_Sha256_RsaPss Sign & Encrypt): 5 variable(s) subscribed" in said
    assert f"trusting the device's certificate {fingerprint(plant)} from now on" in said
    (pin,) = (line.home / "agents").glob("*/device-opcua.der")
    assert pin.read_bytes() == plant, "the device's certificate is pinned in the agent's state"


def test_calls_are_rechecked_at_the_agent_and_run_on_the_device(tmp_path):
    with plant_line(tmp_path) as line:
        unsafe = tl("twin", "call", line.twin, "SetVelocity", "velocity=3.0", "--home", str(line.home))
        assert unsafe.returncode == 1 and "above its safe maximum 2.5" in unsafe.stderr, "refused at the contract"
        ok("twin", "call", line.twin, "SetVelocity", "velocity=2.0", "--home", str(line.home))
        # the rules tighten while the call waits: the agent holds it to today's specification
        ok("twin", "aml", "remove", line.twin, "conveyor-1-set-velocity", "--home", str(line.home))
        stricter = (b'<ExternalInterface Name="SetVelocity" ID="conveyor-1-set-velocity-2" RefBaseClassPath='
                    b'"TwinledgerInterfaceClassLib/Program"><Attribute Name="velocity" AttributeDataType="xs:double">'
                    b"<Constraint Name=\"SafeRange\"><OrdinalScaledType><RequiredMaxValue>1.5</RequiredMaxValue>"
                    b"<RequiredMinValue>0</RequiredMinValue></OrdinalScaledType></Constraint></Attribute>"
                    b"</ExternalInterface>")  # fmt: skip
        (line.home / "stricter.xml").write_bytes(stricter)
        ok("twin", "aml", "insert", line.twin, "--fragment", str(line.home / "stricter.xml"), "--parent", "conveyor-1",
           "--home", str(line.home))  # fmt: skip
        ok("twin", "call", line.twin, "SetFillVolume", "volume=400", "valve_check=true", "--home", str(line.home))
        with running_agent(line, tmp_path / "agent.log"):
            calls = wait_for(lambda: [c for c in line.view()["calls"] if c["status"] not in ("queued", "dispatched")]
                             if all(c["status"] not in ("queued", "dispatched") for c in line.view()["calls"]) else None,
                             "the agent to handle both calls")  # fmt: skip
        by_number = {c["number"]: c for c in calls}
        assert by_number[1]["status"] == "rejected" and "above its safe maximum 1.5" in by_number[1]["result"]
        assert [h["status"] for h in by_number[1]["history"]] == ["queued", "rejected"], "never sent to the device"
        assert by_number[2]["status"] == "executed"
        assert [h["status"] for h in by_number[2]["history"]] == ["queued", "dispatched", "executed"]
        device_key = ok("device", "list", "--home", str(line.home), "--twin", line.twin)[0]["key"]
        assert by_number[2]["history"][-1]["key"] == device_key, "the device's own key reports"
        assert line.plant_read("conveyor-1/Velocity") == 1.2 and line.plant_read("filler-1/FillVolume") == 400


def test_the_agent_streams_alerts_and_replaces_a_broken_sensor(tmp_path):
    with plant_line(tmp_path) as line, running_agent(line, tmp_path / "agent.log"):
        wait_for(lambda: len(line.view()["feeds"]) == 4, "the agent to attach a feed to every signal")
        wait_for(lambda: len(line.feed("level-sensor-1-level")) >= 20, "level readings in the feed")
        healthy = line.feed("level-sensor-1-level")
        assert all(180 <= v <= 195 for _, v in healthy) and line.view()["anomalies"] == []
        assert [t for t, _ in healthy] == sorted({t for t, _ in healthy}), "in order, each once"

        line.plant_call("plant", "BreakLevelSensor")
        (alert,) = wait_for(lambda: line.view()["anomalies"], "the alert")
        assert (alert["signal"], alert["deviation"], alert["minimum"]) == ("level-sensor-1-level", "below", "180")
        wait_for(lambda: line.plant_read("line-1/FloodedBottles") > 0, "bottles to flood")

        line.plant_call("plant", "ReplaceLevelSensor", "LS200-9911")
        view = wait_for(lambda: (v := line.view()) and "level-sensor-2-level" in {f["component"] for f in v["feeds"]}
                        and v, "the agent to replace the sensor")  # fmt: skip
        spec = tl("twin", "aml", "show", line.twin, "--home", str(line.home)).stdout.encode()
        new = {i.element_id: i for i in aml.identities(spec)}
        assert "level-sensor-1" not in new and new["level-sensor-2"].serial == "LS200-9911"
        assert view["anomalies"] == [], "the alert left with the broken sensor"
        types = [e for entry in ok("twin", "audit", line.twin, "--home", str(line.home))["entries"]
                 for e in entry["events"]]  # fmt: skip
        assert "AnomalyRaised" in types and "AmlRemoved" in types and "AmlInserted" in types
        wait_for(lambda: len(line.feed("level-sensor-2-level")) >= 5, "the new sensor's readings")
        assert all(180 <= v <= 195 for _, v in line.feed("level-sensor-2-level"))

        failure = line.feed("level-sensor-1-level")
        assert failure[0][1] >= 180 and failure[-1][1] < 180, "the detached feed keeps the failure for analysis"
    log = (tmp_path / "agent.log").read_text()
    assert "ALERT level-sensor-1-level" in log and "replacing it by level-sensor-2" in log


@contextmanager
def witness(line: Line, name: str) -> Iterator[list[tuple[int, float]]]:
    """An independent OPC UA subscriber: every reading of ``name`` the plant published."""
    seen: list[tuple[int, float]] = []
    stop = threading.Event()
    ready = threading.Event()

    async def watch() -> None:
        class Handler:
            def datachange_notification(self, _node: Any, value: float, data: Any) -> None:
                stamp = data.monitored_item.Value.SourceTimestamp
                seen.append((int(stamp.replace(tzinfo=stamp.tzinfo or UTC).timestamp() * 1_000_000), value))

        async with line.session() as client:
            ns = await client.get_namespace_index(NAMESPACE)
            subscription = await client.create_subscription(50, Handler())
            await subscription.subscribe_data_change(client.get_node(ua.NodeId(name, ns)), sampling_interval=50,
                                                     queuesize=100)  # fmt: skip
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(watch()))
    thread.start()
    try:
        assert ready.wait(30)
        yield seen
    finally:
        stop.set()
        thread.join(30)


def test_a_node_outage_loses_no_reading(tmp_path):
    with plant_line(tmp_path, rate=5.0) as line, running_agent(line, tmp_path / "agent.log"):
        wait_for(lambda: len(line.view()["feeds"]) == 4, "the agent to attach its feeds")
        wait_for(lambda: len(line.feed("level-sensor-1-level")) >= 5, "the level feed to fill")
        with witness(line, "level-sensor-1/Level") as seen:
            wait_for(lambda: len(seen) >= 3, "the witness to see readings")
            line.node.kill()
            outage_starts = len(seen)
            wait_for(lambda: len(seen) >= outage_starts + 15, "three seconds of readings during the outage")
            wait_for(lambda: "caching readings" in (tmp_path / "agent.log").read_text(), "the agent to notice")
            line.node = start_node(line.home)
            wait_for(lambda: len(seen) >= outage_starts + 25, "readings after the restart")
            last = seen[-1][0]
            wait_for(lambda: line.feed("level-sensor-1-level")[-1][0] >= last, "the feed to catch up", timeout=90)
        feed = line.feed("level-sensor-1-level")
        times = [t for t, _ in feed]
        assert times == sorted(set(times)), "every reading once, in order"
        stored = dict(feed)
        missing = [(t, v) for t, v in seen if stored.get(t) != v]
        assert not missing, f"{len(missing)} of {len(seen)} readings lost, e.g. {missing[:3]}"
    assert "the node is back" in (tmp_path / "agent.log").read_text()


def feed_keys(line: Line, component: str) -> tuple[int | None, int, bytes]:
    """The generation of the feed's current key, how many keys it retired, and the key
    commitment of its newest segment."""

    async def read() -> tuple[int | None, int, bytes]:
        async with Session.of_home(line.home) as session:
            store = await session.store()
            feed = next(f for f in (await session.twin(line.twin))["feeds"] if f["component"] == component)
            acl = await store.get_acl(parse_feed_reference(feed["reference"]))
            head = await store.feed_head(acl)
            assert head is not None
            return capsule_generation(acl.capsule), len(acl.retired), head.key_commitment

    return asyncio.run(read())


def test_a_grant_ended_while_the_agent_was_stopped_gives_its_feeds_new_keys_before_it_appends(tmp_path):
    """agent1.py: the agent started with no memory of revocations and never rotated."""
    level = "level-sensor-1-level"
    with plant_line(tmp_path) as line:
        with running_agent(line, tmp_path / "agent.log"):
            wait_for(lambda: len(line.view()["feeds"]) == 4, "the agent to attach its feeds")
            wait_for(lambda: len(line.feed(level)) >= 3, "readings in the level feed")
        generation, retired, _ = feed_keys(line, level)
        assert (generation, retired) == (0, 0)
        grant = ok("grant", "--twin", line.twin, "--to", "device:plc-1", "--policy", "kind:level",
                   "--home", str(line.home))["grant"]  # fmt: skip
        revoked = ok("revoke", grant, "--home", str(line.home))  # the agent is stopped
        assert revoked["generation"] == 1 and level in revoked["feeds_left_to_their_writers"]
        stopped = len(line.feed(level))
        with running_agent(line, tmp_path / "again.log"):
            wait_for(lambda: len(line.feed(level)) >= stopped + 3, "readings after the restart")
        generation, retired, newest = feed_keys(line, level)
        assert (generation, retired) == (1, 1), "a new key of the new generation before the first append"
        assert newest == key_commitment_of_current(line, level)


def key_commitment_of_current(line: Line, component: str) -> bytes:
    """The commitment of the feed's current data key, as the owner opens it."""

    async def read() -> bytes:
        async with Session.of_home(line.home) as session:
            feed = next(f for f in (await session.twin(line.twin))["feeds"] if f["component"] == component)
            acl = await (await session.store()).get_acl(parse_feed_reference(feed["reference"]))
            return key_commitment(data_key(acl, session.organisation, session.encryption_key))

    return asyncio.run(read())
