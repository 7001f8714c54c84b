"""Ingest through a node's TCP listener and from a watched directory: records are
acknowledged only once committed, read back byte for byte, sealed for the sender alone
with tier 2; a ``kill -9`` of the node mid-stream loses and duplicates nothing; bad
frames and oversized payloads get named errors."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from network_helpers import Network, wait_for
from store_helpers import AUDITOR, MANUFACTURER, OWNER, cli, ok, store_consortium

from twinledger.config import init_home, load_config, read_run_file
from twinledger.core.types import sign_transaction
from twinledger.errors import DecryptionFailed, TwinledgerError
from twinledger.ingest.directory import DirectoryJournal
from twinledger.ingest.journal import IngestJournal, JournalRow, StreamClaim
from twinledger.ingest.payloads import read_payload
from twinledger.ingest.protocol import (
    PROTOCOL,
    IngestError,
    IngestRecord,
    RecordRejected,
    frame,
    parse_record,
    read_message,
    record_seq,
)
from twinledger.ingest.sender import Answer, IngestSender, SenderKey, record_context
from twinledger.ingest.service import Job, batches_by_attributes
from twinledger.launcher import NodeProcess, start_node
from twinledger.services.remote import NodeClient, store_client
from twinledger.store.documents import as_reader
from twinledger.store.protocol import StoreTls

# -- the parts on their own ----------------------------------------------------------------------


def test_record_frames_are_checked_and_named():
    good = {"type": "record", "seq": 3, "payload": b"x" * 10, "media_type": "text/plain", "metadata": {"line": "1"}}
    assert parse_record(good, 100) == IngestRecord(3, b"x" * 10, "text/plain", {"line": "1"})
    for seq in (0, -1, "1", True, None):
        with pytest.raises(IngestError) as caught:
            record_seq({**good, "seq": seq})
        assert caught.value.code == "malformed_frame" and caught.value.fatal
    cases = {
        "record_too_large": {**good, "payload": b"x" * 101},
        "record_invalid": {**good, "payload": "text"},
    }
    cases_invalid = [{**good, "metadata": {"store": "forged"}}, {**good, "metadata": {"k": 1}},
                     {**good, "metadata": {f"k{i}": "v" for i in range(40)}}, {**good, "media_type": ""}]  # fmt: skip
    for code, message in cases.items():
        with pytest.raises(RecordRejected) as rejected:
            parse_record(message, 100)
        assert rejected.value.code == code and not rejected.value.fatal
    for message in cases_invalid:
        with pytest.raises(RecordRejected) as rejected:
            parse_record(message, 100)
        assert rejected.value.code == "record_invalid"
    with pytest.raises(RecordRejected, match="'store' is set by the node"):
        parse_record(cases_invalid[0], 100)


def test_tier2_sealing_is_deterministic_per_record_and_only_the_sender_opens_it():
    key, other = SenderKey(os.urandom(32)), SenderKey(os.urandom(32))
    stream = os.urandom(16)
    first, second = record_context(stream, 1), record_context(stream, 2)
    sealed = key.seal(b"spindle 4711 rpm", first)
    assert sealed == key.seal(b"spindle 4711 rpm", first)  # a resend is the same record
    assert sealed != key.seal(b"spindle 4711 rpm", second) and b"4711" not in sealed
    assert key.open(sealed, first) == b"spindle 4711 rpm"
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    for attempt in (lambda: other.open(sealed, first), lambda: key.open(bytes(tampered), first),
                    lambda: key.open(b"junk", first),
                    lambda: key.open(sealed, second)):  # moved to another record: it does not open there  # fmt: skip
        with pytest.raises(DecryptionFailed):
            attempt()


def test_tier2_keys_are_derived_apart_and_the_first_format_still_opens():
    """Security review: the file's secret was both the HMAC and the AES key, and the
    associated data a constant, so a sealed payload could move to another record."""
    key = SenderKey(os.urandom(32))
    context = record_context(os.urandom(16), 7)
    sealed = key.seal(b"torque 12 Nm", context)
    nonce, body = sealed[12:24], sealed[24:]
    with pytest.raises(InvalidTag):  # not the raw secret
        AESGCM(key.secret).decrypt(nonce, body, b"twinledger/ingest/tier-2/v1" + context)
    assert nonce != hmac.new(key.secret, b"twinledger/ingest/tier-2/v1" + context + b"torque 12 Nm",
                             hashlib.sha256).digest()[:12]  # fmt: skip
    legacy_nonce = os.urandom(12)
    legacy = (b"TLI2" + bytes.fromhex(key.key_id) + legacy_nonce
              + AESGCM(key.secret).encrypt(legacy_nonce, b"old record", b"twinledger/ingest/tier-2/v1"))  # fmt: skip
    assert key.open(legacy, context) == b"old record"


def test_the_journals_keep_what_was_sent(tmp_path):
    journal = IngestJournal(tmp_path / "ingest.db")
    stream = os.urandom(16)
    shared = ("kind:record", "twin:t1")
    assert journal.claim_stream(stream, "acme/node-1", shared) == StreamClaim("acme/node-1", shared)
    assert journal.claim_stream(stream, "acme/node-2", ()) == StreamClaim("acme/node-1", shared), "the first hello fixes both"
    private = os.urandom(16)
    assert journal.claim_stream(private, "acme/node-1", ()) == StreamClaim("acme/node-1", ())
    assert journal.claim_stream(private, "acme/node-1", shared).attributes == ()
    journal.add([JournalRow(stream, seq, b"d", b"tx", bytes([seq]) * 32, None) for seq in (1, 2, 3)])
    journal.committed([(stream, 2, 7)])
    assert journal.next_seq(stream) == 4 and journal.next_seq(os.urandom(16)) == 1
    assert sorted(r.seq for r in journal.open_rows()) == [1, 3]
    assert journal.lookup(stream, 2).height == 7 and journal.lookup(stream, 9) is None
    journal.close()
    reopened = DirectoryJournal(tmp_path / "dir.db")
    numbered = reopened.assign(["a", "b"], first=5)
    assert numbered == {"a": 5, "b": 6} and reopened.assign(["c"], first=1) == {"c": 7}
    stream_id = reopened.stream
    reopened.finish(5, "done", b"r")
    reopened.close()
    again = DirectoryJournal(tmp_path / "dir.db")
    assert again.stream == stream_id and again.sending() == {"b": 6, "c": 7}


# -- one node: the protocol's errors ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_node(tmp_path_factory) -> Iterator[NodeProcess]:
    """A solo node whose listener takes records of up to 64 KiB, 4 unanswered at a time."""
    home = tmp_path_factory.mktemp("ingest-solo") / "home"
    init_home(home, "acme", api_port=0)
    doc = tomllib.loads((home / "node.toml").read_text())
    doc["ingest"].update(window=4, max_record_bytes=64 * 1024)
    (home / "node.toml").write_text(tomli_w.dumps(doc))
    process = start_node(home)
    try:
        yield process
    finally:
        process.stop()


class RawConnection:
    """The protocol by hand, to send what a correct client never would."""

    def __init__(self, home: Path) -> None:
        self.config = load_config(home)
        self.tls = StoreTls.of_home(self.config)

    async def open(self, hello: dict[str, Any] | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = read_run_file(self.config)["ingest"].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=self.tls.client, server_hostname=None)
        message = {"type": "hello", "protocol": PROTOCOL, "stream": os.urandom(16),
                   "organisation_certificate": self.tls.org_cert_der}  # fmt: skip
        writer.write(frame({**message, **(hello or {})}))
        return reader, writer

    @staticmethod
    async def answers(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
        """Every message until the node closes the connection."""
        messages = []
        with pytest.raises(asyncio.IncompleteReadError):
            while True:
                messages.append(await asyncio.wait_for(read_message(reader, 1 << 20, frozenset(
                    {"welcome", "ack", "rejected", "busy", "error"})), 30))  # fmt: skip
        return messages


def record(seq: int, payload: bytes, **metadata: str) -> bytes:
    return frame({"type": "record", "seq": seq, "payload": payload, "media_type": "text/plain", "metadata": metadata})


def test_bad_frames_and_oversized_payloads_get_named_errors(small_node):
    raw = RawConnection(small_node.home)

    async def session(hello: dict[str, Any] | None, *frames: bytes, wait_for_acks: int = 0) -> list[dict[str, Any]]:
        reader, writer = await raw.open(hello)
        messages = [await read_message(reader, 1 << 20, frozenset({"welcome", "error"}))]
        if messages[0]["type"] == "error":
            return messages
        for chunk in frames:
            writer.write(chunk)
        await writer.drain()
        while sum(m["type"] in ("ack", "rejected") for m in messages) < wait_for_acks:
            messages.append(await asyncio.wait_for(read_message(reader, 1 << 20, frozenset(
                {"ack", "rejected", "busy", "error"})), 30))  # fmt: skip
        writer.write(b"\xff\xff\xff\xff")  # a frame too large: the node answers and closes
        return messages + await raw.answers(reader)

    def codes(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return [(m["type"], m.get("code", m.get("seq"))) for m in messages if m["type"] not in ("welcome", "busy")]

    # A good record, one with a payload over the limit, one with forged metadata, then a good one:
    # the bad ones are rejected by name and the stream goes on.
    messages = asyncio.run(session(None, record(1, b"a"), record(2, b"x" * (65 * 1024)), record(3, b"c", store="x"),
                                   record(4, b"d"), wait_for_acks=4))  # fmt: skip
    assert messages[0]["type"] == "welcome" and messages[0]["max_record"] == 64 * 1024
    assert sorted(codes(messages)[:4], key=str) == sorted([("ack", 1), ("rejected", "record_too_large"),
                                                          ("rejected", "record_invalid"), ("ack", 4)], key=str)  # fmt: skip
    too_large = next(m for m in messages if m.get("code") == "record_too_large")
    assert too_large["seq"] == 2 and "65536" in too_large["message"]
    assert codes(messages)[-1] == ("error", "frame_too_large")

    # Fatal: undecodable bytes, a payload past the frame limit, no hello, another protocol, seq 0.
    garbage = (5).to_bytes(4, "big") + b"\xc1\xc1\xc1\xc1\xc1"
    assert codes(asyncio.run(session(None, garbage)))[-1] == ("error", "malformed_frame")
    huge = record(5, b"x" * (200 * 1024))
    fatal = asyncio.run(session(None, huge))
    assert codes(fatal)[0] == ("error", "frame_too_large") and "records may hold" in fatal[1]["message"]
    assert codes(asyncio.run(session({"type": "record"})))[0] == ("error", "handshake")
    assert codes(asyncio.run(session({"protocol": "twinledger-ingest/9"})))[0] == ("error", "protocol_version")
    assert codes(asyncio.run(session(None, record(0, b"z"))))[0] == ("error", "malformed_frame")
    # Six records at once against a window of four.
    assert ("error", "window_exceeded") in codes(asyncio.run(session(None, *(record(s, b"w") for s in range(1, 7)))))

    # The same number with other content is refused; sent again unchanged, the same record is acknowledged.
    stream = os.urandom(16)
    first = asyncio.run(session({"stream": stream}, record(1, b"first"), wait_for_acks=1))
    again = asyncio.run(session({"stream": stream}, record(1, b"first"), record(1, b"other"), wait_for_acks=2))
    assert again[0]["next"] == 2
    acks = [m for m in first + again if m["type"] == "ack"]
    assert len(acks) == 2 and acks[0]["record"] == acks[1]["record"]
    assert ("rejected", "seq_reused") in codes(again)


def test_records_are_read_back_and_tier2_is_for_the_sender_alone(small_node, tmp_path):
    home = str(small_node.home)
    lines = tmp_path / "readings.csv"
    lines.write_bytes(b"".join(f"2026-11-22T10:00:{i:02},{180 + i / 10}\n".encode() for i in range(12)))
    sent = ok("ingest", "send", "--home", home, str(lines), "--lines", "--meta", "machine=filler-1")
    assert len(sent["records"]) == 12 and all("record" in r for r in sent["records"])
    shown = ok("record", "get", "--home", home, sent["records"][4]["record"], "--out", str(tmp_path / "line5"))
    assert shown["metadata"]["machine"] == "filler-1" and shown["metadata"]["line"] == "5"
    assert (tmp_path / "line5").read_bytes() == lines.read_bytes().splitlines()[4]
    stream = ok("ingest", "send", "--home", home, str(lines), "--stream", "filler-1")["stream"]
    continued = ok("ingest", "send", "--home", home, str(lines), "--stream", "filler-1")
    assert continued["stream"] == stream and continued["records"][0]["seq"] == 2

    sealed = ok("ingest", "send", "--home", home, str(lines), "--tier2")["records"][0]["record"]
    view = ok("record", "get", "--home", home, sealed, "--out", str(tmp_path / "opened"))
    assert (tmp_path / "opened").read_bytes() == lines.read_bytes() and "tier2" in view["metadata"]
    # Whoever reads the store document without the sender's key sees only the sealed bytes.
    config = load_config(small_node.home)
    members = httpx.get(f"{small_node.url}/v1/members", headers=small_node.headers, timeout=10).json()

    async def fetch() -> bytes:
        async with store_client(config, members) as store:
            return await read_payload(store, {**view, "metadata": {k: v for k, v in view["metadata"].items()
                                                                   if k != "tier2"}},
                                      as_reader(config.organisation, config.encryption_key()))  # fmt: skip

    stored = asyncio.run(fetch())
    assert b"2026-11-22" not in stored and stored.startswith(b"TLI3")
    key_file = small_node.home / "keys" / "ingest-tier2.key"
    key_file.rename(tmp_path / "moved.key")
    try:
        refused = cli("record", "get", "--home", home, sealed, "--out", str(tmp_path / "nope"))
        assert refused.returncode != 0 and "tier-2 key" in refused.stderr and not (tmp_path / "nope").exists()
    finally:
        (tmp_path / "moved.key").rename(key_file)
    missing = cli("record", "get", "--home", home, "ab" * 32)
    assert missing.returncode != 0 and "no record" in missing.stderr


def test_a_record_whose_nonce_was_overtaken_is_signed_again_and_committed_once(small_node, tmp_path):
    """A later nonce of the node key commits first (as a relay can reorder them, or a node
    lose a transaction in a crash): the listener's next nonces can then never commit, so it
    signs those records again past the spent nonce."""
    home = str(small_node.home)
    config = load_config(small_node.home)
    key = config.signing_key()
    node = NodeClient(config)
    try:
        spent = node.next_nonce(key.public) + 5
        later = sign_transaction(key, chain_id="acme-chain", nonce=spent, contract="records", method="put",
                                 args={"payload_hash": os.urandom(32)}, timestamp=int(time.time() * 1000))  # fmt: skip
        node.submit(later)
        assert node.transaction(later.hash.hex(), wait=30)["receipt"]["status"] == "ok"
        lines = tmp_path / "lines.txt"
        lines.write_bytes(b"".join(b"reading %d\n" % i for i in range(3)))
        sent = ok("ingest", "send", "--home", home, str(lines), "--lines")
        nonces = [node.transaction(r["record"])["transaction"]["nonce"] for r in sent["records"]]
    finally:
        node.close()
    assert all(nonce > spent for nonce in nonces) and len(set(nonces)) == 3
    listed = httpx.get(f"{small_node.url}/v1/ingest/streams/{sent['stream']}",
                       headers=small_node.headers, timeout=10).json()["records"]
    assert [(r["seq"], r["record"]) for r in listed] == [(r["seq"], r["record"]) for r in sent["records"]]
    on_chain = [r["ingest"] for r in chain_records(small_node.url, small_node.headers, key.public.hex()) if "ingest" in r]
    assert sorted(i for i in on_chain if i.startswith(sent["stream"])) == [f"{sent['stream']}/{n}" for n in (1, 2, 3)]


# -- a consortium: kill -9 of the node mid-stream ---------------------------------------------------


@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> Iterator[Network]:
    yield from store_consortium(tmp_path_factory.mktemp("ingest") / "net")


def chain_records(url: str, headers: dict[str, str], sender: str) -> list[dict[str, Any]]:
    """The metadata of every records.put the node key ``sender`` committed, read block by block."""
    head = httpx.get(f"{url}/v1/head", headers=headers, timeout=10).json()["height"]
    found = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as api:
        for height in range(1, head + 1):
            for tx in api.get(f"/v1/blocks/{height}").json()["transactions"]:
                if tx["contract"] == "records" and tx["sender"] == sender:
                    view = api.get(f"/v1/transactions/{tx['hash']}").json()
                    if view["receipt"]["status"] == "ok":
                        found.append({"record": tx["hash"], **view["transaction"]["args"].get("metadata", {})})
    return found


def node_key(network: Network, i: int) -> str:
    return load_config(network.homes[i]).signing_key().public.hex()


RECORDS = 600
"""Records streamed while the node is killed, a quarter of the way in."""


def test_a_node_killed_mid_stream_loses_and_duplicates_no_record(consortium):
    network = consortium
    config = load_config(network.homes[OWNER])
    stream = os.urandom(16)
    rng = random.Random(7)
    records = [IngestRecord(seq, rng.randbytes(rng.randrange(100, 3000)), "application/octet-stream", {"n": str(seq)})
               for seq in range(1, RECORDS + 1)]  # fmt: skip
    answers: list[Answer] = []
    events: list[str] = []
    failure: list[BaseException] = []

    def stream_records() -> None:
        async def run() -> None:
            client = IngestSender(lambda: (read_run_file(config) or {}).get("ingest"), StoreTls.of_home(config), stream,
                                  on_event=events.append)  # fmt: skip
            async with client:
                await client.send(records, answers.append)

        try:
            asyncio.run(run())
        except (TwinledgerError, OSError) as exc:  # reported by the test thread
            failure.append(exc)

    sender = threading.Thread(target=stream_records)
    sender.start()
    wait_for(lambda: len(answers) >= RECORDS // 4 or failure, "a quarter acknowledged")
    network.kill(OWNER)
    acknowledged_before = len(answers)
    assert acknowledged_before < len(records), "the stream ended before the node was killed"
    network.start(OWNER)
    sender.join(240)
    assert not sender.is_alive() and not failure, failure
    assert any("connection lost" in e for e in events) and any("again" in e for e in events)

    assert all(a.ok for a in answers), [a for a in answers if not a.ok][:3]
    by_seq = {a.seq: a.record.hex() for a in answers}  # type: ignore[union-attr]
    assert sorted(by_seq) == list(range(1, RECORDS + 1))
    put = chain_records(network.url(OWNER), network.headers(OWNER), node_key(network, OWNER))
    on_chain = [r for r in put if r["ingest"].startswith(stream.hex())]
    seqs = [int(r["ingest"].split("/")[1]) for r in on_chain]
    assert sorted(seqs) == list(range(1, RECORDS + 1)), "each record once on chain, none missing"
    assert all(by_seq[int(r["ingest"].split("/")[1])] == r["record"] for r in on_chain)
    listed = httpx.get(f"{network.url(OWNER)}/v1/ingest/streams/{stream.hex()}",
                       headers=network.headers(OWNER), params={"limit": 5000}, timeout=10).json()
    assert [r["seq"] for r in listed["records"]] == list(range(1, RECORDS + 1))

    members = httpx.get(f"{network.url(OWNER)}/v1/members", headers=network.headers(OWNER), timeout=10).json()
    sample = rng.sample(records, 12)

    async def read_back() -> list[bytes]:
        async with store_client(config, members) as store:
            unlock = as_reader(config.organisation, config.encryption_key())
            return [await read_payload(store, httpx.get(f"{network.url(OWNER)}/v1/records/{by_seq[r.seq]}",
                                                        headers=network.headers(OWNER),
                                                        timeout=10).json(), unlock) for r in sample]  # fmt: skip

    assert asyncio.run(read_back()) == [r.payload for r in sample]
    assert not network.logs_with_tracebacks(), "the other nodes lost their store connections to the killed node quietly"


def test_only_the_nodes_own_organisation_may_ingest(consortium):
    config = load_config(consortium.homes[MANUFACTURER])
    owner = load_config(consortium.homes[OWNER])
    client = IngestSender(lambda: read_run_file(owner)["ingest"], StoreTls.of_home(config), os.urandom(16), reconnect_for=5)
    with pytest.raises(IngestError) as refused:
        asyncio.run(client.connect())
    assert refused.value.code == "not_allowed" and "manufacturer" in refused.value.message


FIRST, LATER = 400, 50
"""Files the watcher finds at first (the node is killed among them), and after. Fewer
first files race the kill: a block can answer all of them before it lands."""


def test_directory_ingest_survives_kill_9_of_the_node_and_of_itself(consortium, tmp_path):
    """The node is killed mid-stream (the watcher finds it gone holding unanswered files);
    then the watcher is killed holding files it numbered but could not send."""
    network = consortium
    home = str(network.homes[OWNER])
    watched = tmp_path / "outbox"
    watched.mkdir()
    contents = {f"batch-{i:03}.csv": os.urandom(64) + f"batch {i}\n".encode() for i in range(FIRST + LATER)}
    names = sorted(contents)
    contents["empty.csv"] = b""
    said = tmp_path / "watcher.log"

    def arrive(batch: list[str]) -> None:
        for name in batch:
            (watched / name).write_bytes(contents[name])

    def watcher(*extra: str) -> subprocess.Popen[str]:
        """Readable output into ``said`` (its events are told there); JSON on stdout with --json."""
        with said.open("a") as log:
            return subprocess.Popen([sys.executable, "-m", "twinledger", "ingest", "dir", "--home", home, str(watched),
                                     "--pattern", "*.csv", "--settle", "0", *extra],
                                    stdout=subprocess.PIPE if "--json" in extra else log, stderr=log, text=True)  # fmt: skip

    def moved() -> int:
        return len(list((watched / "done").glob("*.csv"))) if (watched / "done").exists() else 0

    def told_unreachable(times: int) -> bool:
        return said.read_text().count("node unreachable") >= times

    arrive([*names[:FIRST], "empty.csv"])
    (watched / "notes.txt").write_text("not matched\n")
    process = watcher()
    try:
        wait_for(lambda: moved() >= 50 or process.poll() is not None, "50 files moved")
        network.kill(OWNER)
        wait_for(lambda: told_unreachable(1) or moved() == FIRST + 1 or process.poll() is not None,
                 "the watcher to find the node gone")  # fmt: skip
        assert moved() < FIRST + 1, "the stream ended before the node was killed"
        network.start(OWNER)
        wait_for(lambda: moved() == FIRST + 1 or process.poll() is not None, "every file of the interrupted stream moved")
        network.kill(OWNER)
        arrive(names[FIRST:])
        wait_for(lambda: told_unreachable(2) or process.poll() is not None, "the watcher to find the node gone again")
        assert process.poll() is None, said.read_text()
        process.kill()  # kill -9 of the watcher, holding numbered files it could not send
        process.wait()
    except AssertionError as failure:
        raise AssertionError(f"{failure}; the watcher said:\n{said.read_text()[-4000:]}") from None
    finally:
        if process.poll() is None:
            process.kill()
    told = said.read_text()
    assert re.search(r"sending \d+ unanswered records again", told) and moved() == FIRST + 1
    assert "socket.send() raised" not in told and "SSL connection is closed" not in told and "Traceback" not in told
    network.start(OWNER)
    finished = watcher("--once", "--json")
    stdout, _ = finished.communicate(timeout=180)
    assert finished.returncode == 0, said.read_text()
    last_run = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(line["file"] for line in last_run) == names[FIRST:] and all(line["record"] for line in last_run)
    numbered = [line["seq"] for line in sorted(last_run, key=lambda line: line["file"])]
    assert numbered == list(range(FIRST + 2, FIRST + LATER + 2)), "the numbers the killed watcher gave them"
    assert sorted(p.name for p in (watched / "done").iterdir()) == sorted(contents)
    assert all((watched / "done" / name).read_bytes() == data for name, data in contents.items())
    assert sorted(p.name for p in watched.iterdir()) == ["done", "notes.txt"]

    put = chain_records(network.url(OWNER), network.headers(OWNER), node_key(network, OWNER))
    recorded = [r for r in put if r.get("filename") in contents]
    assert sorted(r["filename"] for r in recorded) == sorted(contents), "each file recorded exactly once"
    assert len({r["ingest"].split("/")[0] for r in recorded}) == 1  # one stream, kept across the restarts
    a_record = next(r for r in recorded if r["filename"] == "batch-007.csv")
    view = ok("record", "get", "--home", home, a_record["record"], "--out", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == contents["batch-007.csv"] and view["media_type"] == "text/csv"


# -- shared streams: read through the owner's grants -------------------------------------------------

PLANT = Path(__file__).resolve().parent.parent / "examples" / "bottling-plant.aml"
PROXY = "maintainer/node-1"


def test_a_shared_stream_is_read_through_a_grant_and_nobody_else_reads_it(consortium, tmp_path):
    network = consortium
    owner, auditor = str(network.homes[OWNER]), str(network.homes[AUDITOR])
    twin = ok("twin", "create", "--home", owner, "--aml", str(PLANT), "--device-id", "line-qa")["id"]
    quality = tmp_path / "quality.csv"
    quality.write_bytes(os.urandom(200) + b"bottle weights\n")
    production = tmp_path / "production.csv"
    production.write_bytes(os.urandom(200) + b"bottles per hour\n")
    shared = ok("ingest", "send", "--home", owner, str(quality), "--twin", twin, "--attribute", "type:quality")
    private = ok("ingest", "send", "--home", owner, str(production))
    [shared_record] = [r["record"] for r in shared["records"]]
    [private_record] = [r["record"] for r in private["records"]]
    assert shared["attributes"] == sorted(["kind:record", "type:quality", f"twin:{twin}"]) and private["attributes"] == []

    def read(home: str, record: str, name: str) -> subprocess.CompletedProcess[str]:
        return cli("record", "get", record, "--out", str(tmp_path / name), "--home", home)

    before = read(auditor, shared_record, "early.csv")
    assert before.returncode == 1 and "holds no active grant" in before.stderr and not (tmp_path / "early.csv").exists()
    ok("grant", "--twin", twin, "--to", "auditor", "--policy", "kind:record and type:quality", "--proxy", PROXY,
       "--home", owner)  # fmt: skip
    assert read(auditor, shared_record, "read.csv").returncode == 0
    assert (tmp_path / "read.csv").read_bytes() == quality.read_bytes()
    for home_dir, record in ((auditor, private_record), (str(network.homes[MANUFACTURER]), shared_record)):
        denied = read(home_dir, record, "denied.csv")
        assert denied.returncode == 1 and denied.stderr.count("\n") == 1, denied.stderr
        assert not (tmp_path / "denied.csv").exists()
    assert read(owner, shared_record, "own.csv").returncode == 0 and (tmp_path / "own.csv").read_bytes() == quality.read_bytes()


def test_a_shared_stream_names_a_twin_its_organisation_owns(consortium, tmp_path):
    network = consortium
    owner = str(network.homes[OWNER])
    theirs = ok("twin", "create", "--home", str(network.homes[MANUFACTURER]), "--aml", str(PLANT),
                "--device-id", "line-theirs")["id"]  # fmt: skip
    mine = ok("twin", "create", "--home", owner, "--aml", str(PLANT), "--device-id", "line-mine")["id"]
    sample = tmp_path / "sample.txt"
    sample.write_text("a reading\n")

    def refused(*options: str) -> str:
        done = cli("ingest", "send", "--home", owner, str(sample), *options)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        return done.stderr

    assert "owned by manufacturer" in refused("--twin", theirs)
    assert "no twin" in refused("--twin", "0" * 16)
    assert "double quote" in refused("--twin", mine, "--attribute", 'type:"x"')
    assert "--attribute needs --twin" in refused("--attribute", "type:quality")

    first = ok("ingest", "send", "--home", owner, str(sample), "--twin", mine, "--stream", "line-4")
    assert first["attributes"] == sorted(["kind:record", f"twin:{mine}"])
    assert "opened with other attributes" in refused("--twin", mine, "--attribute", "type:x", "--stream", "line-4")
    assert "opened with other attributes" in refused("--stream", "line-4")
    again = ok("ingest", "send", "--home", owner, str(sample), "--twin", mine, "--stream", "line-4")
    assert [r["seq"] for r in again["records"]] == [2]
    listed = httpx.get(f"{network.url(OWNER)}/v1/ingest/streams/{first['stream']}",
                       headers=network.headers(OWNER), timeout=10).json()
    assert listed["attributes"] == first["attributes"] and listed["source"] == "owner/node-1" and len(listed["records"]) == 2
    assert httpx.get(f"{network.url(OWNER)}/v1/ingest/streams/{'0' * 32}",
                     headers=network.headers(OWNER), timeout=10).status_code == 404

    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "a.csv").write_text("1,2\n")
    watched = cli("ingest", "dir", str(outbox), "--once", "--settle", "0", "--twin", mine, "--attribute", "type:qa",
                  "--home", owner)  # fmt: skip
    assert watched.returncode == 0 and f"records shared as kind:record twin:{mine} type:qa" in watched.stdout, watched
    assert (outbox / "done" / "a.csv").exists()
    (outbox / "b.csv").write_text("3,4\n")
    otherwise = cli("ingest", "dir", str(outbox), "--once", "--settle", "0", "--home", owner)
    assert otherwise.returncode == 1 and "this directory's stream" in otherwise.stderr and (outbox / "b.csv").exists()


def test_records_of_other_attributes_never_share_a_store_document():
    """A grantee opens a whole document: one shared stream's records must never sit in a
    document with records its grant does not cover."""
    loop = asyncio.new_event_loop()

    def job(seq: int, attributes: tuple[str, ...]) -> Job:
        return Job(b"s" * 16, IngestRecord(seq, b"p", "text/plain", {}), loop.create_future(), attributes=attributes)

    try:
        jobs = [job(1, ()), job(2, ("twin:a",)), job(3, ()), job(4, ("kind:record", "twin:a")), job(5, ("twin:a",))]
        assert [[j.record.seq for j in batch] for batch in batches_by_attributes(jobs)] == [[1, 3], [2, 5], [4]]
    finally:
        loop.close()
