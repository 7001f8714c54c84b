"""``twinledger bench backfill``: three nodes on this machine (store r = 3, write quorum 2),
an owner backfilling a sensor's history from CSV through the service layer as ``twin
feed push`` does — parse, check, seal, append, checkpoint on chain — then a reader of
another organisation reading it back and exporting it to CSV. In the same run, the
ceiling: parsing the same CSV and sealing and hashing its segments on one core, the work
a backfill cannot avoid. The 1 s segments every push used before are measured too, on
a smaller file, for comparison."""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from twinledger.bench.ledger import publish, running_nodes
from twinledger.bench.store import measure_feed_ceiling
from twinledger.config import init_network, load_config
from twinledger.demo import PLANT
from twinledger.launcher import free_port_block
from twinledger.services import feed_files, feeds, twins
from twinledger.services.session import Session
from twinledger.store.feeds import Sample

console = Console(stderr=True)
ORGS = ["owner", "maintainer", "auditor"]
START = 1_790_000_000_000_000


def write_csv(path: Path, count: int, rate: float) -> None:
    """``count`` samples at ``rate`` Hz as a historian exports them: ISO times, a header."""
    step = round(1_000_000 / rate)
    with path.open("w") as sink:
        sink.write("time,value\n")
        for i in range(count):
            sink.write(f"{(START + i * step) / 1e6:.6f},{20 + (i % 600) / 100}\n")


def parse(path: Path) -> list[Sample]:
    with path.open(newline="") as stream:
        return list(feed_files.read_csv(stream))


class _Discard(io.RawIOBase):
    """An export destination that keeps nothing (the disk is not what is measured)."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


async def _measure(homes: list[Path], data: Path, small: Path, progress: Progress) -> dict[str, Any]:
    owner, reader = Session(load_config(homes[0])), Session(load_config(homes[1]))
    try:
        twin = (await twins.create(owner, PLANT.read_bytes(), "bench backfill", "bench-backfill")).twin
        for component in ("level-sensor-1", "flow-sensor-1"):
            await feeds.create_and_attach(owner, twin, component, readers=["maintainer"])
        begin = time.perf_counter()
        samples = parse(data)
        push_task = progress.add_task(f"backfill {len(samples):,} samples", total=len(samples))
        pushed = await feeds.push(owner, twin, "level-sensor-1", samples,
                                  progress=lambda n: progress.advance(push_task, n))  # fmt: skip
        backfilled = time.perf_counter() - begin
        read_task = progress.add_task("read back", total=len(samples))
        begin = time.perf_counter()
        read = await feeds.read(reader, twin, "level-sensor-1", progress=lambda n: progress.advance(read_task, n))
        read_s = time.perf_counter() - begin
        assert read.samples == samples, "the reader reads exactly what was pushed"
        begin = time.perf_counter()
        exported = await feeds.export(reader, twin, "level-sensor-1", feed_files.CsvSink(io.BufferedWriter(_Discard())))
        export_s = time.perf_counter() - begin
        old = parse(small)
        old_task = progress.add_task(f"1 s segments, {len(old):,} samples", total=len(old))
        begin = time.perf_counter()
        before = await feeds.push(owner, twin, "flow-sensor-1", old, segment_seconds=1.0,
                                  progress=lambda n: progress.advance(old_task, n))  # fmt: skip
        before_push_s = time.perf_counter() - begin
        begin = time.perf_counter()
        before_read = await feeds.read(reader, twin, "flow-sensor-1")
        before_read_s = time.perf_counter() - begin
    finally:
        await owner.close()
        await reader.close()
    return {"samples": len(samples), "segments": len(pushed.updates), "backfill_s": round(backfilled, 2),
            "backfill_samples_per_s": round(len(samples) / backfilled),
            "read_s": round(read_s, 2), "read_samples_per_s": round(len(samples) / read_s),
            "export_csv_samples_per_s": round(exported.samples / export_s),
            "one_second_segments_samples": len(old), "one_second_segments": len(before.updates),
            "one_second_push_samples_per_s": round(len(old) / before_push_s),
            "one_second_read_samples_per_s": round(len(before_read.samples) / before_read_s)}  # fmt: skip


def measure_parse_ceiling(path: Path) -> float:
    """Samples/s that parsing and checking the CSV reach on one core."""
    begin = time.perf_counter()
    count = len(parse(path))
    return count / (time.perf_counter() - begin)


def run_backfill_benchmark(days: float, output: Path, as_json: bool) -> dict[str, Any]:
    count = round(days * 86_400)
    with tempfile.TemporaryDirectory(prefix="twinledger-bench-backfill-") as tmp, Progress(console=console) as progress:
        workdir = Path(tmp)
        data, small = workdir / "history.csv", workdir / "small.csv"
        write_csv(data, count, rate=1.0)
        write_csv(small, 600, rate=1.0)
        homes = [workdir / "net" / org for org in ORGS]
        init_network(workdir / "net", ORGS, chain_id="bench-backfill", base_port=free_port_block(3 * len(ORGS)),
                     block_interval_ms=100)  # fmt: skip
        with running_nodes(homes, progress):
            measured = asyncio.run(_measure(homes, data, small, progress))
        ceiling_task = progress.add_task("measuring the ceiling", total=None)
        parse_ceiling = measure_parse_ceiling(data)
        seal_ceiling = measure_feed_ceiling()
        progress.update(ceiling_task, total=1, completed=1)
    ceiling = 1 / (1 / parse_ceiling + 1 / seal_ceiling)
    result = {"benchmark": "backfill", "store_nodes": len(ORGS), "replication": 3, "write_quorum": 2,
              "rate_hz": 1, **measured, "ceiling_parse_samples_per_s": round(parse_ceiling),
              "ceiling_seal_hash_samples_per_s": round(seal_ceiling),
              "ceiling_parse_and_seal_samples_per_s": round(ceiling),
              "backfill_ratio_to_ceiling": round(measured["backfill_samples_per_s"] / ceiling, 3)}  # fmt: skip
    publish(result, output, as_json, f"backfill benchmark ({count:,} samples at 1 Hz, r = 3 on loopback)",
            ["samples", "segments", "backfill_s", "backfill_samples_per_s", "read_s", "read_samples_per_s",
             "export_csv_samples_per_s", "one_second_segments", "one_second_push_samples_per_s",
             "one_second_read_samples_per_s", "ceiling_parse_samples_per_s", "ceiling_seal_hash_samples_per_s",
             "ceiling_parse_and_seal_samples_per_s", "backfill_ratio_to_ceiling"],
            [("target (issue)", "backfill and read ≥ 50,000 samples/s"),
             ("before (review)", "one hour at 1 Hz in 75 s (48 samples/s); 10.8k samples read in 24 s")])  # fmt: skip
    return result
