"""The node's TCP ingest listener (docs/ingest-protocol.md).

Each record's payload goes into a store document (encrypted, sealed to the node's
organisation, written to a quorum of store nodes), shared with the records of the same
attributes that arrived with it; a shared stream's documents also carry a capsule under
its attributes, for the organisation's grants to cover. Each record gets its own
``records.put`` transaction naming the document and its part of it, signed by this
node's key as safe-UR-chain's ingest module signs records. The record is acknowledged
only once that transaction is committed. The node's key sends no other transactions, so
the service hands out its nonces itself, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twinledger.abc import StateReader, TransactionLocation
from twinledger.contracts import calls
from twinledger.contracts.calls import ContractCall
from twinledger.contracts.membership import organisation_key
from twinledger.contracts.sharing import twin_generation
from twinledger.contracts.twinstate import twin_key
from twinledger.core.attributes import (
    RECORD_KIND,
    TWIN,
    BadAttribute,
    kind_attribute,
    owner_attributes,
    twins_named,
)
from twinledger.core.tasks import Tasks
from twinledger.core.types import Transaction, decode_transaction, resigned
from twinledger.crypto import kpcpre
from twinledger.crypto.certs import NodeIdentity
from twinledger.crypto.keys import SigningKey
from twinledger.crypto.policy import PolicyError, attribute_set
from twinledger.errors import TwinledgerError
from twinledger.ingest.journal import IngestJournal, JournalRow
from twinledger.ingest.protocol import (
    CLIENT_MESSAGES,
    PROTOCOL,
    IngestError,
    IngestRecord,
    RecordRejected,
    error_message,
    frame,
    max_frame,
    parse_hello,
    parse_record,
    read_message,
    record_seq,
)
from twinledger.store.client import StoreClient
from twinledger.store.documents import CapsuleKey, upload_document
from twinledger.store.items import StoreError
from twinledger.store.protocol import HANDSHAKE_TIMEOUT, StoreTls, StoreUnavailable, peer_identity, write_frame

log = logging.getLogger(__name__)

UPLOADS_IN_FLIGHT = 8
"""Batches being written to the store at once."""
BATCH_BYTES = 1 << 20
MAX_BATCH = 1000
WINDOW_BYTES = 64 << 20
"""Payload bytes a connection may have unanswered before the node stops reading it."""
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
HEIGHTS_FLUSH_SECONDS = 2.0
LINGER_SECONDS = 2.0
COMMIT_WAIT_SECONDS = 30.0
"""How long a record's transaction is waited for before it is submitted again."""
TRANSIENT_STORE_ERRORS = frozenset({"no_write_quorum", "store_unreachable"})


class Ledger(Protocol):
    """What the service needs of the node it runs in."""

    @property
    def chain_id(self) -> str: ...

    async def submit(self, raw: list[bytes]) -> Sequence[Any]:
        """One result per transaction, with ``tx_hash`` and ``error``."""

    async def wait_committed(self, tx_hash: bytes, timeout: float) -> TransactionLocation | None: ...

    def commits(self, tx_hashes: Sequence[bytes],
                timeout: float) -> AsyncIterator[dict[bytes, TransactionLocation | None]]:  # fmt: skip
        """The transactions' locations as they commit, a group at a time; None for one not
        committed within ``timeout`` seconds."""

    async def next_nonce(self, sender: bytes) -> int: ...


@dataclass(frozen=True)
class Acknowledged:
    record: bytes
    """The record's id: its transaction's hash."""
    height: int


@dataclass
class Job:
    stream: bytes
    record: IngestRecord
    done: asyncio.Future[Acknowledged]
    attributes: tuple[str, ...] = ()
    """The stream's: what the record's document is shared under."""
    call: ContractCall | None = None
    """The records.put call, once the payload is stored."""
    notify: Callable[[str], Awaitable[None]] | None = None
    """Tells the connection that sent the record why it is held up."""


class IngestService:
    def __init__(self, journal: IngestJournal, key: SigningKey, me: NodeIdentity, tls: StoreTls, ledger: Ledger,
                 store: Callable[[], StoreClient], state: Callable[[], StateReader],
                 members: Callable[[], dict[bytes, str]], window: int, max_record: int) -> None:  # fmt: skip
        self.journal = journal
        self.key = key
        self.me = me
        self.tls = tls
        self.ledger = ledger
        self.store = store
        self.state = state
        """The chain's state at its head: the organisation's keys, the twins it owns."""
        self.members = members
        """Member node signing keys → organisation, as the chain says now."""
        self.window = window
        self.max_record = max_record
        self.address = ""
        self._server: asyncio.Server | None = None
        self._tasks = Tasks()
        self._in_flight: dict[tuple[bytes, int], Job] = {}
        """Records being stored, signed and committed, by (stream, seq)."""
        self._commits: dict[tuple[bytes, int], asyncio.Future[Acknowledged]] = {}
        self._uploads = asyncio.Semaphore(UPLOADS_IN_FLIGHT)
        self._storing: asyncio.Queue[Job] = asyncio.Queue()
        self._signing: asyncio.Queue[Job] = asyncio.Queue()
        self._heights: list[tuple[bytes, int, int]] = []
        self._next_nonce = 0

    # -- life-cycle --------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> str:
        await self._recover()
        self._tasks.spawn(self._store_loop())
        self._tasks.spawn(self._sign_loop())
        self._tasks.spawn(self._flush_heights())
        self._server = await asyncio.start_server(self._tasks.connections(self._serve), host, port,
                                                  ssl=self.tls.server,
                                                  ssl_handshake_timeout=HANDSHAKE_TIMEOUT, limit=1 << 20)  # fmt: skip
        self.address = f"{host}:{self._server.sockets[0].getsockname()[1]}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._tasks.stop()
        await asyncio.get_running_loop().run_in_executor(None, self._write_heights)
        self.journal.close()

    async def _journal(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _recover(self) -> None:
        """Resubmit the transactions of records not seen committed before a stop or crash
        (the chain takes a transaction once), lowest nonce first."""
        rows = sorted(await self._journal(self.journal.open_rows), key=lambda r: decode_transaction(r.tx).nonce)
        self._next_nonce = max([await self.ledger.next_nonce(self.key.public)]
                               + [decode_transaction(r.tx).nonce + 1 for r in rows])  # fmt: skip
        log.info("ingest: next nonce %d (%d records not seen committed)", self._next_nonce, len(rows))
        if rows:
            await self.ledger.submit([row.tx for row in rows])
            self._settled(rows)

    async def _resign(self, row: JournalRow, nonce: int | None = None) -> JournalRow:
        """The same call signed again with a fresh timestamp, journaled before it is sent.

        With the same nonce (``nonce`` None) for a transaction too old to be admitted: at
        most one of the two can ever commit. With a new nonce for one that a later nonce
        of this key overtook on the way to a proposer (a sender's nonces may have gaps, so
        nothing holds a later one back), whether it committed as failed or is refused on
        resubmission: its nonce is spent, so the record still commits once."""
        old = decode_transaction(row.tx)
        assert isinstance(old, Transaction)
        tx = resigned(self.key, old, nonce)
        fresh = JournalRow(row.stream, row.seq, row.digest, tx.encoded, tx.hash, None)
        await self._journal(self.journal.add, [fresh])
        return fresh

    def _shared_under(self, requested: tuple[str, ...]) -> tuple[str, ...]:
        """The canonical attributes a hello's ``requested`` ones share a stream under
        (none: private); they must name one twin this organisation owns, whose grants
        are the only ones that can cover them."""
        if not requested:
            return ()
        try:
            attributes = attribute_set([*requested, kind_attribute(RECORD_KIND)])
            owner_attributes(a for a in attributes if not a.startswith(TWIN) and a != kind_attribute(RECORD_KIND))
        except (PolicyError, BadAttribute) as exc:
            raise IngestError(f"shared records' attributes: {exc.message}", code="attributes_invalid") from None
        twins = twins_named(attributes)
        if len(twins) != 1:
            raise IngestError(f"shared records name exactly one twin (twin:ID), not {len(twins)}",
                              code="attributes_invalid")  # fmt: skip
        state = self.state()
        twin = state.get(twin_key(twins[0]))
        if twin is None:
            raise IngestError(f"there is no twin {twins[0]}", code="unknown_twin")
        if twin["owner"] != self.me.organisation:
            raise IngestError(f"twin {twins[0]} is owned by {twin['owner']}: only the owner grants access to a twin's "
                              "data, so only its records are shared", code="not_twin_owner")  # fmt: skip
        if not (state.get(organisation_key(self.me.organisation)) or {}).get("kpcpre_key"):
            raise IngestError(f"organisation {self.me.organisation} has no sharing (KP-CPRE) key on chain, so its "
                              "records cannot be shared", code="no_sharing_key")  # fmt: skip
        return attributes

    def _take_nonce(self) -> int:
        nonce = self._next_nonce
        self._next_nonce += 1
        return nonce

    async def _overtaken(self, row: JournalRow) -> JournalRow:
        """``row`` signed again with a nonce past every one this key has used: its own
        nonce can no longer commit."""
        unused = await self.ledger.next_nonce(self.key.public)
        self._next_nonce = max(self._next_nonce, unused)
        return await self._resign(row, self._take_nonce())

    # -- connections -------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writing = asyncio.Lock()

        async def send(message: dict[str, Any]) -> None:
            async with writing:
                write_frame(writer, frame(message))
                await writer.drain()

        held: dict[asyncio.Task[Any], int] = {}
        """The connection's unanswered records and their payload sizes."""
        try:
            first = await asyncio.wait_for(read_message(reader, 1 << 16, CLIENT_MESSAGES), HANDSHAKE_TIMEOUT)
            hello = parse_hello(first)
            try:
                identity = peer_identity(writer, first, self.tls, PROTOCOL)
            except TwinledgerError as exc:
                raise IngestError(f"not a member node: {exc.message}", code="not_allowed") from None
            if identity.organisation != self.me.organisation or \
                    self.members().get(identity.signing_key) != identity.organisation:  # fmt: skip
                raise IngestError(f"{identity.organisation}/{identity.node} may not ingest through a node of "
                                  f"{self.me.organisation}", code="not_allowed")  # fmt: skip
            source = f"{identity.organisation}/{identity.node}"
            attributes = self._shared_under(hello.attributes)
            claim = await self._journal(self.journal.claim_stream, hello.stream, source, attributes)
            if claim.source != source:
                raise IngestError(f"stream {hello.stream.hex()} belongs to another client", code="stream_taken")
            if claim.attributes != attributes:
                raise IngestError(f"stream {hello.stream.hex()} was opened with other attributes "
                                  f"({' '.join(claim.attributes) or 'none: private'}); a stream keeps its "
                                  "attributes, so open a new stream for these", code="stream_attributes")  # fmt: skip
            await send({"type": "welcome", "protocol": PROTOCOL, "organisation_certificate": self.tls.org_cert_der,
                        "node": self.me.node, "organisation": self.me.organisation, "window": self.window,
                        "max_record": self.max_record, "attributes": list(attributes),
                        "next": await self._journal(self.journal.next_seq, hello.stream)})  # fmt: skip
            limit = max_frame(self.max_record)
            while True:
                message = await read_message(reader, limit, CLIENT_MESSAGES)
                if message["type"] != "record":
                    raise IngestError("hello was already said", code="handshake")
                seq = record_seq(message)
                if len(held) >= self.window:
                    raise IngestError(f"more than the window of {self.window} records sent unanswered",
                                      code="window_exceeded")  # fmt: skip
                payload = message.get("payload")
                size = len(payload) if isinstance(payload, bytes) else 0
                while held and sum(held.values()) + size > WINDOW_BYTES:
                    await asyncio.wait(list(held), return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.ensure_future(self._answer(hello.stream, attributes, seq, message, send))
                held[task] = size
                task.add_done_callback(lambda done: held.pop(done, None))
        except IngestError as exc:
            with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):  # the client went away
                await send(error_message(exc))
                await _discard_input(reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
            pass
        finally:
            for task in list(held):
                task.cancel()
            writer.close()

    async def _answer(self, stream: bytes, attributes: tuple[str, ...], seq: int, message: dict[str, Any],
                      send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:  # fmt: skip
        try:
            record = parse_record(message, self.max_record)

            async def busy(reason: str) -> None:
                await send({"type": "busy", "seq": record.seq, "reason": reason})

            done = await self._take(stream, attributes, record, busy)
            answer = {"type": "ack", "seq": record.seq, "record": done.record, "height": done.height}
        except IngestError as exc:
            answer = error_message(exc, seq)
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):  # the client went away; it will resend
            await send(answer)

    # -- records -----------------------------------------------------------------------------
    async def _take(self, stream: bytes, attributes: tuple[str, ...], record: IngestRecord,
                    busy: Callable[[str], Awaitable[None]]) -> Acknowledged:  # fmt: skip
        """The record's acknowledgement: at once for one committed before, after the commit
        for one in flight or new. The same sequence number with other content is refused."""
        key = (stream, record.seq)
        job = self._in_flight.get(key)
        if job is None:
            row = await self._journal(self.journal.lookup, stream, record.seq)
            if row is not None:
                if row.digest != record.digest:
                    raise _reused(record.seq)
                return await asyncio.shield(self._settled([row])[0])
            job = self._in_flight.get(key)  # another connection may have started it meanwhile
        if job is None:
            job = Job(stream, record, asyncio.get_running_loop().create_future(), attributes, notify=busy)
            self._in_flight[key] = job
            job.done.add_done_callback(lambda _: self._in_flight.pop(key, None))
            await self._storing.put(job)
        elif job.record.digest != record.digest:
            raise _reused(record.seq)
        else:
            job.notify = busy
        return await asyncio.shield(job.done)

    async def _store_loop(self) -> None:
        """Gather the records waiting to be stored into batches: small records share one
        store document (each record names its part of it), so the store's durable
        writes are paid once per batch, not once per record."""
        while True:
            jobs = [await self._storing.get()]
            size = len(jobs[0].record.payload)
            while not self._storing.empty() and size < BATCH_BYTES and len(jobs) < MAX_BATCH:
                job = self._storing.get_nowait()
                jobs.append(job)
                size += len(job.record.payload)
            for batch in batches_by_attributes(jobs):
                await self._uploads.acquire()
                self._tasks.spawn(self._store_batch(batch))

    async def _store_batch(self, jobs: list[Job]) -> None:
        """Store the batch's payloads as one document (sealed to the organisation and, for
        a shared stream, with a capsule under its attributes), then queue its records for
        signing; a store without a write quorum is retried (the clients are told they
        wait), a refusal rejects the records."""
        attributes = jobs[0].attributes
        attempt = 0
        try:
            while True:
                organisation = self.state().get(organisation_key(self.me.organisation))
                sharing = CapsuleKey(kpcpre.PublicKey.from_bytes(organisation["kpcpre_key"]),
                                     twin_generation(self.state(), twins_named(attributes)[0])) if attributes else None
                try:
                    stored = await upload_document(self.store(), b"".join(job.record.payload for job in jobs), self.key,
                                                   self.me.organisation,
                                                   {self.me.organisation: organisation["encryption_key"]},
                                                   attributes=attributes, sharing=sharing)  # fmt: skip
                    break
                except StoreError as exc:
                    if exc.code not in TRANSIENT_STORE_ERRORS and not isinstance(exc, StoreUnavailable):
                        for job in jobs:
                            _fail(job, RecordRejected(f"record {job.record.seq}: the store refused it: {exc.message}",
                                                      code="store_refused"))  # fmt: skip
                        return
                    for job in jobs:
                        if job.notify is not None:
                            with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):  # the client went away
                                await job.notify(f"the store is unavailable: {exc.message}")
                    await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
                    attempt += 1
        finally:
            self._uploads.release()
        offset = 0
        for job in jobs:
            record = job.record
            metadata = {**record.metadata, "ingest": f"{job.stream.hex()}/{record.seq}", "store": stored.reference,
                        "part": f"{offset}+{len(record.payload)}"}  # fmt: skip
            offset += len(record.payload)
            job.call = calls.put_record(record.media_type, metadata, payload_hash=stored.manifest)
            await self._signing.put(job)

    async def _sign_loop(self) -> None:
        """Sign what was stored, in nonce order; write the batch to the journal before
        anything is submitted; submit it; wait for the commits."""
        while True:
            jobs = [await self._signing.get()]
            while not self._signing.empty() and len(jobs) < MAX_BATCH:
                jobs.append(self._signing.get_nowait())
            now = int(time.time() * 1000)
            txs = []
            for job in jobs:
                assert job.call is not None
                txs.append(calls.sign(self.key, job.call, chain_id=self.ledger.chain_id, nonce=self._take_nonce(),
                                      timestamp=now))  # fmt: skip
            rows = [JournalRow(job.stream, job.record.seq, job.record.digest, tx.encoded, tx.hash, None)
                    for job, tx in zip(jobs, txs, strict=True)]  # fmt: skip
            try:
                await self._journal(self.journal.add, rows)
                results = await self.ledger.submit([tx.encoded for tx in txs])
            except (OSError, sqlite3.Error, TwinledgerError) as exc:  # the node's storage failed: nothing acknowledged
                log.error("ingest: could not journal or submit %d records: %s", len(jobs), exc)
                for job in jobs:
                    _fail(job, IngestError("the node could not store the record; send it again", code="node_failure"))
                continue
            taken = []
            for job, row, result in zip(jobs, rows, results, strict=True):
                if result.error is not None and result.error.code != "nonce_replayed":
                    _fail(job, RecordRejected(f"record {job.record.seq}: {result.error.message}",
                                              code="record_refused"))  # fmt: skip
                else:
                    taken.append((job, row))
            for (job, _), commit in zip(taken, self._settled([row for _, row in taken]), strict=True):
                self._answer_when_settled(job, commit)

    def _settled(self, rows: list[JournalRow]) -> list[asyncio.Future[Acknowledged]]:
        """The one wait for each record's commit, however many ask (a resent record, the
        restart's recovery): two would each sign a failed transaction again, twice. The
        records not yet waited for share one wait, which reads the chain store once per
        block, not once per record."""
        loop = asyncio.get_running_loop()
        futures, waits = [], {}
        for row in rows:
            key = (row.stream, row.seq)
            future = self._commits.get(key)
            if future is None:
                future = self._commits[key] = loop.create_future()
                future.add_done_callback(lambda done, key=key: (self._commits.pop(key, None),
                                                                done.cancelled() or done.exception()))  # fmt: skip
                waits[row.tx_hash] = (row, future)
            futures.append(future)
        if waits:
            self._tasks.spawn(self._commit_all(waits))
        return futures

    async def _commit_all(self, waits: dict[bytes, tuple[JournalRow, asyncio.Future[Acknowledged]]]) -> None:
        """Settle each record as its transaction commits; one that does not commit in time,
        or commits as overtaken, goes on alone (``_commit``)."""
        alone: set[bytes] = set()
        try:
            async with contextlib.aclosing(self.ledger.commits(list(waits), COMMIT_WAIT_SECONDS)) as located:
                async for found in located:
                    for tx_hash, location in found.items():
                        row, future = waits[tx_hash]
                        if not _settles(location):
                            alone.add(tx_hash)
                            _follow(future, self._tasks.spawn(self._commit(row, location)))
                            continue
                        try:
                            future.set_result(self._acknowledged(row, location))
                        except IngestError as exc:
                            future.set_exception(exc)
        except Exception as exc:  # e.g. the chain store could not be read: the senders are told to send again
            log.exception("ingest: waiting for %d commits failed", len(waits))
            for tx_hash, (_, future) in waits.items():
                if tx_hash not in alone and not future.done():
                    future.set_exception(exc)
        finally:  # stopped: nobody will settle the rest
            for tx_hash, (_, future) in waits.items():
                if tx_hash not in alone:
                    future.cancel()

    async def _commit(self, row: JournalRow, location: TransactionLocation | None) -> Acknowledged:
        """The record's acknowledgement, from what a wait for its transaction found
        (``location``): submitted again while the node no longer holds it, signed again
        when it cannot commit as it is, and waited for again, until it settles."""
        while not _settles(location):
            if location is not None:
                row = await self._overtaken(row)
            [result] = await self.ledger.submit([row.tx])
            while result.error is not None and result.error.code in ("bad_timestamp", "nonce_replayed"):
                row = await (self._resign(row) if result.error.code == "bad_timestamp" else self._overtaken(row))
                [result] = await self.ledger.submit([row.tx])
            if result.error is not None:
                raise IngestError(f"record {row.seq}: its transaction is refused: {result.error.message}",
                                  code="record_refused")  # fmt: skip
            location = await self.ledger.wait_committed(row.tx_hash, COMMIT_WAIT_SECONDS)
        assert location is not None
        return self._acknowledged(row, location)

    def _acknowledged(self, row: JournalRow, location: TransactionLocation) -> Acknowledged:
        """The record's acknowledgement, its transaction being committed at ``location``."""
        if row.height is None:
            self._heights.append((row.stream, row.seq, location.height))
        receipt = location.receipt
        if receipt.status != "ok":
            raise RecordRejected(f"record {row.seq}: the records contract refused it: "
                                 f"{receipt.message or receipt.error}", code="record_refused")  # fmt: skip
        return Acknowledged(row.tx_hash, location.height)

    def _answer_when_settled(self, job: Job, commit: asyncio.Future[Acknowledged]) -> None:
        """Answer the record's sender when its commit settles (a callback, not one more
        task per record)."""

        def settled(commit: asyncio.Future[Acknowledged]) -> None:
            if commit.cancelled() or job.done.done():
                return
            failure = commit.exception()
            if failure is None:
                job.done.set_result(commit.result())
            elif isinstance(failure, IngestError):
                _fail(job, failure)
            else:
                log.error("ingest: record %d: %s", job.record.seq, failure)
                _fail(job, IngestError("the node could not store the record; send it again", code="node_failure"))

        commit.add_done_callback(settled)

    async def _flush_heights(self) -> None:
        """Note commits in the journal now and then; a row left open is checked again at
        the next start, so these writes need not be prompt."""
        while True:
            await asyncio.sleep(HEIGHTS_FLUSH_SECONDS)
            await self._journal(self._write_heights)

    def _write_heights(self) -> None:
        heights, self._heights = self._heights, []
        if heights:
            self.journal.committed(heights)


async def _discard_input(reader: asyncio.StreamReader) -> None:
    """Read what the client still sends, for a moment, before closing: closing with unread
    input resets the connection, and the client would lose the error that says why."""
    deadline = time.monotonic() + LINGER_SECONDS
    with contextlib.suppress(TimeoutError):
        while (left := deadline - time.monotonic()) > 0 and await asyncio.wait_for(reader.read(1 << 16), left):
            pass


def batches_by_attributes(jobs: list[Job]) -> list[list[Job]]:
    """``jobs`` split by attribute set, in order: a grantee opens a whole store document,
    so a document holds only records that the same grants cover."""
    batches: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        batches.setdefault(job.attributes, []).append(job)
    return list(batches.values())


def _reused(seq: int) -> RecordRejected:
    return RecordRejected(f"record {seq} was taken before with other content: a stream's numbers are not reused",
                          code="seq_reused")  # fmt: skip


def _settles(location: TransactionLocation | None) -> bool:
    """Whether a record whose transaction a wait found at ``location`` is settled: it
    committed, and not as overtaken by a later nonce of the node key."""
    return location is not None and location.receipt.error != "nonce_replayed"


def _follow(future: asyncio.Future[Acknowledged], task: asyncio.Task[Acknowledged]) -> None:
    """Settle ``future`` as ``task`` ends."""

    def ended(task: asyncio.Task[Acknowledged]) -> None:
        if future.done():
            return
        if task.cancelled():
            future.cancel()
        elif task.exception() is not None:
            future.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            future.set_result(task.result())

    task.add_done_callback(ended)


def _fail(job: Job, exc: IngestError) -> None:
    if not job.done.done():
        job.done.set_exception(exc)
