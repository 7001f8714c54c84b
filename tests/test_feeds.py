"""Sensor feeds on real node processes: a four-organisation consortium whose nodes are all
store nodes (r = 3, write quorum 2). Feeds are created, pushed, read, followed and
verified through the CLI; forged and replayed updates speak the store protocol."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from network_helpers import Network
from store_helpers import AUDITOR, MAINTAINER, ORGANISATIONS, OWNER, cli, home, ok, store_consortium, with_client

from twinledger.config import load_config
from twinledger.crypto.keys import SigningKey
from twinledger.errors import TwinledgerError
from twinledger.store.client import StoreClient, linked_updates
from twinledger.store.feeds import FeedWriter, parse_feed_reference, seal_segment
from twinledger.store.items import FeedUpdate, ItemAcl, StoreError, chunk_hash

PLANT = Path(__file__).parent.parent / "examples" / "bottling-plant.aml"
START = 1_790_000_000_000_000
"""Sample times (microseconds) of the pushed test data."""
DEVICES = itertools.count(1)




@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> Iterator[Network]:
    yield from store_consortium(tmp_path_factory.mktemp("feeds") / "net")



def new_feed(network: Network, *readers: str) -> tuple[str, bytes]:
    """A new twin whose level sensor has a store feed readable by ``readers``: (twin, feed id)."""
    twin = ok("twin", "create", "--home", home(network, OWNER), "--aml", str(PLANT),
              "--device-id", f"plant-{next(DEVICES)}")["id"]  # fmt: skip
    options = [arg for reader in readers for arg in ("--reader", reader)]
    ok("twin", "feed", "add", twin, "level-sensor-1", "--home", home(network, OWNER), *options)
    view = httpx.get(f"{network.url(OWNER)}/v1/twins/{twin}", headers=network.headers(OWNER), timeout=10).json()
    return twin, parse_feed_reference(view["feeds"][0]["reference"])


def samples_csv(path: Path, count: int, start: int = START, rate: int = 100) -> Path:
    """``count`` samples at ``rate`` Hz from ``start``: a ramp that is easy to check."""
    step = 1_000_000 // rate
    lines = ["time,value", *(f"{(start + i * step) / 1e6:.6f},{i * 0.5}" for i in range(count))]
    path.write_text("\n".join(lines) + "\n")
    return path


def push(network: Network, twin: str, path: Path, *options: str) -> Any:
    return ok("twin", "feed", "push", twin, "level-sensor-1", str(path), "--home", home(network, OWNER), *options)



def checkpoints(network: Network, twin: str) -> list[dict[str, Any]]:
    view = httpx.get(f"{network.url(AUDITOR)}/v1/twins/{twin}/feeds/level-sensor-1/checkpoints",
                     headers=network.headers(AUDITOR), timeout=10)
    return view.json()["checkpoints"]


def test_a_feed_is_pushed_checkpointed_and_read_back_only_by_its_readers(consortium, tmp_path):
    twin, feed = new_feed(consortium, "maintainer")
    pushed = push(consortium, twin, samples_csv(tmp_path / "s.csv", 2500), "--checkpoint-every", "10",
                  "--segment-seconds", "1")  # fmt: skip
    assert (pushed["samples"], pushed["updates"], pushed["first_sequence"], pushed["last_sequence"]) == (2500, 25, 0, 24)
    assert [c["sequence"] for c in checkpoints(consortium, twin)] == [9, 19, 24]
    assert checkpoints(consortium, twin)[-1]["head"] == pushed["head"]

    read = ok("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, MAINTAINER))
    assert read["samples"] == [[START + i * 10_000, i * 0.5] for i in range(2500)]
    assert [u["sequence"] for u in read["updates"]] == list(range(25))

    window = ok("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, MAINTAINER),
                "--since", str((START + 3_000_000) / 1e6), "--until", str((START + 4_995_000) / 1e6))  # fmt: skip
    assert [t for t, _ in window["samples"]] == [START + i * 10_000 for i in range(300, 500)]
    assert [u["sequence"] for u in window["updates"]] == [3, 4]
    latest = ok("twin", "feed", "read", twin, "level-sensor-1", "--latest", "--home", home(consortium, OWNER))
    assert [u["sequence"] for u in latest["updates"]] == [24] and latest["samples"][-1] == [START + 2499 * 10_000, 1249.5]

    plot = cli("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, MAINTAINER))
    assert plot.returncode == 0 and "2,500" in plot.stdout and "▁" in plot.stdout and "█" in plot.stdout

    refused = cli("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, AUDITOR))
    assert refused.returncode == 1 and "not a reader" in refused.stderr and refused.stderr.count("\n") == 1

    verified = ok("twin", "feed", "verify", twin, "level-sensor-1", "--home", home(consortium, MAINTAINER))
    assert verified["intact"] and verified["updates"] == 25 and verified["checkpoints"] == 3
    assert verified["segments_opened"] and len(verified["replicas"]) == 3

    more = push(consortium, twin, samples_csv(tmp_path / "t.csv", 300, start=START + 30_000_000), "--segment-seconds", "1")
    assert (more["first_sequence"], more["last_sequence"]) == (25, 27)  # the writer continues from the stored head


def test_bad_samples_are_refused_before_anything_is_appended(consortium, tmp_path):
    twin, feed = new_feed(consortium, "maintainer")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"time,value\n{START / 1e6},1.0\n{START / 1e6 + 1},warm\n")
    refused = cli("twin", "feed", "push", twin, "level-sensor-1", str(bad), "--home", home(consortium, OWNER))
    assert refused.returncode == 1 and "line 3" in refused.stderr and "'warm' is not a number" in refused.stderr
    backwards = tmp_path / "backwards.csv"
    backwards.write_text(f"{START / 1e6 + 1},1.0\n{START / 1e6},2.0\n")
    refused = cli("twin", "feed", "push", twin, "level-sensor-1", str(backwards), "--home", home(consortium, OWNER))
    assert refused.returncode == 1 and "line 2: time" in refused.stderr and "strictly increasing" in refused.stderr
    assert ok("twin", "feed", "read", twin, "level-sensor-1", "--home", home(consortium, OWNER))["updates"] == []
    stranger = cli("twin", "feed", "push", twin, "level-sensor-1", str(samples_csv(tmp_path / "x.csv", 10)),
                   "--home", home(consortium, MAINTAINER))  # fmt: skip
    assert stranger.returncode == 1 and "only its owner appends" in stranger.stderr


def test_each_sample_once_finite_and_in_time_and_an_interrupted_push_resumes(consortium, tmp_path):
    """What a backfill from CSV meets: sensor exports with NaN and overflow, repeated
    lines, a push cut short and run again, an older file pushed by mistake."""
    twin, _ = new_feed(consortium, "maintainer")
    owner = ["--home", home(consortium, OWNER)]
    for word in ("nan", "inf", "-Infinity", "1e400"):
        bad = tmp_path / "bad.csv"
        bad.write_text(f"time,value\n{START / 1e6},1.0\n{START / 1e6 + 1},{word}\n")
        refused = cli("twin", "feed", "push", twin, "level-sensor-1", str(bad), *owner)
        assert refused.returncode == 1 and f"line 3: '{word}' is not a finite number" in refused.stderr, refused.stderr
    repeated = tmp_path / "repeated.csv"
    repeated.write_text(f"time,value\n{START / 1e6},1.0\n{START / 1e6},1.0\n")
    refused = cli("twin", "feed", "push", twin, "level-sensor-1", str(repeated), *owner)
    assert refused.returncode == 1 and "line 3: time" in refused.stderr and "not after line 2's" in refused.stderr

    hour = samples_csv(tmp_path / "hour.csv", 600, rate=1)
    cut = tmp_path / "cut.csv"  # the push of hour.csv interrupted after 209 samples
    cut.write_text("".join(hour.read_text().splitlines(keepends=True)[:210]))
    assert push(consortium, twin, cut)["samples"] == 209
    resumed = push(consortium, twin, hour)
    assert (resumed["skipped"], resumed["samples"]) == (209, 391), "run again, it goes on where the feed ends"
    again = push(consortium, twin, hour)
    assert (again["skipped"], again["samples"], again["updates"]) == (600, 0, 0)
    older = samples_csv(tmp_path / "older.csv", 100, rate=2)  # another export over the same hour
    refused = cli("twin", "feed", "push", twin, "level-sensor-1", str(older), *owner)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "history is not rewritten" in refused.stderr

    read = ok("twin", "feed", "read", twin, "level-sensor-1", *owner)
    assert read["samples"] == [[START + i * 1_000_000, i * 0.5] for i in range(600)], "each sample once, in order"
    verified = ok("twin", "feed", "verify", twin, "level-sensor-1", *owner)
    assert verified["intact"] and verified["segments_opened"]


def test_a_backfill_takes_segments_from_the_data_rate_and_exports_to_csv_and_parquet(consortium, tmp_path):
    """An hour at 1 Hz was 3,600 one-sample segments (75 s); a segment now holds about
    4,096 samples whatever the rate. The export gives back exactly what was pushed, as
    CSV that pushes again unchanged, as Parquet with real timestamps, and to stdout."""
    import pyarrow.parquet as pq

    twin, _ = new_feed(consortium, "maintainer")
    owner = ["--home", home(consortium, OWNER)]
    hour = push(consortium, twin, samples_csv(tmp_path / "hour.csv", 3600, rate=1))
    assert (hour["samples"], hour["updates"]) == (3600, 1)
    later = START + 3600 * 1_000_000
    fast = push(consortium, twin, samples_csv(tmp_path / "fast.csv", 20_000, start=later, rate=10))
    assert fast["updates"] == 5, "20,000 samples at 10 Hz: 409.6 s (4,096 samples) a segment"
    expected = [[START + i * 1_000_000, i * 0.5] for i in range(3600)] + \
        [[later + i * 100_000, i * 0.5] for i in range(20_000)]  # fmt: skip

    exported = ok("twin", "feed", "export", twin, "level-sensor-1", "-o", str(tmp_path / "all.csv"), *owner)
    assert (exported["samples"], exported["segments"], exported["format"]) == (23_600, 6, "csv")
    lines = (tmp_path / "all.csv").read_text().splitlines()
    assert lines[0] == "time,value" and lines[1] == "2026-09-21T14:13:20.000000+00:00,0.0"
    copy, _ = new_feed(consortium, "maintainer")
    pushed = ok("twin", "feed", "push", copy, "level-sensor-1", str(tmp_path / "all.csv"), *owner)
    assert pushed["samples"] == 23_600
    assert ok("twin", "feed", "read", copy, "level-sensor-1", *owner)["samples"] == expected, "the export pushes back as is"

    parquet = ok("twin", "feed", "export", twin, "level-sensor-1", "-o", str(tmp_path / "all.parquet"),
                 "--home", home(consortium, MAINTAINER))  # fmt: skip
    assert parquet["format"] == "parquet"
    table = pq.read_table(tmp_path / "all.parquet")
    assert str(table.schema.field("time").type) == "timestamp[us, tz=UTC]" and table.num_rows == 23_600
    times = table.column("time").cast("int64").to_pylist()
    assert [[t, v] for t, v in zip(times, table.column("value").to_pylist(), strict=True)] == expected

    since, until = (START + 3500 * 1_000_000) / 1e6, (later + 50 * 100_000) / 1e6
    piped = cli("twin", "feed", "export", twin, "level-sensor-1", "-o", "-", "--since", str(since), "--until", str(until),
                *owner)  # fmt: skip
    assert piped.returncode == 0 and "wrote 151 samples" in piped.stderr
    rows = piped.stdout.splitlines()
    assert len(rows) == 152 and rows[1].startswith("2026-09-21T15:11:40") and rows[-1].startswith("2026-09-21T15:13:25")

    refused = cli("twin", "feed", "export", twin, "level-sensor-1", "-o", str(tmp_path / "no.csv"),
                  "--home", home(consortium, AUDITOR))  # fmt: skip
    assert refused.returncode == 1 and "not a reader" in refused.stderr and refused.stderr.count("\n") == 1
    assert not (tmp_path / "no.csv").exists() and not list(tmp_path.glob(".no.csv.*")), "no partial file"
    assert (tmp_path / "all.csv").stat().st_mode & 0o777 == 0o600, "decrypted data: the owner's eyes only"
    wrong = cli("twin", "feed", "export", twin, "level-sensor-1", "-o", str(tmp_path / "x.xlsx"), "--format", "xlsx",
                *owner)  # fmt: skip
    assert wrong.returncode == 1 and "no export format 'xlsx'" in wrong.stderr


async def _acl(client: StoreClient, feed: bytes) -> ItemAcl:
    return await client.get_acl(feed)


def _next_update(client_head: FeedUpdate, acl: ItemAcl, key: SigningKey, **changes: Any) -> tuple[FeedUpdate, bytes]:
    sequence, moment = client_head.sequence + 1, client_head.last + 1
    segment = seal_segment(bytes(32), acl.item, sequence, [(moment, 1.0)])
    update = FeedUpdate(acl.item, sequence, client_head.time + 1, client_head.hash, chunk_hash(segment), 1, moment,
                        moment, client_head.key_commitment)  # fmt: skip
    return replace(update, **changes).signed(key), segment


def test_forged_replayed_and_out_of_order_updates_are_refused(consortium, tmp_path):
    twin, feed = new_feed(consortium, "maintainer")
    push(consortium, twin, samples_csv(tmp_path / "s.csv", 500), "--segment-seconds", "1")
    owner = load_config(consortium.homes[OWNER]).signing_key("operator")
    stranger = load_config(consortium.homes[MAINTAINER]).signing_key("operator")

    async def attempts(client: StoreClient) -> dict[str, list[str]]:
        acl = await client.get_acl(feed)
        head = await client.feed_head(acl)
        assert head is not None and head.sequence == 4
        old = (await client.feed_updates(acl, 1))[0]
        cases = {
            "replayed": old,
            "forged": _next_update(head, acl, stranger)[0],
            "gap": _next_update(head, acl, owner, sequence=6)[0],
            "wrong previous": _next_update(head, acl, owner, previous=old.hash)[0],
            "not later": _next_update(head, acl, owner, time=head.time)[0],
            "samples not later": _next_update(head, acl, owner, first=START, last=START)[0],
            "conflicting": replace(old, time=old.time + 1).signed(owner),
            "from the future": _next_update(head, acl, owner, time=head.time + 3_600_000_000)[0],
        }
        codes: dict[str, list[str]] = {}
        for name, update in {**cases, "malformed": None}.items():
            raw = update.encoded() if update is not None else b"\x93\x01\x02"
            codes[name] = []
            for node in client.replicas(feed):
                try:
                    await client.request(node, "feed_put", {"feed": feed, "update": raw})
                    codes[name].append("accepted")
                except StoreError as exc:
                    codes[name].append(exc.code)
        after = await client.feed_head(acl)
        assert after is not None and after.hash == head.hash
        return codes

    codes = with_client(consortium, OWNER, attempts)
    expected = {"replayed": "replayed_update", "forged": "bad_signature", "gap": "out_of_order",
                "wrong previous": "out_of_order", "not later": "out_of_order", "samples not later": "out_of_order",
                "conflicting": "conflicting_update",
                "from the future": "future_update", "malformed": "bad_update"}  # fmt: skip
    assert codes == {name: [code] * 3 for name, code in expected.items()}

    async def relayed_off_the_replicas(client: StoreClient) -> list[str]:
        acl = await client.get_acl(feed)
        head = await client.feed_head(acl)
        assert head is not None
        update, _ = _next_update(head, acl, owner)  # validly signed, sent by another organisation's node
        refused = []
        for node in (n for n in client.nodes if n not in client.replicas(feed)):
            with pytest.raises(StoreError) as caught:
                await client.request(node, "feed_put", {"feed": feed, "update": update.encoded()})
            refused.append(caught.value.code)
        return refused

    assert with_client(consortium, MAINTAINER, relayed_off_the_replicas) == ["access_denied"]
    segment = with_client(consortium, OWNER, lambda c: _all_updates(c, feed))[0].segment
    assert with_client(consortium, AUDITOR, lambda c: _segment_codes(c, feed, segment)) == ["access_denied"] * 3


async def _segment_codes(client: StoreClient, feed: bytes, segment: bytes) -> list[str]:
    """A store node that is no reader sees a feed's updates (hashes and times, for catch-up)
    but gets none of its segments."""
    codes = []
    for node in client.replicas(segment):
        with pytest.raises(StoreError) as caught:
            await client.request(node, "get", {"item": feed, "hash": segment})
        codes.append(caught.value.code)
    return codes


def test_a_follower_sees_each_new_segment_live_through_the_cli_and_the_node_event_stream(consortium, tmp_path):
    twin, feed = new_feed(consortium, "maintainer")
    first = push(consortium, twin, samples_csv(tmp_path / "a.csv", 100), "--segment-seconds", "1")
    follower = subprocess.Popen([sys.executable, "-m", "twinledger", "twin", "feed", "follow", twin, "level-sensor-1",
                                 "--after", str(first["last_sequence"]), "--count", "3", "--json",
                                 "--home", home(consortium, MAINTAINER)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    url = f"{consortium.url(MAINTAINER)}/v1/feeds/{feed.hex()}/updates?after={first['last_sequence']}"
    with httpx.stream("GET", url, headers=consortium.headers(MAINTAINER), timeout=60) as stream:
        assert stream.status_code == 200
        pushed = push(consortium, twin, samples_csv(tmp_path / "b.csv", 300, start=START + 10_000_000),
                      "--segment-seconds", "1")  # three segments, as a device writes them  # fmt: skip
        events = []
        deadline = time.monotonic() + 60  # the stream's keep-alives would outlast any read timeout
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if len(events) == 3 or time.monotonic() > deadline:
                break
    assert [e["sequence"] for e in events] == [1, 2, 3] and events[-1]["hash"] == pushed["head"]
    out, _ = follower.communicate(timeout=60)
    segments = [json.loads(line) for line in out.splitlines()]
    assert follower.returncode == 0 and [s["sequence"] for s in segments] == [1, 2, 3]
    assert segments[0]["values"][0] == [START + 10_000_000, 0.0] and sum(len(s["values"]) for s in segments) == 300

    refused = httpx.get(f"{consortium.url(AUDITOR)}/v1/feeds/{feed.hex()}/updates",
                        headers=consortium.headers(AUDITOR), timeout=10)
    assert refused.status_code == 403 and "not a reader" in refused.json()["error"]["message"]


def test_feed_writes_go_on_without_a_replica_which_catches_up_after_kill_9(consortium, tmp_path):
    twin, feed = new_feed(consortium, "maintainer")
    push(consortium, twin, samples_csv(tmp_path / "a.csv", 300), "--segment-seconds", "1")
    replicas = with_client(consortium, OWNER, lambda c: _replicas(c, feed))
    victim = next(i for i, name in enumerate(ORGANISATIONS) if name in replicas and i != OWNER)
    stand_in = next(i for i, name in enumerate(ORGANISATIONS) if name not in replicas)
    consortium.kill(victim)
    try:
        more = push(consortium, twin, samples_csv(tmp_path / "b.csv", 500, start=START + 10_000_000), "--segment-seconds", "1")
        assert (more["first_sequence"], more["last_sequence"]) == (3, 7)
        # The node standing in held none of the feed: it fetched updates 0 to 2 before taking 3.
        assert with_client(consortium, OWNER, lambda c: _head_on(c, feed, stand_in)) == 7
    finally:
        consortium.start(victim)
    assert with_client(consortium, OWNER, lambda c: _head_on(c, feed, victim)) == 2  # kept through kill -9

    pushed = sum(ok("store", "repair", "--home", home(consortium, i))["feed_updates_pushed"]
                 for i in range(4) if i != victim)  # fmt: skip
    assert pushed >= 5
    assert with_client(consortium, OWNER, lambda c: _head_on(c, feed, victim)) == 7
    verified = ok("twin", "feed", "verify", twin, "level-sensor-1", "--home", home(consortium, OWNER))
    assert verified["intact"] and verified["behind"] == {} and verified["updates"] == 8


async def _replicas(client: StoreClient, feed: bytes) -> list[str]:
    return [node.organisation for node in client.replicas(feed)]


async def _head_on(client: StoreClient, feed: bytes, i: int) -> int:
    """The newest update organisation i's store node holds of ``feed``."""
    node = next(n for n in client.nodes if n.organisation == ORGANISATIONS[i])
    answer = await client.request(node, "feed_get", {"feed": feed, "after": -1, "latest": True})
    updates = linked_updates(answer["updates"], await client.get_acl(feed), None)
    return updates[-1].sequence if updates else -1


def test_a_failed_checkpoint_keeps_the_samples_and_is_tried_again(consortium, tmp_path):
    twin, feed = new_feed(consortium)
    config = load_config(consortium.homes[OWNER])
    attempts: list[int] = []

    async def flaky_chain(head: FeedUpdate) -> None:
        attempts.append(head.sequence)
        if len(attempts) == 1:
            raise TwinledgerError("node unreachable", code="unreachable")

    async def write(client: StoreClient) -> tuple[list[int], int]:
        writer = await FeedWriter.open(client, config.signing_key("operator"), "owner", config.encryption_key(), feed,
                                       flaky_chain, checkpoint_every=1)  # fmt: skip
        written = []
        for second in range(3):
            writer.extend([(START + second * 1_000_000, float(second))])
            written += [u.sequence for u in await writer.flush()]
        return written, writer.checkpointed

    assert with_client(consortium, OWNER, write) == ([0, 1, 2], 2)
    assert attempts == [0, 1, 2]


def _store_dbs(network: Network) -> list[Path]:
    return [path / "data" / "store" / "index.db" for path in network.homes]


def _rows(network: Network, feed: bytes, sequence: int) -> list[tuple[Path, bytes]]:
    found = []
    for db in _store_dbs(network):
        with sqlite3.connect(db) as connection:
            row = connection.execute("SELECT raw FROM feed_updates WHERE item = ? AND sequence = ?",
                                     (feed, sequence)).fetchone()  # fmt: skip
        if row is not None:
            found.append((db, row[0]))
    return found


def _chunk_paths(network: Network, digest: bytes) -> list[Path]:
    name = digest.hex()
    return [p for path in network.homes for p in [path / "data" / "store" / "chunks" / name[:2] / name] if p.exists()]


def test_feed_verify_finds_altered_deleted_and_reordered_history(consortium, tmp_path):
    twin, feed = new_feed(consortium, "maintainer")
    push(consortium, twin, samples_csv(tmp_path / "s.csv", 3000), "--checkpoint-every", "10", "--segment-seconds", "1")
    owner = load_config(consortium.homes[OWNER]).signing_key("operator")
    updates = with_client(consortium, OWNER, lambda c: _all_updates(c, feed))
    assert len(updates) == 30

    def verify() -> tuple[int, dict[str, set[int]]]:
        done = cli("twin", "feed", "verify", twin, "level-sensor-1", "--json", "--home", home(consortium, MAINTAINER))
        report = json.loads(done.stdout)
        kinds: dict[str, set[int]] = {}
        for problem in report["problems"]:
            kinds.setdefault(problem["kind"], set()).add(problem["sequence"])
        return done.returncode, kinds

    for path in _chunk_paths(consortium, updates[3].segment):  # a segment altered on every replica
        data = bytearray(path.read_bytes())
        data[40] ^= 0x01
        path.write_bytes(bytes(data))
    assert verify() == (1, {"segment altered": {3}})

    for path in _chunk_paths(consortium, updates[5].segment):  # a segment deleted everywhere
        path.unlink()
    code, kinds = verify()
    assert code == 1 and 5 in kinds["segment missing"]

    for db, _ in _rows(consortium, feed, 7) + _rows(consortium, feed, 8):  # two updates deleted everywhere
        with sqlite3.connect(db) as connection:
            connection.execute("DELETE FROM feed_updates WHERE item = ? AND sequence IN (7, 8)", (feed,))
    code, kinds = verify()
    assert code == 1 and kinds["deleted"] == {7}

    # The owner rewrites checkpointed history: updates 18 and 19 swap their segments.
    first = replace(updates[18], segment=updates[19].segment, samples=updates[19].samples,
                    first=updates[19].first, last=updates[19].last).signed(owner)  # fmt: skip
    second = replace(updates[19], previous=first.hash, segment=updates[18].segment, samples=updates[18].samples,
                     first=updates[18].first, last=updates[18].last).signed(owner)  # fmt: skip
    for sequence, rewritten in ((18, first), (19, second)):
        for db, _ in _rows(consortium, feed, sequence):
            with sqlite3.connect(db) as connection:
                connection.execute("UPDATE feed_updates SET raw = ?, hash = ? WHERE item = ? AND sequence = ?",
                                   (rewritten.encoded(), rewritten.hash, feed, sequence))  # fmt: skip
    code, kinds = verify()
    assert code == 1 and kinds["altered"] == {19} and {18, 19, 20} <= kinds["reordered"]

    plain = cli("twin", "feed", "verify", twin, "level-sensor-1", "--home", home(consortium, MAINTAINER))
    assert plain.returncode == 1 and "differs from the on-chain checkpoint" in plain.stdout
    assert plain.stderr.startswith("error: feed ") and plain.stderr.count("\n") == 1


async def _all_updates(client: StoreClient, feed: bytes) -> list[FeedUpdate]:
    acl = await client.get_acl(feed)
    return await client.feed_updates(acl)


def test_the_owner_shares_and_unshares_feeds_and_documents(consortium, tmp_path):
    twin, feed = new_feed(consortium, "maintainer")
    push(consortium, twin, samples_csv(tmp_path / "s.csv", 300), "--segment-seconds", "1")

    def reads(i: int) -> subprocess.CompletedProcess[str]:
        return cli("twin", "feed", "read", twin, "level-sensor-1", "--json", "--home", home(consortium, i))

    assert reads(AUDITOR).returncode == 1
    shared = ok("twin", "feed", "share", twin, "level-sensor-1", "auditor", "--home", home(consortium, OWNER))
    assert shared["readers"] == ["auditor", "maintainer", "owner"] and shared["versions"] == [2]
    assert len(json.loads(reads(AUDITOR).stdout)["samples"]) == 300  # the history written before, too
    ok("twin", "feed", "unshare", twin, "level-sensor-1", "maintainer", "--home", home(consortium, OWNER))
    refused = reads(MAINTAINER)
    assert refused.returncode == 1 and "not a reader" in refused.stderr

    for args, message in ((("unshare", "owner", OWNER), "always reads"), (("unshare", "manufacturer", OWNER),
                          "not a reader"), (("share", "nobody", OWNER), "no member organisation is named nobody"),
                          (("share", "manufacturer", AUDITOR), "only the owner")):  # fmt: skip
        verb, organisation, who = args
        done = cli("twin", "feed", verb, twin, "level-sensor-1", organisation, "--home", home(consortium, who))
        assert done.returncode == 1 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr

    report = tmp_path / "report.bin"
    report.write_bytes(b"maintenance report " * 1000)
    added = ok("twin", "doc", "add", twin, str(report), "--reader", "maintainer", "--home", home(consortium, OWNER))

    def fetch(i: int) -> int:
        return cli("twin", "doc", "get", twin, added["document"], "-o", str(tmp_path / f"out-{i}.bin"),
                   "--home", home(consortium, i)).returncode  # fmt: skip

    assert fetch(AUDITOR) == 1
    ok("twin", "doc", "share", twin, added["document"], "auditor", "--home", home(consortium, OWNER))
    assert fetch(AUDITOR) == 0 and (tmp_path / f"out-{AUDITOR}.bin").read_bytes() == report.read_bytes()
    unshared = cli("twin", "doc", "unshare", twin, added["document"], "auditor", "--home", home(consortium, OWNER))
    assert unshared.returncode == 0 and "store a new version" in unshared.stdout
    assert fetch(AUDITOR) == 1 and fetch(MAINTAINER) == 0
