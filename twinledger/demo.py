"""``twinledger demo``: start a node on embedded defaults, record a few things a plant
produces, and verify an inclusion proof offline. (The bottling-plant scenario of the
Dietz paper replaces this once twins, store and sharing exist.)"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path

from rich.console import Console

from twinledger.cli.client import NodeClient
from twinledger.config import init_home, load_config
from twinledger.core.proof import parse_proof, verify_proof
from twinledger.errors import InvalidProof, TwinledgerError
from twinledger.launcher import start_node

console = Console()

RECORDS = [
    ("specification excerpt", "application/xml",
     b'<InternalElement Name="LevelSensor01" ID="ls-01"><Attribute Name="range" Value="0..1.2 m"/></InternalElement>'),
    ("sensor reading", "application/json",
     json.dumps({"sensor": "ls-01", "level_m": 0.82, "time": "2026-11-22T08:00:00Z"}).encode()),
]  # fmt: skip
REPORT = b"Maintenance report: level sensor ls-01 replaced by ls-02 (serial 7731), calibrated.\n"


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
        console.print(f"  node API at {node.url}  (OpenAPI docs at {node.url}/docs)")
        client = NodeClient(config)
        chain_id = client.health()["chain_id"]
        operator = config.signing_key("operator")
        hashes: list[tuple[str, str]] = []
        for label, media_type, payload in RECORDS:
            tx = client.call(operator, "records", "put",
                             {"payload": payload, "media_type": media_type, "metadata": {"label": label}},
                             chain_id)  # fmt: skip
            hashes.append((label, tx.hash.hex()))
        report_digest = hashlib.sha256(REPORT).digest()
        tx = client.call(operator, "records", "put",
                         {"payload_hash": report_digest, "media_type": "text/plain",
                          "metadata": {"label": "maintenance report (hash only)"}}, chain_id)  # fmt: skip
        hashes.append(("maintenance report (hash only)", tx.hash.hex()))
        step("recorded, waiting for the commits:")
        for label, tx_hash in hashes:
            view = client.transaction(tx_hash, wait=30)
            if view.get("status") != "committed" or view["receipt"]["status"] != "ok":
                raise TwinledgerError(f"{label} was not committed")
            console.print(f"  {label:<32} block {view['block']['height']:>3}  tx {tx_hash[:16]}…")

        step("fetching an inclusion proof for the maintenance report")
        proof_doc = client.transaction(hashes[-1][1], proof=True)["proof"]
        proof_file = home / "proofs" / f"{hashes[-1][1]}.json"
        proof_file.parent.mkdir(exist_ok=True)
        proof_file.write_text(json.dumps(proof_doc, indent=2))
        console.print(f"  written to {proof_file}")

        step("verifying it offline (nothing but the file's bytes)")
        verified = verify_proof(parse_proof(proof_file.read_text()))
        console.print(f"  [green]valid[/]: record {verified.tx_hash.hex()[:16]}… is in block "
                      f"{verified.height}, signed by {len(verified.signers)} validator(s)")  # fmt: skip

        step("tampering with one byte of the proof's transaction")
        tampered = dict(proof_doc)
        raw = bytearray(bytes.fromhex(tampered["transaction"]))
        raw[-1] ^= 0x01
        tampered["transaction"] = raw.hex()
        try:
            verify_proof(parse_proof(json.dumps(tampered)))
            console.print("  [red]the tampered proof was accepted[/]")
            return False
        except InvalidProof as exc:
            console.print(f"  [green]rejected[/]: {exc.message}")

        step("checking every block, Merkle root, signature and state root")
        from twinledger.consensus import create_consensus
        from twinledger.contracts import default_runtime
        from twinledger.ledger.genesis import Genesis
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
        console.print(f"  [green]chain OK[/]: {report.blocks} blocks, {report.transactions} transactions")
        ok = True
        client.close()
        if not exit_after:
            console.print(f"\n[bold]The node keeps running[/] at {node.url} (home {home}). "
                          "Try: twinledger block show head --home " + str(home))  # fmt: skip
            console.print("Press Ctrl-C to stop it.")
            _wait_for_interrupt()
    finally:
        node.stop()
        step("node stopped")
    return ok


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
