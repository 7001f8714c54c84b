"""``twinledger bench store``: three store nodes on this machine (r = 3, write quorum 2,
mutual TLS on loopback); one organisation uploads a document through the CLI's path
(stream, encrypt, quorum writes) and another downloads, verifies and decrypts it. In the
same run, the ceiling: AES-256-GCM plus SHA-256 over the same bytes on one core, the
work the uploader cannot avoid.

Then the feed half: a producer offers 16-byte samples at a fixed rate, the owner's writer
seals them into segments every segment period and appends them, and a reader of another
organisation follows the feed (long poll) and decrypts each segment; every sample's
latency is measured from the moment it was produced to the moment the reader holds it.
Its ceiling is sealing and hashing segments on one core."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.console import Console
from rich.progress import Progress

from twinledger.bench.ledger import publish, running_nodes
from twinledger.config import init_network, load_config
from twinledger.launcher import free_port_block
from twinledger.services.remote import store_client
from twinledger.store.client import StoreClient
from twinledger.store.documents import as_reader, download_document, upload_document
from twinledger.store.feeds import MAX_SEGMENT_SAMPLES, FeedReader, FeedWriter, create_feed, now_us, seal_segment
from twinledger.store.items import CHUNK_SIZE

console = Console(stderr=True)
ORGS = ["owner", "maintainer", "auditor"]


def measure_ceiling(size: int) -> float:
    """MB/s of AES-256-GCM encryption plus SHA-256 of the ciphertext, 1 MiB at a time."""
    block = os.urandom(CHUNK_SIZE)
    aead = AESGCM(os.urandom(32))
    start = time.perf_counter()
    for index in range(size // CHUNK_SIZE):
        hashlib.sha256(aead.encrypt(index.to_bytes(12, "big"), block, b"")).digest()
    return size / (time.perf_counter() - start) / 1e6


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as sink:
        for _ in range(size // CHUNK_SIZE):
            block = os.urandom(CHUNK_SIZE)
            digest.update(block)
            sink.write(block)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(CHUNK_SIZE):
            digest.update(block)
    return digest.hexdigest()


FEED_TICK = 0.01
"""Seconds between the producer's batches of samples."""


def measure_feed_ceiling(seconds: float = 2.0) -> float:
    """Samples/s that sealing (pack, AES-256-GCM) and hashing full segments reach on one core."""
    key, feed = os.urandom(32), os.urandom(32)
    segment = [(now_us() + i, float(i)) for i in range(MAX_SEGMENT_SAMPLES)]
    begin, sealed = time.perf_counter(), 0
    while time.perf_counter() - begin < seconds:
        hashlib.sha256(seal_segment(key, feed, sealed, segment)).digest()
        sealed += 1
    return sealed * len(segment) / (time.perf_counter() - begin)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def run_feed(writer_client: StoreClient, reader_client: StoreClient, owner: Any, reader: Any,
                   recipients: dict[str, bytes], rate: int, seconds: float, period: float, topic: str,
                   progress: Progress) -> dict[str, Any]:  # fmt: skip
    """Offer ``rate`` samples/s for ``seconds`` into a new feed with ``period``-second
    segments while a reader follows it; samples/s appended and latency percentiles."""
    acl = await create_feed(writer_client, owner.signing_key("operator"), "owner", owner.encryption_key(), topic,
                            recipients)  # fmt: skip
    writer = await FeedWriter.open(writer_client, owner.signing_key("operator"), "owner", owner.encryption_key(),
                                   acl.item)  # fmt: skip
    follower = await FeedReader.open(reader_client, acl.item, as_reader("maintainer", reader.encryption_key()))
    total = int(rate * seconds)
    task = progress.add_task(f"feed: {rate:,} samples/s, {period:g} s segments", total=total)
    latencies: list[float] = []
    flushes: list[float] = []

    async def produce() -> None:
        per_tick, made = max(1, round(rate * FEED_TICK)), 0
        deadline = time.monotonic()
        while made < total:
            deadline += FEED_TICK
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            stamp = now_us()
            count = min(per_tick, total - made)
            writer.extend([(stamp, float(made + i)) for i in range(count)])
            made += count

    async def flush_every_period() -> None:
        while True:
            await asyncio.sleep(period)
            begin = time.perf_counter()
            if await writer.flush():
                flushes.append(time.perf_counter() - begin)

    async def follow() -> None:
        async for segment in follower.follow(-1, wait=5.0):
            arrived = now_us()
            latencies.extend((arrived - stamp) / 1e6 for stamp, _ in segment.samples)
            progress.advance(task, len(segment.samples))
            if len(latencies) >= total:
                return

    begin = time.perf_counter()
    flusher = asyncio.ensure_future(flush_every_period())
    try:
        await asyncio.gather(produce(), follow())
    finally:
        flusher.cancel()
    elapsed = time.perf_counter() - begin
    return {"samples": total, "segment_s": period, "offered_samples_per_s": rate,
            "appended_samples_per_s": round(total / elapsed), "updates": writer.head.sequence + 1 if writer.head else 0,
            "latency_p50_s": round(_percentile(latencies, 0.50), 3),
            "latency_p99_s": round(_percentile(latencies, 0.99), 3),
            "append_p50_s": round(_percentile(flushes, 0.50), 4),
            "append_p99_s": round(_percentile(flushes, 0.99), 4)}  # fmt: skip


def run_store_benchmark(size_mib: int, output: Path, as_json: bool, feed_rate: int = 100_000,
                        feed_seconds: float = 10.0) -> dict[str, Any]:  # fmt: skip
    size = size_mib * CHUNK_SIZE
    with tempfile.TemporaryDirectory(prefix="twinledger-bench-store-") as tmp, Progress(console=console) as progress:
        workdir = Path(tmp)
        homes = [workdir / "net" / org for org in ORGS]
        init_network(workdir / "net", ORGS, chain_id="bench-store", base_port=free_port_block(3 * len(ORGS)),
                     block_interval_ms=100)  # fmt: skip
        source = workdir / "document.bin"
        original = _write_random(source, size)
        with running_nodes(homes, progress) as nodes:
            members = httpx.get(f"{nodes[0].url}/v1/members", headers=nodes[0].headers, timeout=10).json()
            keys = {o["name"]: bytes.fromhex(o["encryption_key"]) for o in members["organisations"]}
            owner, reader = load_config(homes[0]), load_config(homes[1])
            upload_task = progress.add_task(f"upload {size_mib} MiB", total=size)
            download_task = progress.add_task(f"download {size_mib} MiB", total=size)

            async def transfer() -> tuple[float, float]:
                async with store_client(owner, members) as client:
                    begin = time.perf_counter()
                    stored = await upload_document(client, source, owner.signing_key("operator"), "owner",
                                                   {"owner": keys["owner"], "maintainer": keys["maintainer"]},
                                                   lambda n: progress.advance(upload_task, n))  # fmt: skip
                    uploaded = time.perf_counter() - begin
                async with store_client(reader, members) as client:
                    begin = time.perf_counter()
                    await download_document(client, stored.reference, stored.manifest,
                                            as_reader("maintainer", reader.encryption_key()), workdir / "copy.bin",
                                            lambda n: progress.advance(download_task, n))  # fmt: skip
                    downloaded = time.perf_counter() - begin
                return uploaded, downloaded

            uploaded, downloaded = asyncio.run(transfer())
            intact = _file_digest(workdir / "copy.bin") == original

            async def feeds() -> list[dict[str, Any]]:
                recipients = {"maintainer": keys["maintainer"]}
                async with store_client(owner, members) as writing, store_client(reader, members) as reading:
                    return [await run_feed(writing, reading, owner, reader, recipients, feed_rate, feed_seconds,
                                           period, f"bench/{period}", progress) for period in (1.0, 0.25)]  # fmt: skip

            feed_runs = asyncio.run(feeds())
        ceiling_task = progress.add_task("measuring the ceiling", total=None)
        ceiling = measure_ceiling(size)
        feed_ceiling = measure_feed_ceiling()
        progress.update(ceiling_task, total=1, completed=1)
    upload_rate, download_rate = size / uploaded / 1e6, size / downloaded / 1e6
    result = {
        "benchmark": "store",
        "store_nodes": len(ORGS),
        "replication": 3,
        "write_quorum": 2,
        "document_mib": size_mib,
        "intact": intact,
        "upload_s": round(uploaded, 2),
        "upload_mb_per_s": round(upload_rate, 1),
        "download_s": round(downloaded, 2),
        "download_mb_per_s": round(download_rate, 1),
        "ceiling_aes_gcm_sha256_mb_per_s": round(ceiling, 1),
        "upload_ratio_to_ceiling": round(upload_rate / ceiling, 3),
        "feed": feed_runs[0],
        "feed_quarter_second_segments": feed_runs[1],
        "feed_ceiling_seal_hash_samples_per_s": round(feed_ceiling),
    }
    for key, run in (("feed", feed_runs[0]), ("feed_0.25s", feed_runs[1])):
        for measure in ("appended_samples_per_s", "latency_p50_s", "latency_p99_s", "append_p99_s"):
            result[f"{key}_{measure}"] = run[measure]
    publish(result, output, as_json, f"store benchmark ({size_mib} MiB document, r = 3 on loopback)",
            ["intact", "upload_s", "upload_mb_per_s", "download_s", "download_mb_per_s",
             "ceiling_aes_gcm_sha256_mb_per_s", "upload_ratio_to_ceiling",
             *(f"{k}_{m}" for k in ("feed", "feed_0.25s")
               for m in ("appended_samples_per_s", "latency_p50_s", "latency_p99_s", "append_p99_s")),
             "feed_ceiling_seal_hash_samples_per_s"],
            [("target (issue)", "upload ≥ 100 MB/s; feed ≥ 50,000 samples/s, p99 ≤ 1 s"),
             ("Dietz et al. (paper)", "no store throughput reported; sharing within \"seconds\"")])  # fmt: skip
    return result
