"""`twinledger demo --exit`, the command behind `make demo`, end to end."""

from __future__ import annotations

import subprocess
import sys

from twinledger.core.proof import parse_proof, verify_proof


def test_demo_runs_every_step_and_exits_cleanly(tmp_path):
    home = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "twinledger", "demo", "--dir", str(home), "--exit"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    for outcome in ("above its safe maximum 2.5", "queued → dispatched → executed", "AmlRemoved, FeedRemoved",
                    "refused outside its scope", "read back, verified against the chain and decrypted",
                    "rejected a proof with one byte changed", "chain OK"):
        assert outcome in " ".join(run.stdout.split()), outcome
    assert "Traceback" not in run.stdout + run.stderr
    report = (home / "maintenance-report.txt").read_bytes()
    assert (home / "maintenance-report.from-store.txt").read_bytes() == report
    stored = b"".join(p.read_bytes() for p in (home / "data" / "store" / "chunks").glob("*/*"))
    assert stored and b"LS300-0117" not in stored, "the store holds the report encrypted"
    proofs = list((home / "proofs").glob("*.json"))
    assert len(proofs) == 9  # every change of the twin, from its creation to the maintenance report
    for proof in proofs:
        assert verify_proof(parse_proof(proof.read_text())).tx_hash.hex() == proof.stem
    assert not (home / "run" / "node.json").exists(), "--exit must stop the node"

    again = subprocess.run([sys.executable, "-m", "twinledger", "demo", "--dir", str(home), "--exit"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and "reusing the node home" in again.stdout
    assert len(list((home / "proofs").glob("*.json"))) == 18
