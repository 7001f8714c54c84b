"""``twinledger bench ingest``: the physical world into the ledger, on a four-organisation
BFT consortium on this machine (r = 3, write quorum 2, 100 ms blocks).

TCP ingest: clients of the owner's node send records of 100 B, 1 kB and 100 kB over the
ingest protocol, several connections at once, each with a window of unanswered records;
a record counts when the node acknowledged it, i.e. once its payload is in the store and
its ``records.put`` is committed. The ceiling, in the same run: the same records over the
same mutual TLS to a sink that acknowledges each frame and does nothing else.

OPC UA: the plant simulator steps at ``--plant-hz``; the device agent subscribes to the
twin's signals and appends them to the twin's feeds. Samples/s are counted in the feeds;
the ceiling is an OPC UA subscriber of its own at the same plant, counting what the
server delivers in the same window.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncua import ua
from rich.console import Console
from rich.progress import Progress

from twinledger import demo
from twinledger.agent.plant import NAMESPACE, plant_identity
from twinledger.bench.ledger import publish
from twinledger.config import load_config, read_run_file
from twinledger.ingest.protocol import NODE_MESSAGES, IngestRecord, frame, max_frame, read_message
from twinledger.ingest.sender import IngestSender
from twinledger.launcher import free_port_block
from twinledger.services import devices, feeds, twins
from twinledger.store.protocol import StoreTls

console = Console(stderr=True)
SIZES = {100: 20_000, 1_000: 20_000, 100_000: 2_000}
"""Payload bytes → records sent of that size."""
SIGNALS = ("level-sensor-1/Level", "flow-sensor-1/Flow")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def _send(endpoint: str, tls: StoreTls, size: int, count: int, connections: int,
                progress: Progress) -> dict[str, Any]:  # fmt: skip
    """``count`` records of ``size`` bytes over ``connections`` streams; records/s and the
    send-to-acknowledgement latency."""
    task = progress.add_task(f"TCP ingest, {size:,} B records", total=count)
    latencies: list[float] = []
    sent_at: dict[tuple[int, int], float] = {}
    refused = 0

    async def one(index: int, share: int) -> None:
        nonlocal refused
        async with IngestSender(lambda: endpoint, tls, os.urandom(16)) as client:
            payload = os.urandom(size)

            def records() -> Any:
                for seq in range(1, share + 1):
                    sent_at[(index, seq)] = time.perf_counter()
                    yield IngestRecord(seq, payload, "application/octet-stream", {"bench": str(seq)})

            def answered(answer: Any) -> None:
                nonlocal refused
                latencies.append(time.perf_counter() - sent_at.pop((index, answer.seq)))
                refused += not answer.ok
                progress.advance(task)

            await client.send(records(), answered)

    begin = time.perf_counter()
    await asyncio.gather(*(one(i, count // connections) for i in range(connections)))
    elapsed = time.perf_counter() - begin
    done = len(latencies)
    return {"payload_bytes": size, "records": done, "refused": refused, "seconds": round(elapsed, 2),
            "records_per_s": round(done / elapsed), "payload_mb_per_s": round(done * size / elapsed / 1e6, 2),
            "ack_p50_s": round(_percentile(latencies, 0.5), 3), "ack_p99_s": round(_percentile(latencies, 0.99), 3)}  # fmt: skip


async def _sink_ceiling(tls: StoreTls, size: int, count: int, window: int) -> float:
    """Records/s of the same frames over the same mutual TLS to a sink that acknowledges
    each one and does nothing else: what the channel allows."""
    limit = max_frame(max(size, 1 << 20))

    handlers: list[asyncio.Future[None]] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(done := asyncio.get_running_loop().create_future())
        try:
            while True:
                message = await read_message(reader, limit, frozenset({"record"}))
                writer.write(frame({"type": "ack", "seq": message["seq"], "record": bytes(32), "height": 0}))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
        finally:
            done.set_result(None)

    server = await asyncio.start_server(sink, "127.0.0.1", 0, ssl=tls.server)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls.client, server_hostname=None)
    payload = os.urandom(size)
    begin = time.perf_counter()
    answered = 0
    for seq in range(1, count + 1):
        writer.write(frame({"type": "record", "seq": seq, "payload": payload, "media_type": "application/octet-stream",
                            "metadata": {"bench": str(seq)}}))  # fmt: skip
        if seq - answered >= window:
            await writer.drain()
            await read_message(reader, 1 << 16, NODE_MESSAGES)
            answered += 1
    await writer.drain()
    while answered < count:
        await read_message(reader, 1 << 16, NODE_MESSAGES)
        answered += 1
    elapsed = time.perf_counter() - begin
    writer.close()
    await writer.wait_closed()
    while handlers:
        await handlers.pop()
    server.close()
    await server.wait_closed()
    return count / elapsed


async def _opcua_witness(line: demo.Demo, seconds: float) -> dict[str, int]:
    """Data changes the plant's server delivers for SIGNALS in ``seconds`` to a subscriber."""
    counts = dict.fromkeys(SIGNALS, 0)

    class Count:
        def __init__(self, names: dict[Any, str]) -> None:
            self.names = names

        def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
            counts[self.names[node]] += 1

    async with line.opcua_session() as client:
        index = await client.get_namespace_index(NAMESPACE)
        nodes = {client.get_node(ua.NodeId(name, index)): name for name in SIGNALS}
        subscription = await client.create_subscription(1, Count(nodes))
        await subscription.subscribe_data_change(list(nodes), sampling_interval=1, queuesize=1000)
        for name in SIGNALS:
            counts[name] = 0
        await asyncio.sleep(seconds)
    return counts


def _feed_samples(line: demo.Demo, component: str, since_us: int, until_us: int) -> list[int]:
    read = line.do(f"twin feed read {line.twin} {component}", "owner", lambda s: feeds.read(s, line.twin, component),
                   quiet=True)  # fmt: skip
    return sorted(t for t, _ in read.samples if since_us <= t <= until_us)


def _start_processes(line: demo.Demo, device: Path, plant_hz: float, sampling_ms: int) -> list[subprocess.Popen[bytes]]:
    """The plant simulator and the device agent as processes of their own, as a plant runs
    them (in the demo they share its process): what is measured is the whole path."""
    port = free_port_block(1)
    line.plant_url = f"opc.tcp://127.0.0.1:{port}/twinledger/plant/"
    plant_identity(line.plant_certs)
    line.trust_on_plant(line.console_identity.path, "console")
    line.trust_on_plant(device / "opcua.der", device.name)
    log = (line.directory / "processes.log").open("ab")
    plant = subprocess.Popen([sys.executable, "-m", "twinledger", "plant", "run", "--port", str(port), "--rate",
                              str(plant_hz), "--certs", str(line.plant_certs)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    demo.wait_for(lambda: _plant_up(line), "the plant simulator to listen")
    agent = subprocess.Popen([sys.executable, "-m", "twinledger", "agent", "--home", line.home("owner"), "--twin",
                              line.twin, "--device", str(device), "--opcua", line.plant_url, "--opcua-server-cert",
                              str(line.plant_certs / "opcua.der"), "--flush-seconds", "0.5", "--sampling-ms",
                              str(sampling_ms), "--json"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    return [agent, plant]


def _plant_up(line: demo.Demo) -> bool:
    try:
        line.plant("plant", None, read="line-1/BottlesFilled")
        return True
    except (OSError, TimeoutError, ua.UaError):
        return False


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _opcua_run(line: demo.Demo, plant_hz: float, sampling_ms: int, seconds: float, progress: Progress) -> dict[str, Any]:
    task = progress.add_task(f"OPC UA: plant at {plant_hz:g} Hz, agent sampling every {sampling_ms} ms", total=None)
    device_id = f"bench-{os.urandom(3).hex()}"
    line.twin = line.do("twin create", "owner", lambda s: twins.create(s, demo.PLANT.read_bytes(), "bench line",
                                                                       device_id), quiet=True).twin  # fmt: skip
    device = line.directory / f"plc-{line.twin}"
    line.do("device add", "owner", lambda s: devices.add(s, line.twin, "plc-1", device), quiet=True)
    processes = _start_processes(line, device, plant_hz, sampling_ms)
    try:
        return _measure(line, sampling_ms, seconds, progress, task)
    finally:
        _stop(processes)


def _measure(line: demo.Demo, sampling_ms: int, seconds: float, progress: Progress, task: Any) -> dict[str, Any]:
    demo.wait_for(lambda: len(line.view()["feeds"]) == 4, "the agent to attach the feeds")
    demo.wait_for(lambda: _feed_samples(line, "level-sensor-1-level", 0, 1 << 62), "readings in the level feed")
    since = time.time_ns() // 1000
    witnessed = asyncio.run(_opcua_witness(line, seconds))
    until = time.time_ns() // 1000
    stored: dict[str, list[int]] = {}
    for name in SIGNALS:
        component = name.split("/")[0] + "-" + name.split("/")[1].lower()
        stored[name] = demo.wait_for(lambda c=component: (s := _feed_samples(line, c, since, until))
                                     and s[-1] >= until - 2 * sampling_ms * 1000 and s, f"{component} to be flushed")  # fmt: skip
    progress.update(task, total=1, completed=1)
    window = (until - since) / 1e6
    intervals = [(b - a) / 1000 for name in SIGNALS for a, b in zip(stored[name], stored[name][1:], strict=False)]
    total = sum(len(v) for v in stored.values())
    return {"sampling_ms": sampling_ms, "seconds": round(window, 2), "signals": len(SIGNALS),
            "samples_in_feeds": total, "samples_per_s": round(total / window, 1),
            "per_signal_samples_per_s": round(total / window / len(SIGNALS), 1),
            "interval_median_ms": round(statistics.median(intervals), 1) if intervals else None,
            "interval_p99_ms": round(_percentile(intervals, 0.99), 1) if intervals else None,
            "ceiling_opcua_delivered_per_s": round(sum(witnessed.values()) / window, 1)}  # fmt: skip


def run_ingest_benchmark(output: Path, as_json: bool, connections: int = 4, window: int = 1024,
                         plant_hz: float = 100.0, sampling_ms: int = 10, seconds: float = 15.0,
                         scale: float = 1.0) -> dict[str, Any]:  # fmt: skip
    demo.console.quiet = True
    with tempfile.TemporaryDirectory(prefix="twinledger-bench-ingest-") as tmp, Progress(console=console) as progress:
        line = demo.Demo(Path(tmp) / "net")
        starting = progress.add_task("starting four nodes", total=None)
        line.start(ingest_window=window)
        progress.update(starting, total=1, completed=1)
        try:
            owner = load_config(line.homes["owner"])
            endpoint = str((read_run_file(owner) or {})["ingest"])
            tls = StoreTls.of_home(owner)
            tcp = []
            for size, count in SIZES.items():
                count = max(connections, int(count * scale))
                run = asyncio.run(_send(endpoint, tls, size, count, connections, progress))
                run["ceiling_tls_sink_records_per_s"] = round(asyncio.run(_sink_ceiling(tls, size, count, window)))
                tcp.append(run)
            opcua = {"plant_hz": plant_hz, **_opcua_run(line, plant_hz, sampling_ms, seconds, progress)}
        finally:
            line.stop()
    result: dict[str, Any] = {"benchmark": "ingest", "validators": 4, "replication": 3, "write_quorum": 2,
                              "connections": connections, "window": window, "tcp": tcp, "opcua": opcua}  # fmt: skip
    keys = []
    for run in tcp:
        label = f"tcp_{run['payload_bytes']}B"
        for measure in ("records_per_s", "payload_mb_per_s", "ack_p50_s", "ack_p99_s", "refused",
                        "ceiling_tls_sink_records_per_s"):  # fmt: skip
            result[f"{label}_{measure}"] = run[measure]
            keys.append(f"{label}_{measure}")
    for measure in ("samples_per_s", "per_signal_samples_per_s", "interval_median_ms", "interval_p99_ms",
                    "ceiling_opcua_delivered_per_s"):  # fmt: skip
        result[f"opcua_{measure}"] = opcua[measure]
        keys.append(f"opcua_{measure}")
    publish(result, output, as_json, f"ingest benchmark (4 bft validators, r = 3; {connections} connections, "
                                     f"window {window})", keys,
            [("safe-UR-chain (paper)", "100 tx/s; 22.1 ms ± 0.4 between OPC UA packets (45 per second)")])  # fmt: skip
    return result
