"""``twinledger demo``: start a node on embedded defaults and play the bottling-plant
sensor replacement of Dietz et al. §5 on the twin contracts: register the plant's twin,
refuse an unsafe program call and run a safe one, let the device agent replace the
broken level sensor (specification and feed), store the maintenance report encrypted
off-chain and attach it, and audit the twin with proofs verified offline. (The full scenario with store, sharing and the
plant simulator grows from this.)"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from twinledger.cli.storage import with_store
from twinledger.client import NodeClient, organisation_key
from twinledger.config import NodeConfig, init_home, load_config
from twinledger.core.proof import parse_proof, validators_hash, verify_proof
from twinledger.crypto.keys import SigningKey
from twinledger.errors import InvalidProof, TwinledgerError
from twinledger.launcher import start_node
from twinledger.ledger.genesis import Genesis
from twinledger.store.client import StoreClient
from twinledger.store.documents import StoredDocument, as_reader, download_document, upload_document

console = Console()
PLANT = Path(__file__).resolve().parent.parent / "examples" / "bottling-plant.aml"
NEW_SENSOR = (b'<InternalElement Name="FillLevelSensor2" ID="level-sensor-2">'
              b'<Attribute Name="Model" AttributeDataType="xs:string"><Value>LS-300</Value></Attribute>'
              b'<Attribute Name="SerialNumber" AttributeDataType="xs:string"><Value>LS300-0117</Value></Attribute>'
              b"</InternalElement>")  # fmt: skip
REPORT = b"Maintenance report: level sensor LS-200 replaced by LS-300 (serial LS300-0117), calibrated.\n"


def step(text: str) -> None:
    console.print(f"[bold cyan]▶[/] {text}")


def run_demo(directory: Path | None, exit_after: bool) -> bool:
    home = (directory or Path("demo-node")).resolve()
    if (home / "node.toml").exists():
        step(f"reusing the node home in {home}")
        config = load_config(home)
    else:
        step(f"creating a node home for organisation [bold]bottling-plant[/] in {home}")
        config = init_home(home, "bottling-plant", api_port=0, block_interval_ms=100)
    step("starting the node (solo consensus, SQLite store, API on loopback)")
    node = start_node(home)
    ok = False
    try:
        console.print(f"  node API at {node.url}  (OpenAPI docs at {node.url}/docs, GraphQL at {node.url}/graphql)")
        client = NodeClient(config)
        ok = _scenario(home, config, client)
        client.close()
        if not ok:
            return False
        if not exit_after:
            console.print(f"\n[bold]The node keeps running[/] at {node.url} (home {home}). "
                          "Try: twinledger twin list --home " + str(home))  # fmt: skip
            console.print("Press Ctrl-C to stop it.")
            _wait_for_interrupt()
    finally:
        node.stop()
        step("node stopped")
    return ok


def _store_report(home: Path, owner: SigningKey) -> StoredDocument:
    """Upload the report encrypted for the plant's organisation, then read it back."""
    report = home / "maintenance-report.txt"
    report.write_bytes(REPORT)

    async def work(config: NodeConfig, store: StoreClient, members: dict[str, Any]) -> StoredDocument:
        key = next(o["encryption_key"] for o in members["organisations"] if o["name"] == config.organisation)
        stored = await upload_document(store, report, owner, config.organisation,
                                       {config.organisation: bytes.fromhex(key)})  # fmt: skip
        copy = home / "maintenance-report.from-store.txt"
        await download_document(store, stored.reference, stored.manifest,
                                as_reader(config.organisation, organisation_key(config)), copy)  # fmt: skip
        if copy.read_bytes() != REPORT:
            raise TwinledgerError("the report read back from the store differs from the one stored")
        return stored

    return with_store(home, work)


def _scenario(home: Path, config: NodeConfig, client: NodeClient) -> bool:
    if not PLANT.exists():
        raise TwinledgerError(f"the example plant {PLANT} is missing; run the demo from the source tree")
    chain_id = client.health()["chain_id"]

    def call(key: SigningKey, method: str, **args: Any) -> dict[str, Any]:
        return client.commit(key, "twins", method, args, chain_id)

    owner = config.signing_key("operator")
    agent = SigningKey.generate()

    step("registering the bottling plant's twin from its AutomationML specification")
    created = call(owner, "create", name="Bottling plant", device_id=f"plant-{agent.public.hex()[:6]}",
                          aml=PLANT.read_bytes(),
                          roles={f"key:{agent.public.hex()}": {"device-agent": ["filler-1"]}})  # fmt: skip
    twin = created["receipt"]["events"][0]["data"]["twin"]
    console.print(f"  twin {twin} at block {created['block']['height']}; the device agent may act within filler-1")

    step("an operator asks the conveyor for 3.0 m/s; the specification allows at most 2.5")
    unsafe = call(owner, "call_program", twin=twin, program="SetVelocity", params={"velocity": "3.0"})
    if unsafe["receipt"]["status"] != "failed":
        console.print("  [red]the unsafe call was accepted[/]")
        return False
    console.print(f"  [green]rejected[/]: {unsafe['receipt']['message']}")
    step("a safe fill volume is queued, dispatched and executed by the device agent")
    queued = call(owner, "call_program", twin=twin, program="SetFillVolume",
                         params={"volume": 500, "valve_check": True})  # fmt: skip
    number = queued["receipt"]["events"][0]["data"]["call"]
    call(agent, "dispatch_call", twin=twin, call=number)
    call(agent, "report_call", twin=twin, call=number, status="executed", result="500 ml set")
    console.print(f"  call {number}: queued → dispatched → executed")

    step("the level sensor breaks; the device agent replaces its specification entry and feed (§5.2)")
    for method, args in (("add_feed", {"component": "level-sensor-1", "reference": "feed:level-sensor-1"}),
                         ("remove_aml", {"element": "level-sensor-1"}),
                         ("insert_aml", {"fragment": NEW_SENSOR, "parent": "filler-1", "after": "flow-sensor-1"}),
                         ("add_feed", {"component": "level-sensor-2", "reference": "feed:level-sensor-2"})):  # fmt: skip
        view = call(agent, method, twin=twin, **args)
        if view["receipt"]["status"] != "ok":
            raise TwinledgerError(f"{method}: {view['receipt']['message']}")
        console.print(f"  {method:<11} {', '.join(e['type'] for e in view['receipt']['events'])}")
    outside = call(agent, "remove_aml", twin=twin, element="conveyor-1")
    console.print(f"  [green]refused[/] outside its scope: {outside['receipt']['message']}")

    step("the maintenance report is encrypted into the off-chain store and attached to the new sensor")
    stored = _store_report(home, owner)
    call(owner, "add_document", twin=twin, hash=stored.manifest, title="Maintenance report",
                reference=stored.reference, size=stored.size, component="level-sensor-2")  # fmt: skip
    console.print(f"  document {stored.manifest.hex()[:16]}… in the store; read back, verified against the chain "
                  "and decrypted")  # fmt: skip
    step("the specification changed so:")
    diff = client.request("GET", f"/v1/twins/{twin}/diff", params={"from": 1})["diff"]
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and 'InternalElement ID="' in line]
    for line in changed:
        console.print(f"  {line.strip()}", style="green" if line.startswith("+") else "red", highlight=False)

    step("auditing the twin: every change with an inclusion proof, verified offline")
    entries = client.request("GET", f"/v1/twins/{twin}/audit", params={"proofs": "true"})["entries"]
    trusted = validators_hash(list(Genesis.read(config.genesis_path).validator_keys))
    proofs = home / "proofs"
    proofs.mkdir(exist_ok=True)
    for entry in entries:
        verified = verify_proof(parse_proof(json.dumps(entry["proof"])), trusted)
        (proofs / f"{entry['tx']}.json").write_text(json.dumps(entry["proof"], indent=2))
        console.print(f"  [green]valid[/] {entry['method']:<26} block {verified.height:>3}  {', '.join(entry['events'])}")
    tampered = dict(entries[-1]["proof"])
    raw = bytearray(bytes.fromhex(tampered["transaction"]))
    raw[-1] ^= 0x01
    tampered["transaction"] = raw.hex()
    try:
        verify_proof(parse_proof(json.dumps(tampered)), trusted)
        console.print("  [red]a tampered proof was accepted[/]")
        return False
    except InvalidProof as exc:
        console.print(f"  [green]rejected[/] a proof with one byte changed: {exc.message}")
    console.print(f"  proofs written to {proofs}")
    return _verify_chain(config)


def _verify_chain(config: NodeConfig) -> bool:
    step("checking every block, Merkle root, signature and state root")
    from twinledger.consensus import create_consensus
    from twinledger.contracts import default_runtime
    from twinledger.ledger.store import open_store
    from twinledger.ledger.verify import verify_chain

    genesis = Genesis.read(config.genesis_path)
    store = open_store(config.store_url)
    try:
        report = verify_chain(store, genesis, create_consensus(genesis, None), default_runtime())
    finally:
        store.close()
    if not report.ok:
        console.print(f"  [red]chain invalid[/]: {report.problems}")
        return False
    console.print(f"  [green]chain OK[/]: {report.blocks} blocks, {report.transactions} transactions, state replayed")
    return True


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
