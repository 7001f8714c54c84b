"""``twinledger ingest send|dir`` and ``record get``: records through a node's TCP ingest listener."""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from twinledger.cli.common import STDIN, Home, Json, command, err, kv_table, out, print_json, run
from twinledger.config import NodeConfig, load_config
from twinledger.core.files import create_fresh
from twinledger.errors import TwinledgerError
from twinledger.ingest.protocol import STREAM_BYTES, IngestError, IngestRecord
from twinledger.ingest.sender import Answer, IngestSender, record_context
from twinledger.services import ingest
from twinledger.services.ingest import shared_attributes, tier2_key
from twinledger.services.records import parse_metadata
from twinledger.services.session import Session

ingest_app = typer.Typer(no_args_is_help=True, help="Send records to the node's TCP ingest listener.")

To = Annotated[str | None, typer.Option("--to", help="The ingest listener HOST:PORT (default: the home's running node).")]
Tier2 = Annotated[bool, typer.Option("--tier2", help="Seal payloads with this home's tier-2 key first: "
                                                     "no one else, not even the node, can open them.")]  # fmt: skip
Meta = Annotated[list[str], typer.Option("--meta", help="Metadata KEY=VALUE for every record (repeatable).")]
Twin = Annotated[str | None, typer.Option("--twin", help="Share the records as data of this twin (which the node's "
                                                         "organisation owns): its grants can cover them.")]  # fmt: skip
Attributes = Annotated[list[str], typer.Option("--attribute", help="Attribute of shared records for grants' policies, "
                                                                   "e.g. type:quality (repeatable; twin:ID and "
                                                                   "kind:record are always set).")]  # fmt: skip


def _client(config: NodeConfig, to: str | None, stream: bytes, as_json: bool, attributes: list[str]) -> IngestSender:
    def event(text: str) -> None:
        if not as_json:
            err.print(f"[dim]{datetime.now():%H:%M:%S}[/] {text}", highlight=False, soft_wrap=True)

    return ingest.sender(config, to, stream, attributes, event)


def _answer_view(answer: Answer) -> dict[str, Any]:
    if answer.ok:
        assert answer.record is not None
        return {"seq": answer.seq, "record": answer.record.hex(), "height": answer.height}
    return {"seq": answer.seq, "error": answer.code, "message": answer.message}


@ingest_app.command("send")
@command
def ingest_send(
    home: Home,
    files: Annotated[list[Path], typer.Argument(help="Files to send, one record each.", exists=True, dir_okay=False)],
    to: To = None,
    stream: Annotated[str | None, typer.Option("--stream", help="Name of the stream to continue (default: a new "
                                                                "stream).")] = None,  # fmt: skip
    lines: Annotated[bool, typer.Option("--lines", help="Each line of each file is one record.")] = False,
    media_type: Annotated[str | None, typer.Option(help="Media type (default: guessed from the file name).")] = None,
    meta: Meta = [],  # noqa: B006
    twin: Twin = None,
    attribute: Attributes = [],  # noqa: B006
    tier2: Tier2 = False,
    as_json: Json = False,
) -> None:
    """Send files (or their lines) as records; each is acknowledged once its payload is in
    the store and its record committed. A lost connection is retried and nothing is sent
    twice; the command fails if any record was refused."""
    config = load_config(home)
    stream_id = (hashlib.sha256(f"{config.organisation}/{stream}".encode()).digest()[:STREAM_BYTES] if stream
                 else os.urandom(STREAM_BYTES))  # fmt: skip
    extra = parse_metadata(meta)
    attributes = shared_attributes(twin, attribute)
    key = tier2_key(config, create=True) if tier2 else None
    items: list[tuple[bytes, str, dict[str, str]]] = []
    for path in files:
        kind = media_type or (("text/plain" if lines else mimetypes.guess_type(path.name)[0])
                              or "application/octet-stream")  # fmt: skip
        if lines:
            items += [(line, kind, {**extra, "filename": path.name, "line": str(number)})
                      for number, line in enumerate(path.read_bytes().splitlines(), 1)]  # fmt: skip
        else:
            items.append((path.read_bytes(), kind, {**extra, "filename": path.name}))

    shared: tuple[str, ...] = ()

    async def run() -> list[Answer]:
        nonlocal shared
        async with _client(config, to, stream_id, as_json, attributes) as ingest:
            assert ingest.welcome is not None
            shared = ingest.welcome.attributes
            first = ingest.welcome.next_seq
            records = []
            for seq, (payload, kind, metadata) in enumerate(items, first):
                if key is not None:
                    payload = key.seal(payload, record_context(stream_id, seq))
                    metadata = {**metadata, "tier2": key.key_id}
                records.append(IngestRecord(seq, payload, kind, metadata))
            with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err, transient=True, disable=as_json or len(records) < 2) as progress:  # fmt: skip
                task = progress.add_task("records", total=len(records))
                return await ingest.send(records, lambda _: progress.advance(task))

    answers = sorted(asyncio.run(run()), key=lambda a: a.seq)
    refused = [a for a in answers if not a.ok]
    if as_json:
        print_json({"stream": stream_id.hex(), "attributes": list(shared), "records": [_answer_view(a) for a in answers]})
    else:
        for answer in answers:
            if answer.ok:
                assert answer.record is not None
                out.print(f"{answer.seq:>6}  {answer.record.hex()}  height {answer.height}", highlight=False, soft_wrap=True)
            else:
                out.print(f"{answer.seq:>6}  refused: {answer.message} ({answer.code})", highlight=False)
        out.print(f"stream {stream_id.hex()}: {len(answers) - len(refused)} recorded, {len(refused)} refused"
                  + (f"; shared as {' '.join(shared)}" if shared else ""), highlight=False, soft_wrap=True)  # fmt: skip
    if refused:
        raise TwinledgerError(f"{len(refused)} of {len(answers)} records were refused, the first: "
                              f"{refused[0].message}", code=refused[0].code)  # fmt: skip


@ingest_app.command("dir")
@command
def ingest_dir(
    home: Home,
    directory: Annotated[Path, typer.Argument(help="The directory to watch.", exists=True, file_okay=False)],
    pattern: Annotated[str, typer.Option("--pattern", help="Which file names to take (a glob).")] = "*",
    to: To = None,
    settle: Annotated[float, typer.Option(help="Seconds a file must stay unchanged before it is taken.",
                                          min=0.0)] = 1.0,  # fmt: skip
    once: Annotated[bool, typer.Option("--once", help="Take what is there now, then exit.")] = False,
    twin: Twin = None,
    attribute: Attributes = [],  # noqa: B006
    tier2: Tier2 = False,
    as_json: Json = False,
) -> None:
    """Make each matching file a record, then move it to DIRECTORY/done (refused files go
    to DIRECTORY/failed with a .error note). Restarts, of this command or of the node,
    neither lose nor duplicate a file. Watches until Ctrl-C unless --once."""
    from twinledger.ingest.directory import DirectoryIngest, DirectoryJournal, FileOutcome

    config = load_config(home)
    directory = directory.resolve()
    attributes = shared_attributes(twin, attribute)
    journal_path = config.home / "ingest" / f"dir-{hashlib.sha256(str(directory).encode()).hexdigest()[:16]}.db"
    journal = DirectoryJournal(journal_path)
    key = tier2_key(config, create=True) if tier2 else None
    outcomes: list[FileOutcome] = []

    def show(outcome: FileOutcome) -> None:
        outcomes.append(outcome)
        view = {"file": outcome.name, "seq": outcome.seq, "record": outcome.record.hex() if outcome.record else None,
                "error": outcome.reason or None}  # fmt: skip
        if as_json:
            sys.stdout.write(f"{_json_line(view)}\n")
            sys.stdout.flush()
        elif outcome.record is not None:
            out.print(f"[dim]{datetime.now():%H:%M:%S}[/] {outcome.name} → record {outcome.record.hex()}",
                      highlight=False, soft_wrap=True)  # fmt: skip
        else:
            out.print(f"[dim]{datetime.now():%H:%M:%S}[/] {outcome.name} not recorded: {outcome.reason}",
                      highlight=False, soft_wrap=True)  # fmt: skip

    async def run() -> None:
        async with _client(config, to, journal.stream, as_json, attributes) as ingest:
            watcher = DirectoryIngest(directory, pattern, ingest, journal, settle=settle, tier2=key, on_file=show)
            assert ingest.welcome is not None
            shared = f"; records shared as {' '.join(ingest.welcome.attributes)}" if ingest.welcome.attributes else ""
            if not as_json:
                out.print(f"{'taking' if once else 'watching'} {directory} for {pattern}{shared}"
                          f"{'' if once else '; Ctrl-C stops'}", highlight=False, soft_wrap=True)  # fmt: skip
            if once:
                await watcher.run_once()
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await watcher.run(stop)

    try:
        asyncio.run(run())
    except IngestError as exc:
        if exc.code != "stream_attributes":
            raise
        raise IngestError(f"{exc.message}: this directory's stream is the one {journal_path} keeps; to share its files "
                          "otherwise, delete that file once every file is done", code=exc.code) from None  # fmt: skip
    finally:
        journal.close()
    recorded = sum(1 for o in outcomes if o.record is not None)
    if not as_json:
        out.print(f"{recorded} files recorded, {len(outcomes) - recorded} not", highlight=False)


def _json_line(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


@command
def record_get(
    home: Home,
    record_id: Annotated[str, typer.Argument(help="The record id (the hash of the transaction that stored it).")],
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="Write the payload to this file; - for stdout.",
                                                  allow_dash=True)] = None,  # fmt: skip
    as_json: Json = False,
) -> None:
    """Show a record; with --out, fetch its payload from the store (checked against the
    hash on chain, decrypted, opened with this home's tier-2 key if it was sealed with it)."""
    async def fetch(session: Session) -> tuple[dict[str, Any], bytes | None]:
        entry = await ingest.record(session, record_id)
        return entry, await ingest.payload(session, entry) if out_path is not None else None

    to_stdout = out_path == STDIN
    if to_stdout and as_json:
        raise TwinledgerError("--out - and --json would both write to stdout; choose one", code="bad_request")
    record, payload = run(home, fetch)
    written = None
    if to_stdout and payload is not None:  # checked whole before a byte goes out
        sys.stdout.buffer.write(payload)
        sys.stdout.flush()
        err.print(f"wrote {len(payload):,} bytes to stdout", highlight=False)
        return
    if out_path is not None and payload is not None:
        temporary = out_path.with_name(f".{out_path.name}.part")
        with create_fresh(temporary) as sink:
            sink.write(payload)
        os.replace(temporary, out_path)
        written = {"path": str(out_path), "bytes": len(payload)}
    if as_json:
        print_json({**record, **({"written": written} if written else {})})
        return
    rows = [("record", record["id"]), ("owner", record["owner"]), ("height", record["height"]),
            ("media type", record["media_type"]), ("payload hash", record["payload_hash"])]  # fmt: skip
    rows += [(f"metadata {k}", v) for k, v in sorted((record.get("metadata") or {}).items())]
    out.print(kv_table("record", rows))
    if written:
        out.print(f"wrote {written['bytes']} bytes to {written['path']}", highlight=False)
