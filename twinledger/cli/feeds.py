"""``twinledger twin feed …``: sensor feeds in the off-chain store, attached to components.

Samples are encrypted here with the feed's data key and appended as owner-signed updates;
reading, following and verifying happen here too, so no node sees a sample value.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from twinledger.cli.common import (
    Attributes,
    DeviceDir,
    Home,
    Json,
    KeyFile,
    Organisations,
    Readers,
    Ref,
    Wait,
    command,
    err,
    kv_table,
    out,
    print_json,
    render_outcome,
    run,
)
from twinledger.cli.twins import feed_app, print_readers
from twinledger.core.text import plural
from twinledger.core.times import iso_us, parse_time
from twinledger.errors import TwinledgerError
from twinledger.services import feed_files, feeds
from twinledger.services.access import device_keys
from twinledger.services.session import Session
from twinledger.store.feed_verify import FeedReport
from twinledger.store.feeds import CHECKPOINT_EVERY, Sample, update_view

Component = Annotated[str, typer.Argument(help="AML component id of the sensor.")]
TimeOption = Annotated[str | None, typer.Option(help="Seconds since the epoch or an ISO 8601 time (UTC if no zone).")]
SPARK = "▁▂▃▄▅▆▇█"


def show_time(microseconds: int) -> str:
    return iso_us(microseconds, "milliseconds")


def sparkline(values: list[float], width: int = 72) -> str:
    """The values' shape in one line: the mean of each of ``width`` buckets (values that
    are not finite numbers, which older feeds may hold, are left out)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return ""
    size = math.ceil(len(values) / width)
    means = [sum(bucket) / len(bucket) for bucket in (values[i : i + size] for i in range(0, len(values), size))]
    low, high = min(means), max(means)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((m - low) / span * len(SPARK)))] for m in means)


# -- commands -----------------------------------------------------------------------------------


@feed_app.command("add")
@command
def feed_add(
    ref: Ref,
    component: Component,
    home: Home,
    topic: Annotated[str | None, typer.Option(help="The feed's topic (default: TWIN/COMPONENT); with the owner key "
                                                   "it names the feed.")] = None,  # fmt: skip
    reference: Annotated[str | None, typer.Option(help="Attach a feed kept elsewhere (any URI) instead of "
                                                       "creating one in the store.")] = None,  # fmt: skip
    reader: Readers = [],  # noqa: B006
    attribute: Attributes = [],  # noqa: B006
    description: Annotated[str, typer.Option(help="What the feed carries.")] = "",
    key: KeyFile = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Create an encrypted sensor feed in the store and attach it to a component.

    Only this key can append to it; the readers get its data key sealed to them, and the
    owner can grant others access by its attributes (twin:ID, kind:sensor,
    component:COMPONENT and every --attribute)."""
    if reference is None:
        attached = run(home, lambda session: feeds.create_and_attach(session, ref, component, topic=topic,
                                                                     readers=reader, attributes=attribute,
                                                                     description=description, wait=wait), key)  # fmt: skip
    else:
        attached = run(home, lambda session: feeds.attach(session, ref, component, reference, description, wait), key)
    render_outcome(attached.outcome, as_json, f"feed {attached.reference} attached to {component}")


@feed_app.command("remove")
@command
def feed_remove(ref: Ref, component: Component, home: Home, key: KeyFile = None, wait: Wait = True,
                as_json: Json = False) -> None:  # fmt: skip
    """Detach a component's sensor feed (its data and checkpoints stay)."""
    render_outcome(run(home, lambda session: feeds.remove(session, ref, component, wait), key), as_json,
                   f"feed of {component} removed")  # fmt: skip


@feed_app.command("share")
@command
def feed_share(ref: Ref, component: Component, organisations: Organisations, home: Home, key: KeyFile = None,
               as_json: Json = False) -> None:  # fmt: skip
    """Let more organisations read the component's feed, its history included."""
    acls = run(home, lambda session: feeds.change_readers(session, ref, component, organisations, []), key)
    print_readers(acls, [], f"shared the feed of {component}", as_json)


@feed_app.command("unshare")
@command
def feed_unshare(ref: Ref, component: Component, organisations: Organisations, home: Home, key: KeyFile = None,
                 as_json: Json = False) -> None:  # fmt: skip
    """Take organisations off the feed's readers; store nodes refuse their reads from then on."""
    acls = run(home, lambda session: feeds.change_readers(session, ref, component, [], organisations), key)
    print_readers(acls, organisations, f"unshared the feed of {component}", as_json)


def _read_samples(source: Path) -> list[Sample]:
    """The samples of a CSV file; '-' is stdin."""
    if str(source) == "-":
        return list(feed_files.read_csv(sys.stdin))
    if not source.is_file():
        raise TwinledgerError(f"no file {source}", code="no_file")
    with source.open(newline="") as stream:
        return list(feed_files.read_csv(stream))


def _sample_progress(as_json: bool) -> Progress:
    """Samples done on stderr, as a bar with the time left when the total is known."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,} samples"),
                    TimeRemainingColumn(), console=err, transient=True,
                    disable=as_json or not err.is_terminal)  # fmt: skip


@feed_app.command("push")
@command
def feed_push(
    ref: Ref,
    component: Component,
    source: Annotated[Path, typer.Argument(help="CSV of time,value lines (time in seconds since the epoch or ISO "
                                                "8601); - for stdin.", allow_dash=True)],  # fmt: skip
    home: Home,
    segment_seconds: Annotated[float | None, typer.Option(help="Sample time per segment (default: from the data's rate, "
                                                               "about 4,096 samples a segment).", min=0.001)] = None,  # fmt: skip
    checkpoint_every: Annotated[int, typer.Option(help="Updates between on-chain checkpoints.", min=1)] = CHECKPOINT_EVERY,
    key: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Append samples to the component's feed, encrypted, and checkpoint its head on chain.

    The whole file is checked before anything is appended."""
    samples = _read_samples(source)
    if not samples:
        raise TwinledgerError(f"{source} holds no samples", code="bad_sample")
    with _sample_progress(as_json) as progress:
        task = progress.add_task(f"appending to {component}", total=len(samples))
        pushed = run(home, lambda session: feeds.push(session, ref, component, samples, segment_seconds,
                                                      checkpoint_every, lambda n: progress.advance(task, n)), key)  # fmt: skip
    feed, written = pushed.feed, pushed.updates
    appended = len(samples) - pushed.skipped
    summary = {"feed": feed.hex(), "component": pushed.component, "samples": appended, "skipped": pushed.skipped,
               "updates": len(written), "first_sequence": written[0].sequence if written else None,
               "last_sequence": written[-1].sequence if written else None,
               "head": written[-1].hash.hex() if written else None}  # fmt: skip
    if as_json:
        print_json(summary)
        return
    if pushed.skipped:
        out.print(f"skipped {plural(pushed.skipped, 'sample')} the feed already held (an earlier push of this data)",
                  highlight=False)  # fmt: skip
    if written:
        out.print(f"appended {plural(appended, 'sample')} in {plural(len(written), 'segment')} (updates "
                  f"{written[0].sequence} to {written[-1].sequence}); head {written[-1].hash.hex()[:16]}… checkpointed "
                  "on chain", highlight=False)  # fmt: skip
    else:
        out.print("nothing new: the feed already holds every sample", highlight=False)


@feed_app.command("read")
@command
def feed_read(
    ref: Ref,
    component: Component,
    home: Home,
    after: Annotated[int, typer.Option(help="Start after this update sequence number.", min=-1)] = -1,
    since: TimeOption = None,
    until: TimeOption = None,
    latest: Annotated[bool, typer.Option("--latest", help="Only the newest segment.")] = False,
    device: DeviceDir = None,
    as_json: Json = False,
) -> None:
    """Fetch, verify and decrypt a feed's history (optionally a time range) and plot it."""
    start, end = (parse_time(t) if t is not None else None for t in (since, until))
    keys = device_keys(device) if device is not None else None
    with _sample_progress(as_json) as progress:
        task = progress.add_task(f"reading {component}", total=None)
        read = run(home, lambda session: feeds.read(session, ref, component, after, start, end, latest, keys,
                                                    lambda n: progress.advance(task, n)))  # fmt: skip
    feed, segments, samples = read.feed, read.segments, read.samples
    if as_json:
        print_json({"feed": feed.hex(), "updates": [update_view(s.update) for s in segments],
                    "samples": [[t, v] for t, v in samples]})  # fmt: skip
        return
    if not samples:
        out.print(f"feed {feed.hex()[:16]}… holds no samples there", highlight=False)
        return
    values = [v for _, v in samples]
    out.print(kv_table(f"feed of {component}", [
        ("feed", feed.hex()), ("updates", f"{segments[0].update.sequence} to {segments[-1].update.sequence}"),
        ("samples", f"{len(samples):,}"), ("from", show_time(samples[0][0])), ("to", show_time(samples[-1][0])),
        ("min / mean / max", f"{min(values):.6g} / {sum(values) / len(values):.6g} / {max(values):.6g}"),
    ]))  # fmt: skip
    out.print(sparkline(values), highlight=False)
    table = Table("time (UTC)", "value", title="newest samples", title_justify="left")
    for moment, value in samples[-10:]:
        table.add_row(show_time(moment), f"{value:.6g}")
    out.print(table)


@feed_app.command("export")
@command
def feed_export(
    ref: Ref,
    component: Component,
    home: Home,
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write; - for stdout.", allow_dash=True)],
    file_format: Annotated[str | None, typer.Option("--format", help="csv or parquet (default: the output's suffix, "
                                                                    "else csv).")] = None,  # fmt: skip
    since: TimeOption = None,
    until: TimeOption = None,
    device: DeviceDir = None,
    as_json: Json = False,
) -> None:
    """Write a feed's samples, decrypted and checked, to CSV or Parquet with ISO 8601
    times in UTC (a time range with --since/--until). A CSV export pushes back as is.

    The file appears only once complete: an interrupted export leaves no partial file."""
    to_stdout = str(output) == "-"
    if to_stdout and as_json:
        raise TwinledgerError("-o - and --json would both write to stdout; choose one", code="bad_request")
    chosen = (file_format or ("parquet" if output.suffix.lower() == ".parquet" else "csv")).lower()
    if chosen not in feed_files.FORMATS:
        raise TwinledgerError(f"no export format {chosen!r}; choose one of {', '.join(feed_files.FORMATS)}",
                              code="bad_format")  # fmt: skip
    start, end = (parse_time(t) if t is not None else None for t in (since, until))
    keys = device_keys(device) if device is not None else None
    partial: Path | None = None
    if to_stdout:
        sink: BinaryIO = sys.stdout.buffer
    else:  # a scratch file of its own (two exports to one name never publish each other's half)
        descriptor, scratch = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent or ".")
        partial, sink = Path(scratch), os.fdopen(descriptor, "wb")
    try:
        with _sample_progress(as_json) as progress:
            task = progress.add_task(f"exporting {component}", total=None)
            exported = run(home, lambda session: feeds.export(session, ref, component, feed_files.sink(sink, chosen),
                                                              start, end, keys, lambda n: progress.advance(task, n)))  # fmt: skip
        if partial is not None:
            sink.flush()
            os.fsync(sink.fileno())
            sink.close()
            os.replace(partial, output)
    finally:
        if partial is not None:
            if not sink.closed:
                sink.close()
            partial.unlink(missing_ok=True)
    summary = {"feed": exported.feed.hex(), "component": component, "format": chosen,
               "output": "-" if to_stdout else str(output), "samples": exported.samples,
               "segments": exported.segments, "from": iso_us(exported.first) if exported.first is not None else None,
               "to": iso_us(exported.last) if exported.last is not None else None}  # fmt: skip
    if as_json:
        print_json(summary)
        return
    span = f" from {summary['from']} to {summary['to']}" if exported.samples else ""
    (err if to_stdout else out).print(f"wrote {plural(exported.samples, 'sample')}{span} to "
                                      f"{'stdout' if to_stdout else output} ({chosen})", highlight=False)  # fmt: skip


@feed_app.command("follow")
@command
def feed_follow(
    ref: Ref,
    component: Component,
    home: Home,
    after: Annotated[int | None, typer.Option(help="Start after this update (default: the current head).",
                                              min=-1)] = None,  # fmt: skip
    count: Annotated[int | None, typer.Option(help="Stop after this many segments.", min=1)] = None,
    device: DeviceDir = None,
    as_json: Json = False,
) -> None:
    """Print new segments as they arrive (one JSON object per line with --json)."""
    keys = device_keys(device) if device is not None else None

    async def work(session: Session) -> None:
        seen = 0
        async for segment in feeds.follow(session, ref, component, after, keys):
            if as_json:
                sys.stdout.write(json.dumps({**update_view(segment.update),
                                             "values": [[t, v] for t, v in segment.samples]}) + "\n")  # fmt: skip
                sys.stdout.flush()
            else:
                last_time, last_value = segment.samples[-1]
                out.print(f"update {segment.update.sequence}: {len(segment.samples):,} samples, last "
                          f"{last_value:.6g} at {show_time(last_time)}", highlight=False)  # fmt: skip
            seen += 1
            if count is not None and seen >= count:
                return

    run(home, work)


def _report_view(report: FeedReport) -> dict[str, Any]:
    return {"feed": report.feed.hex(), "intact": report.intact, "updates": report.updates,
            "checkpoints": report.checkpoints, "segments_opened": report.segments_opened,
            "replicas": report.replicas, "behind": report.behind,
            "problems": [{"kind": p.kind, "sequence": p.sequence, "node": p.node, "detail": p.detail}
                         for p in report.problems]}  # fmt: skip


@feed_app.command("rotate")
@command
def feed_rotate(ref: Ref, component: Component, home: Home, key: KeyFile = None, as_json: Json = False) -> None:
    """Give the feed a new data key for everything appended from now on (a new epoch).
    History keeps its keys; twinledger revoke does this by itself for the twin's feeds."""
    feed, acl = run(home, lambda session: feeds.rotate(session, ref, component), key)
    if as_json:
        print_json({"feed": feed.hex(), "epoch": len(acl.retired) + 1, "acl_version": acl.version})
    else:
        out.print(f"feed of {component} is in epoch {len(acl.retired) + 1}: samples appended from now on are "
                  "sealed under a new key", highlight=False)  # fmt: skip


@feed_app.command("verify")
@command
def feed_verify(ref: Ref, component: Component, home: Home, as_json: Json = False) -> None:
    """Check the feed's whole history on every replica against its on-chain checkpoints;
    reports deleted, altered and reordered updates and segments. Exits 1 if any."""
    report = run(home, lambda session: feeds.verify(session, ref, component))
    feed = report.feed
    if as_json:
        print_json(_report_view(report))
    else:
        state = "intact" if report.intact else f"{len(report.problems)} problem(s)"
        out.print(f"feed {feed.hex()[:16]}…: {report.updates} update(s), {report.checkpoints} checkpoint(s), "
                  f"replicas {', '.join(report.replicas)}: {state}", highlight=False)  # fmt: skip
        for label, head in report.behind.items():
            out.print(f"  {label} is behind at update {head} (repair brings it up)", highlight=False)
        for problem in report.problems:
            where = f" on {problem.node}" if problem.node else ""
            out.print(f"  {problem.kind}{where}: {problem.detail}", highlight=False)
    if not report.intact:
        raise TwinledgerError(f"feed {feed.hex()[:16]}… failed verification: "
                              f"{', '.join(sorted({p.kind for p in report.problems}))}", code="feed_damaged")  # fmt: skip
