"""Watched-directory ingest: each matching file becomes a record, then moves to ``done/``.

A file is given its stream sequence number in a local journal (fsynced) before it is
sent, and is moved to ``done/`` only once the node acknowledged its record, i.e. once
the record's transaction is committed. After a crash of this process or of the node, the
files the journal holds are sent again under the same numbers, and the node's journal
answers with the record it already made: a file is recorded once, and none is lost. A
file the node refuses for good moves to ``failed/`` beside a ``.error`` note saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import mimetypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from twinledger.core.files import UnsafeFile, read_regular
from twinledger.core.sqlite import open_database
from twinledger.errors import TwinledgerError
from twinledger.ingest.protocol import STREAM_BYTES, IngestRecord
from twinledger.ingest.sender import Answer, IngestSender, SenderKey, record_context
from twinledger.store.disk import fsync_directory

DONE = "done"
FAILED = "failed"
SCHEMA = """
CREATE TABLE IF NOT EXISTS stream (id BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, record BLOB);
CREATE INDEX IF NOT EXISTS files_sending ON files (state) WHERE state = 'sending';
"""


class FileRefused(TwinledgerError):
    """A file the watcher will not send: moved to ``failed/`` with the reason."""

    code = "file_refused"


@dataclass(frozen=True)
class FileOutcome:
    name: str
    seq: int
    record: bytes | None
    """The record id; None if the file was refused."""
    reason: str = ""


class DirectoryJournal:
    """Which file went out under which sequence number, in this stream."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        row = self._db.execute("SELECT id FROM stream").fetchone()
        if row is None:
            self._db.execute("INSERT INTO stream VALUES (?)", (os.urandom(STREAM_BYTES),))
            row = self._db.execute("SELECT id FROM stream").fetchone()
        self.stream: bytes = row[0]

    def close(self) -> None:
        self._db.close()

    def sending(self) -> dict[str, int]:
        """File name → sequence number of the files sent and not yet acknowledged."""
        return {name: seq for seq, name in self._db.execute("SELECT seq, name FROM files WHERE state = 'sending'")}

    def assign(self, names: list[str], first: int) -> dict[str, int]:
        """Number new files from ``first`` (or after the last number used), durably."""
        last = self._db.execute("SELECT MAX(seq) FROM files").fetchone()[0] or 0
        start = max(first, last + 1)
        numbered = {name: start + i for i, name in enumerate(names)}
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("INSERT INTO files VALUES (?, ?, 'sending', NULL)", [(s, n) for n, s in numbered.items()])
        self._db.execute("COMMIT")
        return numbered

    def finish(self, seq: int, state: str, record: bytes | None = None) -> None:
        self._db.execute("UPDATE files SET state = ?, record = ? WHERE seq = ?", (state, record, seq))

    def forget(self, seq: int) -> None:
        self._db.execute("DELETE FROM files WHERE seq = ?", (seq,))


class DirectoryIngest:
    def __init__(self, directory: Path, pattern: str, client: IngestSender, journal: DirectoryJournal, *,
                 settle: float = 1.0, tier2: SenderKey | None = None,
                 on_file: Callable[[FileOutcome], None] | None = None) -> None:  # fmt: skip
        self.directory = directory
        self.pattern = pattern
        self.client = client
        self.journal = journal
        self.settle = settle
        """Seconds a file must be left unchanged before it is taken (a writer may still be at it)."""
        self.tier2 = tier2
        self.on_file = on_file or (lambda _: None)

    def _candidates(self, sending: dict[str, int]) -> list[str]:
        """Matching files, settled, not already sent, oldest first."""
        now = time.time()
        found = []
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") or entry.name in sending or not fnmatch.fnmatch(entry.name, self.pattern):
                continue
            with contextlib.suppress(FileNotFoundError):
                status = entry.stat()
                if entry.is_file(follow_symlinks=False) and now - status.st_mtime >= self.settle:
                    found.append((status.st_mtime_ns, entry.name))
        return [name for _, name in sorted(found)]

    async def run_once(self) -> list[FileOutcome]:
        """Send what the journal left unacknowledged, then every settled matching file."""
        welcome = self.client.welcome or await self.client.connect()
        sending = self.journal.sending()
        for name, seq in list(sending.items()):
            if not (self.directory / name).exists():  # moved before a crash let the journal say so
                self.journal.finish(seq, DONE if (self.directory / DONE / name).exists() else "vanished")
                del sending[name]
        sending.update(self.journal.assign(self._candidates(sending), welcome.next_seq))
        records, outcomes = [], []
        for name, seq in sorted(sending.items(), key=lambda item: item[1]):
            try:
                records.append(self._record(self.directory / name, seq, welcome.max_record))
            except FileRefused as exc:
                outcome = self._refuse(name, seq, exc.message)
                outcomes.append(outcome)
                self.on_file(outcome)
        if not records:
            return outcomes
        names = {seq: name for name, seq in sending.items()}

        def answered(answer: Answer) -> None:
            name = names[answer.seq]
            if answer.ok:
                self._move(name, DONE)
                self.journal.finish(answer.seq, DONE, answer.record)
                outcome = FileOutcome(name, answer.seq, answer.record)
            elif answer.code == "seq_reused":  # the file changed after it was numbered: it is a new file
                self.journal.forget(answer.seq)
                outcome = FileOutcome(name, answer.seq, None, "changed while being sent; it is sent again")
            else:
                outcome = self._refuse(name, answer.seq, f"{answer.message} ({answer.code})")
            outcomes.append(outcome)
            self.on_file(outcome)

        await self.client.send(records, answered)
        return outcomes

    async def run(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        """Ingest until ``stop`` is set: at once when the directory changes, and every
        ``interval`` seconds (files that were still settling)."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                loop.call_soon_threadsafe(changed.set)

        observer = Observer()
        observer.schedule(Wake(), str(self.directory), recursive=False)
        observer.start()
        try:
            while not stop.is_set():
                changed.clear()
                await self.run_once()
                with contextlib.suppress(TimeoutError):  # not wait_for: on 3.11 it can swallow a cancellation
                    async with asyncio.timeout(interval):
                        await _first(changed, stop)
        finally:
            observer.stop()
            observer.join()

    def _record(self, path: Path, seq: int, limit: int) -> IngestRecord:
        """The file's record; FileRefused if it is no regular file now (it may have been
        swapped for a link since the scan) or too large for one record."""
        try:
            payload, status = read_regular(path, limit)
        except UnsafeFile as exc:
            raise FileRefused(exc.message) from None
        if len(payload) > limit:
            raise FileRefused(f"{path.name} is more than the {limit} bytes the node takes in one record; add it with "
                             "`twin doc add`")  # fmt: skip
        modified = datetime.fromtimestamp(status.st_mtime, UTC).isoformat(timespec="milliseconds")
        metadata = {"filename": path.name, "modified": modified}
        if self.tier2 is not None:
            payload = self.tier2.seal(payload, record_context(self.journal.stream, seq))
            metadata["tier2"] = self.tier2.key_id
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return IngestRecord(seq, payload, media_type, metadata)

    def _refuse(self, name: str, seq: int, reason: str) -> FileOutcome:
        target = self._move(name, FAILED)
        (target.parent / f"{target.name}.error").write_text(reason + "\n")
        self.journal.finish(seq, FAILED)
        return FileOutcome(name, seq, None, reason)

    def _move(self, name: str, folder: str) -> Path:
        """Move a file into ``folder`` of the watched directory, never over another."""
        target_dir = self.directory / folder
        target_dir.mkdir(exist_ok=True)
        target = target_dir / name
        number = 1
        while target.exists():
            target = target_dir / f"{name}.{number}"
            number += 1
        os.replace(self.directory / name, target)
        fsync_directory(target_dir)
        fsync_directory(self.directory)
        return target


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
