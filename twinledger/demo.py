"""``twinledger demo``: the bottling plant of Dietz et al. §5 on a local consortium.

Four organisations (manufacturer, owner, maintainer, auditor) each run a node of one BFT
chain with the off-chain store and proxies. The owner registers the plant's twin and its
PLC as a device; the plant simulator serves the line over OPC UA and the device agent
streams it into encrypted feeds. Then the paper's story plays: the level sensor breaks
and bottles flood, the anomaly check raises an alert, the maintainer replaces the sensor
and the agent updates specification and feed by itself, the maintainer files the
maintenance report; the owner sees everything, the manufacturer reads the failure data
its grant covers but not the production figures, the auditor reads the report; an
unsafe program call is refused and a safe one runs on the line. An audit report of the
twin closes it, every proof verified offline.

Every step runs the same ``twinledger`` command a person would, and the narration shows
it. The demo checks each outcome and says plainly when one is not what it should be.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from asyncua import Client, ua
from rich.console import Console

from twinledger.agent.opcua import ApplicationIdentity, DeviceTrust, application_identity, device_session
from twinledger.agent.plant import NAMESPACE, plant_identity
from twinledger.client import NodeClient
from twinledger.config import init_network, load_config
from twinledger.core.proof import parse_proof, validators_hash, verify_proof
from twinledger.errors import InvalidProof, TwinledgerError
from twinledger.launcher import NETWORK_FILE, NodeProcess, free_port_block, network_homes, start_node, write_network_file
from twinledger.ledger.genesis import Genesis

console = Console(highlight=False)
PLANT = Path(__file__).resolve().parent.parent / "examples" / "bottling-plant.aml"
ORGANISATIONS = ("manufacturer", "owner", "maintainer", "auditor")
NEW_SERIAL = "LS200-9911"
REPORT = (f"Maintenance report, bottling line 1\n\nThe fill-level sensor LS-200 (serial LS200-7730) read a constant "
          f"low level; bottles flooded. Replaced by serial {NEW_SERIAL}, calibrated at 187.5 mm for 500 ml.\n")  # fmt: skip
WAIT = 90.0
T = TypeVar("T")


class StepFailed(TwinledgerError):
    code = "demo_step_failed"


def step(text: str) -> None:
    console.print(f"\n[bold cyan]▶[/] {text}")


def note(text: str, style: str = "") -> None:
    console.print(f"  {text}", style=style)


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise StepFailed(f"{what} did not happen within {timeout:.0f} s")


class Demo:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: list[NodeProcess] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.homes: dict[str, Path] = {}
        self.twin = ""
        self.plant_url = ""

    # -- running commands ----------------------------------------------------------------------

    def _show(self, args: tuple[str, ...]) -> None:
        shown = " ".join(a if " " not in a else repr(a) for a in args).replace(str(self.directory) + "/", "")
        note(f"$ twinledger {shown}", style="dim")

    def cli(self, *args: str, quiet: bool = False) -> Any:
        """Run a twinledger command as its user would; its JSON answer, or StepFailed."""
        if not quiet:
            self._show(args)
        done = subprocess.run([sys.executable, "-m", "twinledger", *args, "--json"], capture_output=True, text=True,
                              timeout=180)  # fmt: skip
        if done.returncode != 0:
            raise StepFailed(f"twinledger {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                             f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no message'}")  # fmt: skip
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def refused(self, *args: str) -> str:
        """Run a command that must fail; the one line saying why."""
        self._show(args)
        done = subprocess.run([sys.executable, "-m", "twinledger", *args], capture_output=True, text=True, timeout=180)
        if done.returncode == 0:
            raise StepFailed(f"twinledger {' '.join(args[:2])} succeeded but must be refused")
        return done.stderr.strip().splitlines()[-1].removeprefix("error: ")

    def home(self, organisation: str) -> str:
        return str(self.homes[organisation])

    def view(self) -> dict[str, Any]:
        return self.cli("twin", "show", self.twin, "--home", self.home("owner"), quiet=True)

    @property
    def plant_certs(self) -> Path:
        return self.directory / "plant-opcua"

    @functools.cached_property
    def console_identity(self) -> ApplicationIdentity:
        """The maintenance console's OPC UA identity: the demo's own hands on the plant
        (read once: its key file may be sealed with a passphrase)."""
        return application_identity(self.directory / "console", "twinledger maintenance console",
                                    "urn:twinledger:maintenance-console", server=False)  # fmt: skip

    def trust_on_plant(self, certificate: Path, name: str) -> None:
        """Put a client certificate on the plant's trust list (the simulator reads it at every session)."""
        trusted = self.plant_certs / "trusted"
        trusted.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(certificate, trusted / f"{name}.der")

    def opcua_session(self) -> contextlib.AbstractAsyncContextManager[Client]:
        """A secure OPC UA session with the plant, as the maintenance console."""
        return device_session(self.plant_url, self.console_identity, DeviceTrust(self.plant_certs / "opcua.der"))

    def plant(self, obj: str, method: str | None, *args: Any, read: str | None = None) -> Any:
        async def talk() -> Any:
            async with self.opcua_session() as client:
                ns = await client.get_namespace_index(NAMESPACE)
                if method is not None:
                    await client.get_node(ua.NodeId(obj, ns)).call_method(ua.NodeId(f"{obj}/{method}", ns), *args)
                return await client.get_node(ua.NodeId(read, ns)).read_value() if read else None

        return asyncio.run(talk())

    # -- the consortium ------------------------------------------------------------------------

    def start(self, ingest_window: int | None = None) -> None:
        """Create (or reuse) the consortium and start its nodes; ``ingest_window`` sets the
        nodes' TCP ingest window (the ingest benchmark's)."""
        if (self.directory / NETWORK_FILE).exists():
            step(f"reusing the consortium in {self.directory}")
        else:
            step(f"creating a consortium of {', '.join(ORGANISATIONS)} in {self.directory}")
            names = list(ORGANISATIONS)
            init_network(self.directory, names, consensus="bft", chain_id=f"demo-{secrets.token_hex(3)}",
                         base_port=free_port_block(3 * len(names)), block_interval_ms=100)  # fmt: skip
            write_network_file(self.directory, names, "bft")
        self.homes = dict(network_homes(self.directory))
        if ingest_window is not None:
            for home in self.homes.values():
                doc = tomllib.loads((home / "node.toml").read_text())
                doc["ingest"]["window"] = ingest_window
                (home / "node.toml").write_text(tomli_w.dumps(doc))
        note("each organisation runs one node: BFT validator, encrypted store and re-encryption proxy, mutual TLS")
        for organisation in ORGANISATIONS:
            self.nodes.append(start_node(self.homes[organisation]))
        clients = [NodeClient(load_config(self.homes[o])) for o in ORGANISATIONS]
        try:
            wait_for(lambda: all(c.health()["height"] >= 1 for c in clients), "the first block")
        finally:
            for c in clients:
                c.close()
        note("4 nodes are committing blocks")

    def start_line(self, rate_hz: float = 20.0) -> None:
        port = free_port_block(1)
        self.plant_url = f"opc.tcp://127.0.0.1:{port}/twinledger/plant/"
        plant_identity(self.plant_certs)
        self.trust_on_plant(self.console_identity.path, "console")
        log = (self.directory / "plant.log").open("ab")
        self.processes.append(subprocess.Popen([sys.executable, "-m", "twinledger", "plant", "run", "--port", str(port),
                                                "--rate", str(rate_hz), "--certs", str(self.plant_certs)],
                                               stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        wait_for(lambda: self._plant_up(), "the plant simulator to listen")

    def _plant_up(self) -> bool:
        try:
            self.plant("plant", None, read="line-1/BottlesFilled")
            return True
        except (OSError, TimeoutError, ua.UaError):
            return False

    def start_agent(self, device: Path, sampling_ms: int = 50) -> None:
        """Start the device's agent once the plant trusts its certificate (the device
        directory's opcua.der, in the plant's trust list); it pins the plant's."""
        self.trust_on_plant(device / "opcua.der", device.name)
        self.agent_log = self.directory / f"agent-{self.twin}.log"
        log = self.agent_log.open("ab")
        self.processes.append(subprocess.Popen([sys.executable, "-m", "twinledger", "agent", "--home",
                                                self.home("owner"), "--twin", self.twin, "--device", str(device),
                                                "--opcua", self.plant_url, "--opcua-server-cert",
                                                str(self.plant_certs / "opcua.der"), "--flush-seconds", "0.5",
                                                "--sampling-ms", str(sampling_ms), "--json"],
                                               stdout=log, stderr=subprocess.STDOUT))  # fmt: skip

    def agent_said(self, text: str) -> str | None:
        lines = self.agent_log.read_text().splitlines() if self.agent_log.exists() else []
        return next((json.loads(line)["event"] for line in lines if line.startswith("{") and text in line), None)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        for node in self.nodes:
            node.stop()

    # -- the scenario --------------------------------------------------------------------------

    def scenario(self) -> None:
        owner, maintainer, manufacturer, auditor = (self.home(o) for o in ("owner", "maintainer", "manufacturer",
                                                                             "auditor"))  # fmt: skip
        step("the owner registers the plant's digital twin from the manufacturer's AutomationML specification")
        created = self.cli("twin", "create", "--home", owner, "--aml", str(PLANT), "--name", "Bottling line 1",
                           "--device-id", f"line-1-{secrets.token_hex(3)}")  # fmt: skip
        self.twin = created["id"]
        note(f"twin {self.twin}: conveyor, filler, level and flow sensors, capper; programs with safety rules")
        self.cli("twin", "role", "grant", self.twin, "maintainer", "maintainer", "--home", owner)
        self.cli("twin", "role", "grant", self.twin, "auditor", "auditor", "--home", owner)
        device = self.directory / f"plc-{self.twin}"
        self.cli("device", "add", "--home", owner, "--twin", self.twin, "--name", "plc-1", "--out", str(device))
        note("the line's PLC is a device of the twin with its own keys and the device-agent role")

        step("the plant comes online (OPC UA simulator) and the device agent connects it to the twin")
        self.start_line()
        note(f"$ cp {device.name}/opcua.der plant-opcua/trusted/", style="dim")
        note("the PLC trusts the agent's OPC UA certificate; the agent pins the PLC's")
        self.start_agent(device)
        feeds = wait_for(lambda: (f := self.view()["feeds"]) and len(f) == 4 and f, "the agent to attach the feeds")
        note(f"agent: {wait_for(lambda: self.agent_said('connected to the device'), 'the agent to connect')}")
        for feed in sorted(feeds, key=lambda f: f["component"]):
            note(f"feed of {feed['component']:<24} {feed['description']}")
        wait_for(lambda: self._samples(owner, "level-sensor-1-level"), "level readings in the store")
        note("readings flow into the store, encrypted on the owner's premises; each feed's head is checkpointed on chain")

        step("the owner shares sensor data with the manufacturer: a KP-CPRE grant, re-encrypted by the owner's proxy")
        self.cli("grant", "--home", owner, "--twin", self.twin, "--to", "manufacturer", "--policy", "kind:sensor")
        note("policy twin:<id> AND kind:sensor covers both sensors' feeds, not the production counters")

        step("the level sensor breaks: it reads a constant low level, the filler keeps filling, bottles flood")
        self.plant("plant", "BreakLevelSensor")
        flooded = wait_for(lambda: self.plant("plant", None, read="line-1/FloodedBottles"), "bottles to flood")
        (alert,) = wait_for(lambda: self.view()["anomalies"], "the anomaly check's alert")
        note(f"{flooded} bottles flooded so far", style="red")
        note(f"[bold red]ALERT[/] on chain: {alert['signal']} reads {alert['deviation']} its expected range "
             f"{alert['minimum']}–{alert['maximum']} {alert['unit']} (feed update {alert['sequence']})")  # fmt: skip

        step("the maintainer replaces the sensor; the device agent notices the new serial number by itself (§5.2)")
        self.plant("plant", "ReplaceLevelSensor", NEW_SERIAL)
        view = wait_for(lambda: (v := self.view()) and any(f["component"] == "level-sensor-2-level" for f in v["feeds"])
                        and v, "the agent to replace the sensor's specification entry and feed")  # fmt: skip
        for text in ("replacing it by", "removed from the specification", "inserted into the specification",
                     "level-sensor-2-level: new encrypted feed"):  # fmt: skip
            said = self.agent_said(text)
            if said is None:
                raise StepFailed(f"the agent did not report: {text}")
            note(f"agent: {said}")
        if view["anomalies"]:
            raise StepFailed("the alert is still open after the replacement")
        wait_for(lambda: self._samples(owner, "level-sensor-2-level"), "the new sensor's readings")
        note("the new sensor streams into its own feed; the alert closed with the old sensor")

        step("the maintainer files the maintenance report: encrypted for the owner and the auditor, attached to the "
             "new sensor")
        report = self.directory / f"maintenance-report-{self.twin}.txt"
        report.write_text(REPORT)
        document = self.cli("twin", "doc", "add", self.twin, str(report), "--home", maintainer, "--title",
                            "Maintenance report", "--component", "level-sensor-2", "--reader", "owner", "--reader",
                            "auditor")  # fmt: skip
        doc_id = document["document"]

        step("what each organisation can read")
        self._read_doc(owner, doc_id, "owner")
        low = self._samples(owner, "line-1-bottles-filled")
        note(f"owner: production figures too ({int(low[-1][1])} bottles filled)")
        failure = self._samples(manufacturer, "level-sensor-1-level")
        below = [v for _, v in failure if v < 180]
        if not below:
            raise StepFailed("the manufacturer's copy of the failure data holds no low reading")
        note(f"manufacturer: the broken sensor's feed through its grant, {len(failure)} readings, "
             f"{len(below)} of them below 180 mm (min {min(below):.1f} mm)")  # fmt: skip
        why = self.refused("twin", "feed", "read", self.twin, "line-1-bottles-filled", "--home", manufacturer)
        note(f"manufacturer: production figures refused — {why}", style="green")
        self._read_doc(auditor, doc_id, "auditor")
        why = self.refused("twin", "doc", "get", self.twin, doc_id, "--home", manufacturer, "-o",
                           str(self.directory / "not-for-the-manufacturer.txt"))  # fmt: skip
        note(f"manufacturer: the report refused — {why}", style="green")

        step("program calls: the specification allows the conveyor 0–2.5 m/s")
        why = self.refused("twin", "call", self.twin, "SetVelocity", "velocity=3.0", "--home", owner)
        note(f"3.0 m/s refused by the contract — {why}", style="green")
        queued = self.cli("twin", "call", self.twin, "SetVelocity", "velocity=1.0", "--home", owner)
        number = next(e["data"]["call"] for e in queued["receipt"]["events"] if e["type"] == "ProgramCalled")
        call = wait_for(lambda: next((c for c in self.view()["calls"] if c["number"] == number
                                      and c["status"] not in ("queued", "dispatched")), None),
                        "the agent to run the call")  # fmt: skip
        if call["status"] != "executed":
            raise StepFailed(f"the safe call ended {call['status']}: {call['result']}")
        velocity = self.plant("plant", None, read="conveyor-1/Velocity")
        note(f"1.0 m/s queued → dispatched → executed by the agent; the conveyor now runs at {velocity} m/s")

        self.audit()

    def _samples(self, home: str, component: str) -> list[tuple[int, float]]:
        try:
            answer = self.cli("twin", "feed", "read", self.twin, component, "--home", home, quiet=True)
        except StepFailed:
            return []
        return [(t, v) for t, v in answer["samples"]]

    def _read_doc(self, home: str, doc_id: str, who: str) -> None:
        copy = self.directory / f"report-read-by-{who}-{self.twin}.txt"
        self.cli("twin", "doc", "get", self.twin, doc_id, "--home", home, "-o", str(copy))
        if copy.read_text() != REPORT:
            raise StepFailed(f"the report {who} read differs from the one filed")
        note(f"{who}: the maintenance report, decrypted and checked against its hash on chain")

    def audit(self) -> None:
        step("the audit report: every change of the twin, each with an inclusion proof verified offline")
        config = load_config(self.homes["auditor"])
        client = NodeClient(config)
        try:
            entries = client.request("GET", f"/v1/twins/{self.twin}/audit", params={"proofs": "true"})["entries"]
        finally:
            client.close()
        trusted = validators_hash(list(Genesis.read(config.genesis_path).validator_keys))
        proofs = self.directory / f"proofs-{self.twin}"
        proofs.mkdir(exist_ok=True)
        for entry in entries:
            verified = verify_proof(parse_proof(json.dumps(entry["proof"])), trusted)
            (proofs / f"{entry['tx']}.json").write_text(json.dumps(entry["proof"], indent=2))
            by = entry.get("organisation") or "device plc-1"
            note(f"[green]valid[/] block {verified.height:>4}  {by:<13} {entry['method']:<28} "
                 f"{', '.join(entry['events'])}")  # fmt: skip
        tampered = dict(entries[-1]["proof"])
        raw = bytearray(bytes.fromhex(tampered["transaction"]))
        raw[-1] ^= 0x01
        tampered["transaction"] = raw.hex()
        try:
            verify_proof(parse_proof(json.dumps(tampered)), trusted)
        except InvalidProof as exc:
            note(f"[green]rejected[/] a proof with one byte changed: {exc.message}")
        else:
            raise StepFailed("a tampered proof was accepted")
        note(f"{len(entries)} proofs written to {proofs}; check one with: twinledger verify proof FILE")

    def addresses(self) -> None:
        for organisation in ORGANISATIONS:
            run = json.loads((self.homes[organisation] / "run" / "node.json").read_text())
            note(f"{organisation:<13} API {run['api']}  (OpenAPI {run['api']}/docs, GraphQL {run['api']}/graphql)")


def run_demo(directory: Path | None, exit_after: bool) -> bool:
    demo = Demo((directory or Path("demo-network")).resolve())
    demo.directory.mkdir(parents=True, exist_ok=True)
    ok = False
    try:
        demo.start()
        demo.scenario()
        ok = True
        step("[green]every step succeeded[/]")
        if not exit_after:
            console.print("\n[bold]The consortium keeps running:[/]")
            demo.addresses()
            note(f"Try: twinledger twin show {demo.twin} --home {demo.home('owner')}")
            note("Press Ctrl-C to stop everything.")
            _wait_for_interrupt()
    except StepFailed as exc:
        console.print(f"\n[bold red]✗ {exc.message}[/]")
    finally:
        demo.stop()
        step("everything stopped")
    return ok


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
