"""``twinledger bench kpcpre``: the shape of Armored Twins Table 1.

Policies are binary trees of AND gates with 3, 7 and 15 nodes (2, 4 and 8 leaves); the
attribute set is the leaves, so every leaf is used. Each algorithm is timed on its own,
median of ``runs``, with the attribute-hash cache emptied first so nothing is carried
over between runs (a device encrypting every epoch under the same attributes is faster:
the warm Enc column). OR trees of the same size follow: re-encryption then uses one leaf.

The ceiling is the group operations each algorithm cannot avoid, priced with the same
backend in the same run: ReEnc needs |L| + 3 Miller loops and 2 final exponentiations,
recipient Dec 2 pairings and one G2 exponentiation, and so on (docs/sharing.md lists
the counts).

Last, sharing one epoch of sensor data with a new reader: the owner makes the
re-encryption key, the proxy re-encrypts the epoch key, the reader decrypts it and then
the epoch's segments (one hour at 100 samples/s in 1 s segments) — first the
cryptography alone, then (``--network-segments N``) on three nodes: the owner writes
an epoch of N segments into a store feed and grants a new reader (key made, grant
committed, key handed to a proxy of a third organisation), and the reader fetches and
opens the whole epoch through the proxy; the owner reading it itself is the baseline.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from twinledger.bench.ledger import publish
from twinledger.config import init_network, load_config
from twinledger.contracts import calls
from twinledger.core.attributes import feed_attributes
from twinledger.crypto import groups, kpcpre
from twinledger.crypto.policy import Leaf, Policy, all_of, any_of, parse_policy
from twinledger.crypto.policy import to_obj as policy_to_obj
from twinledger.launcher import free_port_block, start_node
from twinledger.services import twins
from twinledger.services.remote import NodeClient, sharing_public, store_client
from twinledger.services.session import Session
from twinledger.sharing.grants import hand_over, make_grant_keys, through_proxy
from twinledger.store.documents import CapsuleKey, as_reader
from twinledger.store.feeds import FeedReader, FeedWriter, create_feed

console = Console(stderr=True)
SHAPES = [(3, 2), (7, 4), (15, 8)]
PAPER_PC = {  # Armored Twins Table 1, PC (AMD Ryzen 5600X, RELIC), ms
    3: {"keygen": 0.39, "rkgen": 2.04, "enc": 2.62, "reenc": 4.22, "dec": 2.36},
    7: {"keygen": 0.39, "rkgen": 3.54, "enc": 3.00, "reenc": 4.86, "dec": 2.36},
    15: {"keygen": 0.39, "rkgen": 6.52, "enc": 3.75, "reenc": 6.13, "dec": 2.36},
}
EPOCH_SEGMENTS = 3600
SAMPLES_PER_SEGMENT = 100
PLANT = Path(__file__).resolve().parent.parent.parent / "examples" / "bottling-plant.aml"


def binary_tree(attributes: list[str], combine: Callable[[list[Policy]], Policy]) -> Policy:
    """A balanced binary tree of ``combine`` gates over the attributes."""
    level: list[Policy] = [Leaf(attribute) for attribute in attributes]
    while len(level) > 1:
        level = [combine(level[i : i + 2]) for i in range(0, len(level), 2)]
    return level[0]


def median_ms(operation: Callable[[], object], runs: int, cold: bool = True) -> float:
    times = []
    for _ in range(runs):
        if cold:
            kpcpre._attribute_point.cache_clear()
        start = time.perf_counter()
        operation()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def measure_primitives(runs: int) -> dict[str, float]:
    """Median ms of the group operations the algorithms are built from."""
    a = groups.random_scalar()
    g1, g2, gt = groups.G1_GENERATOR * a, groups.G2_GENERATOR * a, groups.GT_GENERATOR ** a
    counter = iter(range(10**9))
    one = median_ms(lambda: groups.pair_product([(g1, g2)]), runs)
    two = median_ms(lambda: groups.pair_product([(g1, g2), (g1, g2)]), runs)
    return {
        "pairing": median_ms(lambda: groups.pair(g1, g2), runs),
        "miller_loop": round(two - one, 3),
        "final_exponentiation": round(2 * one - two, 3),
        "g1_exp": median_ms(lambda: g1 * a, runs),
        "g2_exp": median_ms(lambda: g2 * a, runs),
        "gt_exp": median_ms(lambda: gt ** a, runs),
        "hash_to_g1": median_ms(lambda: groups.hash_to_g1("BENCH", next(counter).to_bytes(8, "big")), runs),
    }


def ceilings(primitives: dict[str, float], leaves: int, used: int) -> dict[str, float]:
    """The cost of the group operations each algorithm needs (hashing to Z_r, HKDF and ReEnc's
    multi-exponentiation of the key parts left out)."""
    p, e1, e2, et, h = (primitives[name] for name in ("pairing", "g1_exp", "g2_exp", "gt_exp", "hash_to_g1"))
    loop, final = primitives["miller_loop"], primitives["final_exponentiation"]
    return {
        "keygen": round(e2, 3),
        "rkgen": round(leaves * (h + 2 * e1 + e2) + h + e2 + 2 * et, 3),
        "enc": round((leaves + 1) * (h + e1) + e2 + 2 * et, 3),
        "reenc": round((used + 3) * loop + 2 * final + h + used * e1, 3),
        "dec": round(2 * p + h + e2, 3),
    }


def measure_shape(nodes: int, leaves: int, combine: Callable[[list[Policy]], Policy], runs: int) -> dict[str, Any]:
    attributes = [f"attr:{index}" for index in range(leaves)]
    policy = binary_tree(attributes, combine)
    owner, reader = kpcpre.keygen(), kpcpre.keygen()
    key = kpcpre.rkgen(owner, policy, reader.public)
    _, ciphertext = kpcpre.encrypt(owner.public, attributes)
    reencrypted = kpcpre.reencrypt(key, ciphertext)
    return {
        "nodes": nodes,
        "attributes": leaves,
        "keygen": median_ms(lambda: kpcpre.keygen().public, runs),
        "rkgen": median_ms(lambda: kpcpre.rkgen(owner, policy, reader.public), runs),
        "enc": median_ms(lambda: kpcpre.encrypt(owner.public, attributes), runs),
        "enc_warm": median_ms(lambda: kpcpre.encrypt(owner.public, attributes), runs, cold=False),
        "reenc": median_ms(lambda: kpcpre.reencrypt(key, ciphertext), runs),
        "dec": median_ms(lambda: kpcpre.decrypt(reader, reencrypted), runs),
        "dec_owner": median_ms(lambda: kpcpre.decrypt(owner, ciphertext), runs),
    }


def measure_epoch_sharing() -> dict[str, Any]:
    """One epoch key shared with a new reader, who then reads the epoch's segments."""
    owner, reader = kpcpre.keygen(), kpcpre.keygen()
    attributes = ["twin:plant-7", "component:level-1", "kind:sensor", "sync"]
    epoch_key, ciphertext = kpcpre.encrypt(owner.public, attributes)
    segment = os.urandom(16 * SAMPLES_PER_SEGMENT)
    aead = AESGCM(epoch_key)
    nonces = [index.to_bytes(12, "big") for index in range(EPOCH_SEGMENTS)]
    sealed = [(nonce, aead.encrypt(nonce, segment, b"")) for nonce in nonces]
    policy = all_of([Leaf("twin:plant-7"), any_of([Leaf("kind:sensor"), Leaf("kind:document")])])
    start = time.perf_counter()
    key = kpcpre.rkgen(owner, policy, reader.public)
    granted = time.perf_counter()
    reencrypted = kpcpre.reencrypt(key, ciphertext)
    transformed = time.perf_counter()
    opened = AESGCM(kpcpre.decrypt(reader, reencrypted))
    unwrapped = time.perf_counter()
    for nonce, data in sealed:
        opened.decrypt(nonce, data, b"")
    done = time.perf_counter()
    return {
        "segments": EPOCH_SEGMENTS,
        "samples": EPOCH_SEGMENTS * SAMPLES_PER_SEGMENT,
        "rkgen_ms": round((granted - start) * 1000, 3),
        "reenc_ms": round((transformed - granted) * 1000, 3),
        "dec_ms": round((unwrapped - transformed) * 1000, 3),
        "segments_ms": round((done - unwrapped) * 1000, 3),
        "total_ms": round((done - start) * 1000, 3),
    }


async def _network_epoch(homes: list[Path], segments: int, progress: Progress) -> dict[str, Any]:
    """The owner (homes[0]) writes an epoch and grants homes[2] through the proxy on homes[1]."""
    owner_config, reader_config = load_config(homes[0]), load_config(homes[2])
    session = Session(owner_config)
    owner = session.signer
    twin = (await twins.create(session, PLANT.read_bytes(), "bench plant", "bench-plant")).twin
    members = await session.members()
    sharing = sharing_public(members, "owner")
    reader_key = sharing_public(members, "auditor")
    assert sharing is not None and reader_key is not None
    capsule_key = CapsuleKey(sharing, 0)
    async with store_client(owner_config, members) as store:
        acl = await create_feed(store, owner, "owner", owner_config.encryption_key(), f"{twin}/level-sensor-1", {},
                                feed_attributes(twin, "level-sensor-1"), capsule_key)  # fmt: skip
        writer = await FeedWriter.open(store, owner, "owner", owner_config.encryption_key(), acl.item)
        task = progress.add_task(f"writing an epoch of {segments} segments", total=segments)
        start = 1_790_000_000_000_000
        for index in range(segments):
            writer.extend([(start + index * 1_000_000 + i * 10_000, float(i)) for i in range(SAMPLES_PER_SEGMENT)])
            await writer.flush()
            progress.advance(task)
        begin = time.perf_counter()
        made = make_grant_keys(owner_config.sharing_key(), twin, parse_policy("kind:sensor"), reader_key, 0)
        keyed = time.perf_counter()
        committed = await session.transact(calls.grant_read(twin, "auditor", policy_to_obj(made.policy),
                                                            made.key_hashes, ["maintainer/node-1"], 0))  # fmt: skip
        recorded = time.perf_counter()
        await hand_over(store, ["maintainer/node-1"], committed.tx_hash, dict(enumerate(made.keys)), committed.height)
        handed = time.perf_counter()
        own = await _read_epoch(FeedReader(store, acl, as_reader("owner", owner_config.encryption_key())))
    await session.close()
    grants = NodeClient(reader_config).request("GET", "/v1/grants?recipient=auditor")
    async with store_client(reader_config, members) as store:
        unlock = through_proxy(store, grants["grants"][0], reader_config.sharing_key(), grants["height"])
        shared = await _read_epoch(FeedReader(store, await store.get_acl(acl.item), unlock))
    return {"segments": segments, "samples": segments * SAMPLES_PER_SEGMENT,
            "rkgen_ms": round((keyed - begin) * 1000, 1), "grant_commit_ms": round((recorded - keyed) * 1000, 1),
            "hand_over_ms": round((handed - recorded) * 1000, 1), "reader_epoch_ms": shared,
            "owner_epoch_ms": own}  # fmt: skip


async def _read_epoch(reader: FeedReader) -> float:
    """Milliseconds to fetch, check and open every segment of the feed."""
    begin = time.perf_counter()
    count = 0
    async for segment in reader.history():
        count += len(segment.samples)
    assert count
    return round((time.perf_counter() - begin) * 1000, 1)


def measure_network_epoch(segments: int, progress: Progress) -> dict[str, Any]:
    """Three nodes (owner, maintainer as proxy, auditor as the new reader) on this machine."""
    with tempfile.TemporaryDirectory(prefix="twinledger-bench-kpcpre-") as tmp:
        orgs = ["owner", "maintainer", "auditor"]
        homes = [Path(tmp) / "net" / org for org in orgs]
        init_network(Path(tmp) / "net", orgs, chain_id="bench-kpcpre", base_port=free_port_block(3 * len(orgs)),
                     block_interval_ms=100)  # fmt: skip
        nodes = []
        try:
            for home in homes:
                nodes.append(start_node(home))
            return asyncio.run(_network_epoch(homes, segments, progress))
        finally:
            for started in nodes:
                started.stop()


def run_kpcpre_benchmark(runs: int, output: Path, as_json: bool, network_segments: int = 0) -> dict[str, Any]:
    with Progress(console=console) as progress:
        task = progress.add_task("measuring", total=2 * len(SHAPES) + 2)
        primitives = measure_primitives(runs)
        progress.advance(task)
        and_trees = []
        for nodes, leaves in SHAPES:
            row = measure_shape(nodes, leaves, all_of, runs)
            row["ceiling"] = ceilings(primitives, leaves, leaves)
            and_trees.append(row)
            progress.advance(task)
        or_trees = []
        for nodes, leaves in SHAPES:
            row = measure_shape(nodes, leaves, any_of, runs)
            row["ceiling"] = ceilings(primitives, leaves, 1)
            or_trees.append(row)
            progress.advance(task)
        epoch = measure_epoch_sharing()
        progress.advance(task)
        network = measure_network_epoch(network_segments, progress) if network_segments else None
    result = {
        "benchmark": "kpcpre",
        "runs": runs,
        "primitives_ms": primitives,
        "and_trees": and_trees,
        "or_trees": or_trees,
        "epoch_sharing": epoch,
        "epoch_sharing_network": network,
        "paper_pc_ms": PAPER_PC,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},  # fmt: skip
    }
    if as_json:
        publish(result, output, True, "", [], [])
        return result
    publish(result, output, False, f"KP-CPRE primitives (BLS12-381, mcl), median of {runs}, ms",
            [], [(name, str(value)) for name, value in primitives.items()])  # fmt: skip
    for title, rows in (("binary AND trees", and_trees), ("binary OR trees", or_trees)):
        table = Table("|P|", "|A|", "", "KeyGen", "RKGen", "Enc", "ReEnc", "Dec", "Enc warm", "Dec owner",
                      title=f"{title}, median ms", title_justify="left")  # fmt: skip
        for row in rows:
            names = ("keygen", "rkgen", "enc", "reenc", "dec")
            table.add_row(str(row["nodes"]), str(row["attributes"]), "measured", *(str(row[name]) for name in names),
                          str(row["enc_warm"]), str(row["dec_owner"]))  # fmt: skip
            table.add_row("", "", "ceiling", *(str(row["ceiling"][name]) for name in names))
            table.add_row("", "", "paper PC", *(str(PAPER_PC[row["nodes"]][name]) for name in names), end_section=True)
        Console().print(table)
    Console().print(
        f"sharing one epoch ({epoch['samples']:,} samples in {epoch['segments']:,} segments) with a new reader: "
        f"{epoch['total_ms']} ms (RKGen {epoch['rkgen_ms']}, ReEnc {epoch['reenc_ms']}, Dec {epoch['dec_ms']}, "
        f"segments {epoch['segments_ms']})"
    )
    if network is not None:
        Console().print(
            f"on three nodes, an epoch of {network['samples']:,} samples in {network['segments']} segments: grant "
            f"{network['rkgen_ms'] + network['grant_commit_ms'] + network['hand_over_ms']:.1f} ms (RKGen "
            f"{network['rkgen_ms']}, commit {network['grant_commit_ms']}, hand-over {network['hand_over_ms']}); the new "
            f"reader reads the epoch through the proxy in {network['reader_epoch_ms']} ms, the owner itself in "
            f"{network['owner_epoch_ms']} ms"
        )
    return result
