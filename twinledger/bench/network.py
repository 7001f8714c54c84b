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
                          as_json: bool) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="twinledger-bench-net-") as tmp, Progress(console=console) as progress:
        workdir = Path(tmp)
        orgs = [f"org{i}" for i in range(validators)]
        init_network(workdir / "net", orgs, chain_id=CHAIN_ID, base_port=free_port_block(3 * validators),
                     block_interval_ms=100)  # fmt: skip
        transactions = make_transactions(txs, senders=clients * 8, progress=progress, chain_id=CHAIN_ID)
        starting = progress.add_task("starting validators", total=validators)
        nodes: list[NodeProcess] = []
        try:
            for org in orgs:
                nodes.append(start_node(workdir / "net" / org))
                progress.advance(starting)
            first_height = httpx.get(f"{nodes[0].url}/v1/health").json()["height"] + 1
            submitted, committed, begin, end = asyncio.run(
                submit_all(nodes, transactions, batch, clients, CHAIN_ID, progress, window)
            )
            heights = [httpx.get(f"{node.url}/v1/health").json()["height"] for node in nodes]
            everywhere = _committed_everywhere(nodes, max(heights), transactions)
            intervals = _block_intervals(nodes[0], first_height, heights[0])
        finally:
            for node in nodes:
                node.stop()
        ceiling_task = progress.add_task("measuring the ceiling", total=None)
        ceiling = measure_parallel_ceiling(transactions, validators, batch, workdir)
        progress.update(ceiling_task, total=1, completed=1)

    result = {
        "benchmark": "network",
        "validators": validators,
        "transactions": txs,
        "tx_bytes": 1024,
        "batch": batch,
        "clients": clients,
        "window": window,
        "committed_on_every_node": everywhere,
        "blocks": len(intervals) + 1,
        "block_interval_median_s": round(statistics.median(intervals), 3) if intervals else None,
        **run_measures(submitted, committed, begin, end, ceiling),
    }
    publish(result, output, as_json, f"network benchmark ({validators} validators, bft)",
            ["committed", "committed_on_every_node", "blocks", "seconds", "committed_tx_per_s", "latency_p50_ms",
             "latency_p99_ms", "block_interval_median_s", "ceiling_tx_per_s", "ratio_to_ceiling"],
            [("safe-UR-chain (paper)", "100 tx/s, 15 s blocks"), ("BigchainDB (4 × 32 vCPU)", "298 tx/s")])  # fmt: skip
    return result


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
