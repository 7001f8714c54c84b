"""`twinledger demo --exit`, the command behind `make demo`, end to end: the bottling-plant
scenario on a four-organisation consortium, every step's outcome asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from twinledger.core.proof import parse_proof, verify_proof


def test_demo_plays_the_whole_scenario_and_exits_cleanly(tmp_path):
    directory = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "twinledger", "demo", "--dir", str(directory), "--exit"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    text = " ".join(run.stdout.split())
    assert run.returncode == 0, run.stdout + run.stderr
    for outcome in (
        "4 nodes are committing blocks",
        "(Aes256_Sha256_RsaPss Sign & Encrypt): 5 variable(s) subscribed",
        "feed of level-sensor-1-level",
        "flooded so far",
        "ALERT on chain: level-sensor-1-level reads below its expected range 180–195 mm",
        "replacing it by level-sensor-2",
        "AmlRemoved, FeedRemoved, AnomalyCleared",
        "level-sensor-2: inserted into the specification",
        "owner: the maintenance report, decrypted and checked",
        "owner: production figures too",
        "manufacturer: the broken sensor's feed through its grant",
        "manufacturer: production figures refused",
        "auditor: the maintenance report, decrypted and checked",
        "manufacturer: the report refused",
        "3.0 m/s refused by the contract",
        "above its safe maximum 2.5",
        "executed by the agent; the conveyor now runs at 1.0 m/s",
        "rejected a proof with one byte changed",
        "every step succeeded",
        "everything stopped",
    ):
        assert outcome in text, outcome
    assert "Traceback" not in run.stdout + run.stderr
    commands = [line.strip() for line in run.stdout.splitlines()
                if line.strip().startswith("$ twinledger") and not line.strip().startswith("$ twinledger plant")]
    homes = [re.search(r"--home (\S+)", line) for line in commands]
    assert commands and all(homes), "each command line holds its whole --home, unbroken at 80 columns"
    assert all(Path(found[1]).is_dir() and (Path(found[1]) / "node.toml").exists() for found in homes if found), \
        "the printed --home works where the demo was started"  # fmt: skip
    (proofs,) = directory.glob("proofs-*")
    files = list(proofs.glob("*.json"))
    assert len(files) >= 12
    for proof in files:
        assert verify_proof(parse_proof(proof.read_text())).tx_hash.hex() == proof.stem
    assert not list(directory.glob("*/run/node.json")), "--exit stops every node"
    stored = b"".join(p.read_bytes() for p in directory.glob("*/data/store/chunks/*/*"))
    assert stored and b"LS200-9911" not in stored and b"Maintenance report" not in stored, "the store holds ciphertext"
