"""``twinledger bench ledger``: one real node process, 1 kB signed transactions submitted
in batches by concurrent clients, until every one is committed. In the same run, the
ceiling: decoding, hashing, verifying and durably storing the same transactions in one
process with nothing else in the way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from twinledger.config import init_home
from twinledger.contracts import calls
from twinledger.core.encoding import encode
from twinledger.core.types import Transaction, decode_transaction, encode_transaction
from twinledger.crypto.keys import SigningKey
from twinledger.launcher import NodeProcess, start_node
from twinledger.ledger.store.sqlite import SqliteChainStore
from twinledger.ledger.validation import validate_transaction

TX_SIZE = 1024
CHAIN_ID = "bench-chain"
console = Console(stderr=True)


def make_transactions(count: int, senders: int, progress: Progress, chain_id: str = CHAIN_ID) -> list[Transaction]:
    """``count`` records.put transactions of TX_SIZE encoded bytes, round-robin over senders."""
    keys = [SigningKey.generate() for _ in range(senders)]
    now = int(time.time() * 1000)

    def tx(key: SigningKey, nonce: int, filler: int) -> Transaction:
        payload = nonce.to_bytes(8, "big") + os.urandom(filler)
        call = calls.put_record("application/octet-stream", {"source": "bench"}, payload=payload)
        return calls.sign(key, call, chain_id=chain_id, nonce=nonce, timestamp=now)

    probe = len(encode_transaction(tx(keys[0], 0, 800)))
    filler = 800 + TX_SIZE - probe
    task = progress.add_task("signing transactions", total=count)
    txs = []
    for i in range(count):
        txs.append(tx(keys[i % senders], i // senders, filler))
        if i % 500 == 0:
            progress.update(task, completed=i)
    progress.update(task, completed=count)
    return txs


def measure_ceiling(txs: list[Transaction], batch: int, workdir: Path, chain_id: str = CHAIN_ID) -> float:
    """Transactions per second for decode + hash + verify + durable store, one process."""
    raw = [encode_transaction(tx) for tx in txs]
    return ceiling_run(raw, batch, str(workdir / "ceiling.db"), chain_id)


def ceiling_run(raw: list[bytes], batch: int, path: str, chain_id: str) -> float:
    """Decode, verify and durably store ``raw`` in batches; transactions per second."""
    store = SqliteChainStore(path)
    start = time.perf_counter()
    for i in range(0, len(raw), batch):
        decoded = []
        for data in raw[i : i + batch]:
            tx = decode_transaction(data)
            validate_transaction(tx, chain_id)
            assert isinstance(tx, Transaction)
            decoded.append(tx)
        store.add_pending(decoded)
    elapsed = time.perf_counter() - start
    store.close()
    return len(raw) / elapsed


async def submit_all(nodes: list[NodeProcess], txs: list[Transaction], batch: int, clients: int, chain_id: str,
                     progress: Progress,
                     window: int = 0) -> tuple[dict[bytes, float], dict[bytes, float], float, float]:  # fmt: skip
    """Submit ``txs`` in batches over ``clients`` connections spread over the nodes at
    ``nodes``; follow the first node's blocks until every one is committed. With a
    ``window``, at most that many transactions are submitted and not yet committed (a
    closed loop, so latency is measured at a load the system sustains). Returns submit and
    commit times per transaction, and the start and end of the run."""
    submitted: dict[bytes, float] = {}
    committed: dict[bytes, float] = {}
    wanted = {tx.hash for tx in txs}
    lanes: list[list[Transaction]] = [[] for _ in range(clients)]
    for i, tx in enumerate(txs):
        lanes[i % clients].append(tx)
    sent = progress.add_task("submitting", total=len(txs))
    done = progress.add_task("committed", total=len(txs))
    in_flight = 0
    room = asyncio.Condition()

    clients_by_node = [httpx.AsyncClient(base_url=node.url, headers=node.headers, timeout=120) for node in nodes]
    http = clients_by_node[0]
    try:
        for node_client in clients_by_node:
            await _warm_up(node_client, len(txs[0].encoded), chain_id)
        start_height = (await http.get("/v1/health")).json()["height"]

        async def lane(items: list[Transaction], node_client: httpx.AsyncClient) -> None:
            nonlocal in_flight
            for j in range(0, len(items), batch):
                chunk = items[j : j + batch]
                if window:
                    async with room:
                        while in_flight and in_flight + len(chunk) > window:
                            await room.wait()
                        in_flight += len(chunk)
                body = encode([encode_transaction(tx) for tx in chunk])
                sent_at = time.perf_counter()
                response = await node_client.post("/v1/transactions/batch", content=body,
                                                  headers={"content-type": "application/octet-stream"})  # fmt: skip
                result = response.json()
                if response.status_code != 200 or result["rejected"]:
                    raise RuntimeError(f"batch refused: {json.dumps(result)[:300]}")
                for tx in chunk:
                    submitted[tx.hash] = sent_at
                progress.advance(sent, len(chunk))

        async def watch() -> None:
            nonlocal in_flight
            height = start_height
            while len(committed) < len(wanted):
                height += 1
                response = await http.get(f"/v1/blocks/{height}", params={"wait": "30"})
                if response.status_code != 200:
                    raise RuntimeError(f"block {height} did not appear: {response.text[:200]}")
                now = time.perf_counter()
                before = len(committed)
                for item in response.json()["transactions"]:
                    digest = bytes.fromhex(item["hash"])
                    if digest in wanted:
                        committed[digest] = now
                async with room:
                    in_flight -= len(committed) - before
                    room.notify_all()
                progress.update(done, completed=len(committed))

        begin = time.perf_counter()
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(lane(items, clients_by_node[i % len(nodes)]) for i, items in enumerate(lanes)))
        await watcher
        end = max(committed.values())
    finally:
        for node_client in clients_by_node:
            await node_client.aclose()
    return submitted, committed, begin, end


async def _warm_up(http: httpx.AsyncClient, size: int, chain_id: str) -> None:
    """Commit one untimed batch first, so the node's verifier processes are running."""
    key = SigningKey.generate()
    now = int(time.time() * 1000)
    batch = [calls.sign(key, calls.put_record("application/octet-stream", {}, payload=os.urandom(size - 200)),
                        chain_id=chain_id, nonce=n, timestamp=now) for n in range(200)]  # fmt: skip
    response = await http.post("/v1/transactions/batch", content=encode([tx.encoded for tx in batch]),
                               headers={"content-type": "application/octet-stream"})  # fmt: skip
    response.raise_for_status()
    await http.get(f"/v1/transactions/{batch[-1].hash.hex()}", params={"wait": "30"})


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] if len(values) > 1 else values[0]


def run_measures(submitted: dict[bytes, float], committed: dict[bytes, float], begin: float, end: float,
                 ceiling: float) -> dict[str, Any]:  # fmt: skip
    """Throughput, latency percentiles, the ceiling and the machine, for a results file."""
    latencies = [committed[h] - submitted[h] for h in committed]
    throughput = len(committed) / (end - begin)
    return {
        "committed": len(committed),
        "seconds": round(end - begin, 3),
        "committed_tx_per_s": round(throughput, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "ceiling_tx_per_s": round(ceiling, 1),
        "ratio_to_ceiling": round(throughput / ceiling, 3),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},  # fmt: skip
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextlib.contextmanager
def running_nodes(homes: list[Path], progress: Progress) -> Iterator[list[NodeProcess]]:
    """A node per home, started one after the other with progress shown, all stopped at the end."""
    nodes: list[NodeProcess] = []
    try:
        starting = progress.add_task("starting nodes", total=len(homes))
        for home in homes:
            nodes.append(start_node(home))
            progress.advance(starting)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def publish(result: dict[str, Any], output: Path, as_json: bool, title: str, keys: list[str],
            anchors: list[tuple[str, str]]) -> None:  # fmt: skip
    """Write the JSON results and print them: as JSON, or as a table with the papers' numbers."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("measure", "value", title=title, title_justify="left")
    for key in keys:
        table.add_row(key, str(result[key]))
    for name, value in anchors:
        table.add_row(name, value)
    Console().print(table)
    Console().print(f"results written to {output}")


def run_ledger_benchmark(txs: int, batch: int, clients: int, output: Path, as_json: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="twinledger-bench-") as tmp, Progress(console=console) as progress:
        workdir = Path(tmp)
        home = workdir / "node"
        init_home(home, "bench", api_port=0, chain_id=CHAIN_ID, block_interval_ms=100, max_block_txs=5000)
        transactions = make_transactions(txs, senders=clients * 8, progress=progress)
        node = start_node(home)
        try:
            submitted, committed, begin, end = asyncio.run(
                submit_all([node], transactions, batch, clients, CHAIN_ID, progress)
            )
            blocks = httpx.get(f"{node.url}/metrics", headers=node.headers).text
        finally:
            node.stop()
        ceiling_task = progress.add_task("measuring the ceiling", total=None)
        ceiling = measure_ceiling(transactions, batch, workdir)
        progress.update(ceiling_task, total=1, completed=1)

    result = {
        "benchmark": "ledger",
        "transactions": txs,
        "tx_bytes": TX_SIZE,
        "batch": batch,
        "clients": clients,
        "blocks": next((int(line.split()[1]) for line in blocks.splitlines()
                        if line.startswith("twinledger_blocks_committed_total ")), 0),  # fmt: skip
        **run_measures(submitted, committed, begin, end, ceiling),
    }
    publish(result, output, as_json, "ledger benchmark (one node)",
            ["committed", "blocks", "seconds", "committed_tx_per_s", "latency_p50_ms", "latency_p99_ms",
             "ceiling_tx_per_s", "ratio_to_ceiling"], [("safe-UR-chain (paper)", "100 tx/s")])  # fmt: skip
    return result
