"""``twinledger bench store``: three store nodes on this machine (r = 3, write quorum 2,
mutual TLS on loopback); one organisation uploads a document through the CLI's path
(stream, encrypt, quorum writes) and another downloads, verifies and decrypts it. In the
same run, the ceiling: AES-256-GCM plus SHA-256 over the same bytes on one core, the
work the uploader cannot avoid."""

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

from twinledger.bench.ledger import publish
from twinledger.cli.storage import organisation_key, store_client
from twinledger.config import init_network, load_config
from twinledger.launcher import NodeProcess, free_port_block, start_node
from twinledger.store.documents import download_document, upload_document
from twinledger.store.records import CHUNK_SIZE

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


def run_store_benchmark(size_mib: int, output: Path, as_json: bool) -> dict[str, Any]:
    size = size_mib * CHUNK_SIZE
    with tempfile.TemporaryDirectory(prefix="twinledger-bench-store-") as tmp, Progress(console=console) as progress:
        workdir = Path(tmp)
        homes = [workdir / "net" / org for org in ORGS]
        init_network(workdir / "net", ORGS, chain_id="bench-store", base_port=free_port_block(3 * len(ORGS)),
                     block_interval_ms=100)  # fmt: skip
        source = workdir / "document.bin"
        original = _write_random(source, size)
        nodes: list[NodeProcess] = []
        try:
            starting = progress.add_task("starting store nodes", total=len(homes))
            for home in homes:
                nodes.append(start_node(home))
                progress.advance(starting)
            members = httpx.get(f"{nodes[0].url}/v1/members", timeout=10).json()
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
                    await download_document(client, stored.reference, stored.manifest, "maintainer",
                                            organisation_key(reader), workdir / "copy.bin",
                                            lambda n: progress.advance(download_task, n))  # fmt: skip
                    downloaded = time.perf_counter() - begin
                return uploaded, downloaded

            uploaded, downloaded = asyncio.run(transfer())
            intact = _file_digest(workdir / "copy.bin") == original
        finally:
            for node in nodes:
                node.stop()
        ceiling_task = progress.add_task("measuring the ceiling", total=None)
        ceiling = measure_ceiling(size)
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
    }
    publish(result, output, as_json, f"store benchmark ({size_mib} MiB document, r = 3 on loopback)",
            ["intact", "upload_s", "upload_mb_per_s", "download_s", "download_mb_per_s",
             "ceiling_aes_gcm_sha256_mb_per_s", "upload_ratio_to_ceiling"],
            [("target (issue)", "upload ≥ 100 MB/s"), ("Dietz et al. (paper)", "no store throughput reported")])  # fmt: skip
    return result
