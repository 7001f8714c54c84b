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

Every step calls the same workflow of ``twinledger.services`` the CLI runs, in this
process (the plant simulator and the device agent too), and the narration shows the
command a person would type for it. The demo checks each outcome and says plainly when
one is not what it should be.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import shlex
import shutil
import signal
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from asyncua import Client, ua
from rich.console import Console

from twinledger.agent.agent import DeviceAgent
from twinledger.agent.plant import NAMESPACE, Plant, PlantServer, plant_identity
from twinledger.config import init_network, load_config
from twinledger.core.proof import parse_proof
from twinledger.core.text import plural
from twinledger.errors import InvalidProof, TwinledgerError
from twinledger.ingest.opcua import ApplicationIdentity, DeviceTrust, agent_identity, application_identity, device_session
from twinledger.launcher import NETWORK_FILE, NodeProcess, free_port_block, network_homes, start_node, write_network_file
from twinledger.services import access, devices, documents, feeds, proofs, twins
from twinledger.services.session import Session

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
    """A line of the narration; a command line ("$ …", "Try: …") is never broken, so it
    pastes whole from a narrow terminal or a log."""
    console.print(f"  {text}", style=style, soft_wrap=text.startswith(("$ ", "Try: ")))


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise StepFailed(f"{what} did not happen within {timeout:.0f} s")


class Demo:
    """The consortium, the plant and the agent, driven from one event loop in a thread of
    its own, so the narration (plain code) can wait on what the loop's tasks do."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: list[NodeProcess] = []
        self.homes: dict[str, Path] = {}
        self.sessions: dict[str, Session] = {}
        self.twin = ""
        self.plant_url = ""
        self.plant_server: PlantServer | None = None
        self.agents: list[tuple[asyncio.Event, asyncio.Future[None]]] = []
        self.agent_events: list[str] = []
        logging.getLogger("asyncua").setLevel(logging.ERROR)  # its notices went to the agent's log, not the story
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="demo-loop", daemon=True)
        self._thread.start()

    # -- running workflows ---------------------------------------------------------------------

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 180.0) -> T:
        """Run a coroutine on the demo's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def session(self, organisation: str) -> Session:
        if organisation not in self.sessions:
            self.sessions[organisation] = Session(load_config(self.homes[organisation]))
        return self.sessions[organisation]

    def _show(self, command: str) -> None:
        """A command as it can be pasted where the demo was started: never broken across
        lines, its paths as given from there."""
        note(f"$ twinledger {command}", style="dim")

    def do(self, command: str, organisation: str, work: Callable[[Session], Awaitable[T]], quiet: bool = False) -> T:
        """Run a workflow as ``organisation`` (narrated as the CLI ``command``); StepFailed
        with the workflow's one-line reason if it fails."""
        if not quiet:
            self._show(f"{command} --home {self.home(organisation)}")

        async def call() -> T:
            return await work(self.session(organisation))

        try:
            return self.run(call())
        except TwinledgerError as exc:
            raise StepFailed(f"twinledger {command.split()[0]} failed: {exc.message}") from None

    def refused(self, command: str, organisation: str, work: Callable[[Session], Awaitable[Any]]) -> str:
        """Run a workflow that must be refused; the one line saying why."""
        self._show(f"{command} --home {self.home(organisation)}")

        async def call() -> Any:
            return await work(self.session(organisation))

        try:
            self.run(call())
        except TwinledgerError as exc:
            return exc.message
        raise StepFailed(f"twinledger {command.split()[0]} succeeded but must be refused")

    def home(self, organisation: str) -> str:
        return self.pasteable(self.homes[organisation])

    @staticmethod
    def pasteable(path: Path) -> str:
        """``path`` as a command pasted where the demo was started needs it."""
        absolute = path.absolute()
        return shlex.quote(str(absolute.relative_to(Path.cwd()) if absolute.is_relative_to(Path.cwd()) else absolute))

    def view(self) -> dict[str, Any]:
        return self.do(f"twin show {self.twin}", "owner", lambda s: s.twin(self.twin), quiet=True)

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

        return self.run(talk())

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
        wait_for(lambda: all(self.session(o).node.health()["height"] >= 1 for o in ORGANISATIONS), "the first block")
        note("4 nodes are committing blocks")

    def start_line(self, rate_hz: float = 20.0) -> None:
        """The plant simulator (OPC UA Sign & Encrypt), serving on the demo's loop."""
        port = free_port_block(1)
        plant_identity(self.plant_certs)
        self.trust_on_plant(self.console_identity.path, "console")
        self.plant_server = PlantServer(Plant(), port=port, rate_hz=rate_hz, certs=self.plant_certs)
        self.run(self.plant_server.start())
        self.plant_url = self.plant_server.url
        note(f"$ twinledger plant run --port {port} --certs plant-opcua", style="dim")

    def start_agent(self, device: Path, sampling_ms: int = 50) -> None:
        """Start the device's agent on the demo's loop once the plant trusts its
        certificate (the device directory's opcua.der); it pins the plant's."""
        self.trust_on_plant(device / "opcua.der", device.name)
        keys = access.device_keys(device)
        note(f"$ twinledger agent --home {self.home('owner')} --twin {self.twin} --device {self.pasteable(device)} "
             f"--opcua {self.plant_url}", style="dim")  # fmt: skip

        async def launch() -> tuple[asyncio.Event, asyncio.Future[None]]:
            """Made on the loop's thread: the agent's spool is a database of that thread."""
            agent = DeviceAgent(self.homes["owner"], load_config(self.homes["owner"]), keys, self.twin,
                                self.plant_url, opcua_identity=agent_identity(device, keys.signing.public),
                                opcua_trust=DeviceTrust(self.plant_certs / "opcua.der"), flush_seconds=0.5,
                                sampling_ms=sampling_ms, say=self.agent_events.append)  # fmt: skip
            stop = asyncio.Event()
            return stop, asyncio.ensure_future(agent.run(stop))

        stop, running = self.run(launch())
        self.agents.append((stop, running))

    def agent_said(self, text: str) -> str | None:
        return next((event for event in list(self.agent_events) if text in event), None)

    def stop(self) -> None:
        async def shut_down() -> None:
            for stop, running in self.agents:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running, 30)
            if self.plant_server is not None:
                await self.plant_server.stop()
            for session in self.sessions.values():
                await session.close()
            left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in left:  # what closed connections leave to finish, as asyncio.run would
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(shut_down(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        for node in self.nodes:
            node.stop()

    # -- the scenario --------------------------------------------------------------------------

    def scenario(self) -> None:
        step("the owner registers the plant's digital twin from the manufacturer's AutomationML specification")
        device_id = f"line-1-{secrets.token_hex(3)}"
        created = self.do(f"twin create --aml {PLANT.name} --name 'Bottling line 1' --device-id {device_id}", "owner",
                          lambda s: twins.create(s, PLANT.read_bytes(), "Bottling line 1", device_id))  # fmt: skip
        self.twin = created.twin
        note(f"twin {self.twin}: conveyor, filler, level and flow sensors, capper; programs with safety rules")
        for party in ("maintainer", "auditor"):
            self.do(f"twin role grant {self.twin} {party} {party}", "owner",
                    lambda s, p=party: twins.grant_role(s, self.twin, p, p, []))  # fmt: skip
        device = self.directory / f"plc-{self.twin}"
        self.do(f"device add --twin {self.twin} --name plc-1 --out {device}", "owner",
                lambda s: devices.add(s, self.twin, "plc-1", device))  # fmt: skip
        note("the line's PLC is a device of the twin with its own keys and the device-agent role")

        step("the plant comes online (OPC UA simulator) and the device agent connects it to the twin")
        self.start_line()
        note(f"$ cp {device.name}/opcua.der plant-opcua/trusted/", style="dim")
        note("the PLC trusts the agent's OPC UA certificate; the agent pins the PLC's")
        self.start_agent(device)
        attached = wait_for(lambda: (f := self.view()["feeds"]) and len(f) == 4 and f, "the agent to attach the feeds")
        note(f"agent: {wait_for(lambda: self.agent_said('connected to the device'), 'the agent to connect')}")
        for feed in sorted(attached, key=lambda f: f["component"]):
            note(f"feed of {feed['component']:<24} {feed['description']}")
        wait_for(lambda: self._samples("owner", "level-sensor-1-level"), "level readings in the store")
        note("readings flow into the store, encrypted on the owner's premises; each feed's head is checkpointed on chain")

        step("the owner shares sensor data with the manufacturer: a KP-CPRE grant, re-encrypted by the owner's proxy")
        self.do(f"grant --twin {self.twin} --to manufacturer --policy kind:sensor", "owner",
                lambda s: access.grant(s, self.twin, "manufacturer", "kind:sensor"))  # fmt: skip
        note("policy twin:<id> AND kind:sensor covers both sensors' feeds, not the production counters")

        step("the level sensor breaks: it reads a constant low level, the filler keeps filling, bottles flood")
        self.plant("plant", "BreakLevelSensor")
        flooded = wait_for(lambda: self.plant("plant", None, read="line-1/FloodedBottles"), "bottles to flood")
        (alert,) = wait_for(lambda: self.view()["anomalies"], "the anomaly check's alert")
        note(f"{plural(flooded, 'bottle')} flooded so far", style="red")
        note(f"[bold red]ALERT[/] on chain: {alert['signal']} reads {alert['deviation']} its expected range "
             f"{alert['minimum']}–{alert['maximum']} {alert['unit']} (feed update {alert['sequence']})")  # fmt: skip

        step("the maintainer replaces the sensor; the device agent notices the new serial number by itself (§5.2)")
        self.plant("plant", "ReplaceLevelSensor", NEW_SERIAL)
        view = wait_for(lambda: (v := self.view()) and any(f["component"] == "level-sensor-2-level" for f in v["feeds"])
                        and v, "the agent to replace the sensor's specification entry and feed")  # fmt: skip
        for text in ("replacing it by", "removed from the specification", "inserted into the specification",
                     "level-sensor-2-level: new encrypted feed"):  # fmt: skip
            note(f"agent: {wait_for(lambda t=text: self.agent_said(t), f'the agent to report: {text}', 10.0)}")
        if view["anomalies"]:
            raise StepFailed("the alert is still open after the replacement")
        wait_for(lambda: self._samples("owner", "level-sensor-2-level"), "the new sensor's readings")
        note("the new sensor streams into its own feed; the alert closed with the old sensor")

        step("the maintainer files the maintenance report: encrypted for the owner and the auditor, attached to the "
             "new sensor")
        report = self.directory / f"maintenance-report-{self.twin}.txt"
        report.write_text(REPORT)
        document = self.do(f"twin doc add {self.twin} {report} --title 'Maintenance report' --component "
                           "level-sensor-2 --reader owner --reader auditor", "maintainer",
                           lambda s: documents.add(s, self.twin, report, "Maintenance report",
                                                   component="level-sensor-2", readers=["owner", "auditor"]))  # fmt: skip
        doc_id = document.document

        step("what each organisation can read")
        self._read_doc("owner", doc_id)
        low = self._samples("owner", "line-1-bottles-filled")
        note(f"owner: production figures too ({plural(int(low[-1][1]), 'bottle')} filled)")
        failure = self._samples("manufacturer", "level-sensor-1-level")
        below = [v for _, v in failure if v < 180]
        if not below:
            raise StepFailed("the manufacturer's copy of the failure data holds no low reading")
        note(f"manufacturer: the broken sensor's feed through its grant, {len(failure)} readings, "
             f"{len(below)} of them below 180 mm (min {min(below):.1f} mm)")  # fmt: skip
        why = self.refused(f"twin feed read {self.twin} line-1-bottles-filled", "manufacturer",
                           lambda s: feeds.read(s, self.twin, "line-1-bottles-filled"))  # fmt: skip
        note(f"manufacturer: production figures refused — {why}", style="green")
        self._read_doc("auditor", doc_id)
        refused_copy = self.directory / "not-for-the-manufacturer.txt"
        why = self.refused(f"twin doc get {self.twin} {doc_id[:16]} -o {refused_copy.name}", "manufacturer",
                           lambda s: documents.get(s, self.twin, doc_id, refused_copy))  # fmt: skip
        note(f"manufacturer: the report refused — {why}", style="green")

        step("program calls: the specification allows the conveyor 0–2.5 m/s")
        why = self.refused(f"twin call {self.twin} SetVelocity velocity=3.0", "owner",
                           lambda s: twins.call_program(s, self.twin, "SetVelocity", {"velocity": "3.0"}))  # fmt: skip
        note(f"3.0 m/s refused by the contract — {why}", style="green")
        queued = self.do(f"twin call {self.twin} SetVelocity velocity=1.0", "owner",
                         lambda s: twins.call_program(s, self.twin, "SetVelocity", {"velocity": "1.0"}))  # fmt: skip
        number = queued.event("ProgramCalled")["call"]
        call = wait_for(lambda: next((c for c in self.view()["calls"] if c["number"] == number
                                      and c["status"] not in ("queued", "dispatched")), None),
                        "the agent to run the call")  # fmt: skip
        if call["status"] != "executed":
            raise StepFailed(f"the safe call ended {call['status']}: {call['result']}")
        velocity = self.plant("plant", None, read="conveyor-1/Velocity")
        note(f"1.0 m/s queued → dispatched → executed by the agent; the conveyor now runs at {velocity} m/s")

        self.audit()

    def _samples(self, organisation: str, component: str) -> list[tuple[int, float]]:
        try:
            read = self.do(f"twin feed read {self.twin} {component}", organisation,
                           lambda s: feeds.read(s, self.twin, component), quiet=True)  # fmt: skip
        except StepFailed:
            return []
        return list(read.samples)

    def _read_doc(self, organisation: str, doc_id: str) -> None:
        copy = self.directory / f"report-read-by-{organisation}-{self.twin}.txt"
        self.do(f"twin doc get {self.twin} {doc_id[:16]} -o {copy.name}", organisation,
                lambda s: documents.get(s, self.twin, doc_id, copy))  # fmt: skip
        if copy.read_text() != REPORT:
            raise StepFailed(f"the report {organisation} read differs from the one filed")
        note(f"{organisation}: the maintenance report, decrypted and checked against its hash on chain")

    def audit(self) -> None:
        step("the audit report: every change of the twin, each with an inclusion proof verified offline")
        audit = self.do(f"twin audit {self.twin}", "auditor", lambda s: twins.audit(s, self.twin))
        if not audit.verified:
            raise StepFailed("a proof of the audit does not verify")
        entries = audit.entries
        trusted = audit.trusted
        written = self.directory / f"proofs-{self.twin}"
        written.mkdir(exist_ok=True)
        for entry in entries:
            verified = proofs.check(parse_proof(json.dumps(entry["proof"])), trusted)
            (written / f"{entry['tx']}.json").write_text(json.dumps(entry["proof"], indent=2))
            by = entry.get("organisation") or "device plc-1"
            note(f"[green]valid[/] block {verified.height:>4}  {by:<13} {entry['method']:<28} "
                 f"{', '.join(entry['events'])}")  # fmt: skip
        tampered = dict(entries[-1]["proof"])
        raw = bytearray(bytes.fromhex(tampered["transaction"]))
        raw[-1] ^= 0x01
        tampered["transaction"] = raw.hex()
        try:
            proofs.check(parse_proof(json.dumps(tampered)), trusted)
        except InvalidProof as exc:
            note(f"[green]rejected[/] a proof with one byte changed: {exc.message}")
        else:
            raise StepFailed("a tampered proof was accepted")
        note(f"{len(entries)} proofs written to {written}; check one with: "
             f"twinledger verify proof FILE --home {self.home('auditor')}")  # fmt: skip

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
