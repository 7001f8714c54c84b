"""``twinledger bench network``: validator processes on this machine running bft over
mutual TLS, 1 kB signed transactions submitted to all of them, until every one is
committed on every node. In the same run, the ceiling: as many processes, each
decoding, verifying and durably storing every transaction, at once."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from twinledger.bench.byzantine import attack_main
from twinledger.bench.ledger import ceiling_run, make_transactions, publish, run_measures, submit_all
from twinledger.config import init_network
from twinledger.core.types import Transaction, encode_transaction
from twinledger.launcher import NodeProcess, free_port_block, start_node

CHAIN_ID = "bench-consortium"
console = Console(stderr=True)


def measure_parallel_ceiling(txs: list[Transaction], processes: int, batch: int, workdir: Path) -> float:
    """Every one of ``processes`` processes handles every transaction; the network can
    commit no faster than they all finish."""
    raw = [encode_transaction(tx) for tx in txs]
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(ceiling_run, [raw[:10]] * processes, [10] * processes,
                      [str(workdir / f"warm-{i}.db") for i in range(processes)], [CHAIN_ID] * processes))  # fmt: skip
        start = time.perf_counter()
        list(pool.map(ceiling_run, [raw] * processes, [batch] * processes,
                      [str(workdir / f"ceiling-{i}.db") for i in range(processes)], [CHAIN_ID] * processes))  # fmt: skip
        elapsed = time.perf_counter() - start
    return len(raw) / elapsed


def _block_intervals(node: NodeProcess, first: int, last: int) -> list[float]:
    times = [httpx.get(f"{node.url}/v1/blocks/{h}", headers=node.headers, timeout=30).json()["header"]["timestamp"]
             for h in range(first, last + 1)]  # fmt: skip
    return [(b - a) / 1000 for a, b in itertools.pairwise(times)]


def run_network_benchmark(validators: int, txs: int, batch: int, clients: int, window: int, output: Path,
                          as_json: bool, byzantine: bool = False) -> dict[str, Any]:  # fmt: skip
    """With ``byzantine``, two more runs on the same network: the last validator stopped
    (a crash), then its key in an attacker's hands (``bench/byzantine.py``)."""
    with tempfile.TemporaryDirectory(prefix="twinledger-bench-net-") as tmp, Progress(console=console) as progress:
        workdir = Path(tmp)
        orgs = [f"org{i}" for i in range(validators)]
        configs = init_network(workdir / "net", orgs, chain_id=CHAIN_ID, base_port=free_port_block(3 * validators),
                               block_interval_ms=100)  # fmt: skip
        phases = 3 if byzantine else 1
        transactions = make_transactions(txs * phases, senders=clients * 8, progress=progress, chain_id=CHAIN_ID)
        starting = progress.add_task("starting validators", total=validators)
        nodes: list[NodeProcess] = []
        try:
            for org in orgs:
                nodes.append(start_node(workdir / "net" / org))
                progress.advance(starting)
            result = _run(nodes, transactions[:txs], batch, clients, window, progress)
            if byzantine:
                honest = nodes[:-1]
                nodes[-1].stop()
                crashed = _run(honest, transactions[txs : 2 * txs], batch, clients, window, progress)
                with Attacker(configs[-1].home, [f"{c.p2p_host}:{c.p2p_port}" for c in configs[:-1]]) as attacker:
                    attacked = _run(honest, transactions[2 * txs :], batch, clients, window, progress)
                result["byzantine"] = {
                    "crashed": _phase(crashed),
                    "attacking": {**_phase(attacked), "attacks_sent": attacker.sent},
                    "honest_tracebacks": sum(node.log_path.read_text().count("Traceback") for node in honest),
                    "evidence_on_honest_nodes": [len(httpx.get(f"{node.url}/v1/evidence", headers=node.headers,
                                                               timeout=30).json()["evidence"]) for node in honest],
                }  # fmt: skip
        finally:
            for node in nodes:
                node.stop()
        ceiling_task = progress.add_task("measuring the ceiling", total=None)
        ceiling = measure_parallel_ceiling(transactions[:txs], validators, batch, workdir)
        progress.update(ceiling_task, total=1, completed=1)

    measures = run_measures(*result.pop("times"), ceiling)
    result = {"benchmark": "network", "validators": validators, "transactions": txs, "tx_bytes": 1024, "batch": batch,
              "clients": clients, "window": window, **result, **measures}  # fmt: skip
    keys = ["committed", "committed_on_every_node", "blocks", "seconds", "committed_tx_per_s", "latency_p50_ms",
            "latency_p99_ms", "block_interval_median_s", "ceiling_tx_per_s", "ratio_to_ceiling"]
    publish(result, output, as_json, f"network benchmark ({validators} validators, bft)", keys,
            [("safe-UR-chain (paper)", "100 tx/s, 15 s blocks"), ("BigchainDB (4 × 32 vCPU)", "298 tx/s")])  # fmt: skip
    if byzantine and not as_json:
        _print_byzantine(result)
    return result


def _run(nodes: list[NodeProcess], transactions: list[Transaction], batch: int, clients: int, window: int,
         progress: Progress) -> dict[str, Any]:  # fmt: skip
    """Submit ``transactions`` to ``nodes`` until all are committed; what it took."""
    first_height = httpx.get(f"{nodes[0].url}/v1/health").json()["height"] + 1
    times = asyncio.run(submit_all(nodes, transactions, batch, clients, CHAIN_ID, progress, window))
    heights = [httpx.get(f"{node.url}/v1/health").json()["height"] for node in nodes]
    intervals = _block_intervals(nodes[0], first_height, heights[0])
    return {"committed_on_every_node": _committed_everywhere(nodes, max(heights), transactions),
            "blocks": len(intervals) + 1,
            "block_interval_median_s": round(statistics.median(intervals), 3) if intervals else None,
            "times": times}  # fmt: skip


def _phase(run: dict[str, Any]) -> dict[str, Any]:
    measures = run_measures(*run.pop("times"), ceiling=1.0)
    return {**run, **{k: measures[k] for k in ("committed", "seconds", "committed_tx_per_s", "latency_p50_ms",
                                                  "latency_p99_ms")}}  # fmt: skip


def _print_byzantine(result: dict[str, Any]) -> None:
    table = Table("run", "committed", "tx/s", "p50 ms", "p99 ms", "on every honest node",
                  title="one member of the consortium: honest, stopped, attacking", title_justify="left")  # fmt: skip
    rows = [("no fault", result), ("one crashed", result["byzantine"]["crashed"]),
            ("one attacking", result["byzantine"]["attacking"])]  # fmt: skip
    for name, run in rows:
        table.add_row(name, str(run["committed"]), str(run["committed_tx_per_s"]), str(run["latency_p50_ms"]),
                      str(run["latency_p99_ms"]), str(run["committed_on_every_node"]))  # fmt: skip
    Console().print(table)
    attacks = result["byzantine"]["attacking"]["attacks_sent"]
    Console().print("attacks sent: " + ", ".join(f"{name} {count}" for name, count in sorted(attacks.items())))
    Console().print(f"tracebacks in honest logs: {result['byzantine']['honest_tracebacks']}; evidence stored: "
                    f"{result['byzantine']['evidence_on_honest_nodes']}")  # fmt: skip


class Attacker:
    """The attacking member in its own process, so its work does not slow the load."""

    def __init__(self, home: Path, targets: list[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._report: Any = context.Queue()
        self._process = context.Process(target=attack_main, args=(str(home), targets, self._stop, self._report),
                                        daemon=True)  # fmt: skip
        self.sent: dict[str, int] = {}

    def __enter__(self) -> Attacker:
        self._process.start()
        if self._report.get(timeout=120) != "ready":  # connected to every honest node: the attack is on
            raise RuntimeError("the attacking member did not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sent = self._report.get(timeout=120)
        self._process.join(60)


def _committed_everywhere(nodes: list[NodeProcess], height: int, txs: list[Transaction]) -> bool:
    """Every node reached ``height`` and holds every benchmark transaction."""
    wanted = {tx.hash.hex() for tx in txs}
    for node in nodes:
        with httpx.Client(base_url=node.url, headers=node.headers, timeout=60) as http:
            if http.get(f"/v1/blocks/{height}", params={"wait": "30"}).status_code != 200:
                return False
            found: set[str] = set()
            for h in range(1, height + 1):
                found.update(tx["hash"] for tx in http.get(f"/v1/blocks/{h}").json()["transactions"])
            if not wanted <= found:
                return False
    return True
