"""Sensor feeds of a twin's components: created in the off-chain store and attached on
chain, appended to (encrypted here, checkpointed on chain), read, followed, verified and
re-keyed. The CLI, the device agent and the API create feeds with ``create_and_attach``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from twinledger.aml import Signal
from twinledger.contracts import calls
from twinledger.core.attributes import SENSOR_KIND, feed_attributes
from twinledger.core.times import iso_us
from twinledger.services import access
from twinledger.services.access import DeviceKeys
from twinledger.services.feed_files import SampleSink
from twinledger.services.remote import segment
from twinledger.services.session import Outcome, Progress, Session
from twinledger.store.feed_verify import Checkpoint, FeedReport, verify_feed
from twinledger.store.feeds import (
    CHECKPOINT_EVERY,
    MAX_SEGMENT_SAMPLES,
    BadSample,
    FeedReader,
    FeedWriter,
    Sample,
    Segment,
    SharingNow,
    create_feed,
    feed_reference,
    parse_feed_reference,
    rotate_feed,
    sample_problem,
)
from twinledger.store.items import AccessDenied, FeedUpdate, ItemAcl

PENDING = "store:pending"
"""The reference a dry run gives a feed not yet created."""


@dataclass(frozen=True)
class AttachedFeed:
    """The feed attached to a component (or last detached from it), as the chain has it."""

    twin: str
    entry: dict[str, Any]
    """What the specification contract records of the feed."""
    feed: bytes
    checkpoints: list[Checkpoint]


async def attached(session: Session, twin_ref: str, component: str) -> AttachedFeed:
    view = await session.get(f"/v1/twins/{segment(twin_ref, 'twin')}/feeds/{segment(component, 'component')}"
                             "/checkpoints")  # fmt: skip
    return AttachedFeed(view["twin"], view["feed"], parse_feed_reference(view["feed"]["reference"]),
                        [Checkpoint(c["sequence"], bytes.fromhex(c["head"])) for c in view["checkpoints"]])  # fmt: skip


@dataclass(frozen=True)
class FeedAttached:
    feed: bytes | None
    """The store feed created (None when an outside reference was attached)."""
    reference: str
    outcome: Outcome


def signal_description(signal: Signal) -> str:
    unit = f" ({signal.unit})" if signal.unit else ""
    return f"{signal.name}{unit} from {signal.opcua_node}"


async def create_and_attach(session: Session, twin_ref: str, component: str, *, topic: str | None = None,
                            readers: list[str] | None = None, attributes: list[str] | None = None,
                            description: str = "", signal: Signal | None = None,
                            wait: bool = True) -> FeedAttached:  # fmt: skip
    """Create an encrypted feed owned by the session's key and attach it to ``component``.

    Only that key appends to it; ``readers`` (default: every organisation with a role on
    the twin) get its data key sealed to them; the owner grants others access by its
    attributes: twin, kind, component — a specification ``signal`` gives its own kind,
    component and id, as the device agent's feeds have — and ``attributes``."""
    twin = await session.twin(twin_ref)
    await session.check(calls.add_feed(twin["id"], component, PENDING, description))
    if signal is not None:
        tags = feed_attributes(twin["id"], signal.component_id, signal.kind, signal.id, attributes or [])
    else:
        tags = feed_attributes(twin["id"], component, SENSOR_KIND, None, attributes or [])
    recipients = await access.recipients(session, twin, readers or [])
    acl = await create_feed(await session.store(), session.signer, session.organisation, session.encryption_key,
                            topic or f"{twin['id']}/{component}", recipients, tags,
                            await session.capsule_key(twin["id"]))  # fmt: skip
    reference = feed_reference(acl.item)
    outcome = await session.transact(calls.add_feed(twin["id"], component, reference, description), wait)
    return FeedAttached(acl.item, reference, outcome)


async def attach(session: Session, twin_ref: str, component: str, reference: str, description: str = "",
                 wait: bool = True) -> FeedAttached:  # fmt: skip
    """Attach a feed kept elsewhere (any URI) to ``component``."""
    twin_id = (await session.twin(twin_ref))["id"]
    return FeedAttached(None, reference, await session.transact(calls.add_feed(twin_id, component, reference,
                                                                               description), wait))  # fmt: skip


async def remove(session: Session, twin_ref: str, component: str, wait: bool = True) -> Outcome:
    """Detach a component's feed (its data and checkpoints stay)."""
    twin_id = (await session.twin(twin_ref))["id"]
    return await session.transact(calls.remove_feed(twin_id, component), wait)


async def open_writer(session: Session, twin_id: str, component: str, feed: bytes,
                      checkpoint_every: int = CHECKPOINT_EVERY, sharing: SharingNow | None = None) -> FeedWriter:  # fmt: skip
    """The session key's writer of ``feed``, checkpointing its head on chain and following
    the twin's access generation (as ``sharing`` tells it; default: asked of the node)."""

    async def checkpoint(head: FeedUpdate) -> None:
        await session.transact(calls.checkpoint_feed(twin_id, component, head.sequence, head.hash))

    return await FeedWriter.open(await session.store(), session.signer, session.organisation, session.encryption_key,
                                 feed, checkpoint, checkpoint_every, sharing or session.sharing_now(twin_id))  # fmt: skip


MAX_WINDOW_SECONDS = 1 << 33
"""A segment window longer than every feed's history is as good as any longer one."""
BACKFILL_SEGMENT_SAMPLES = 4096
"""Samples a backfilled segment aims at (64 KiB sealed): a day of 1 Hz data is 22
round trips, not 86,400, and a time-range read fetches little it does not need."""


def backfill_segment_seconds(samples: Sequence[Sample]) -> float:
    """A segment window that holds about ``BACKFILL_SEGMENT_SAMPLES`` at the samples'
    mean rate (a device streaming live chooses its window for latency instead)."""
    if len(samples) < 2:
        return 1.0
    span = (samples[-1][0] - samples[0][0]) / 1_000_000
    return BACKFILL_SEGMENT_SAMPLES * span / (len(samples) - 1)


def segments(samples: Iterable[Sample], seconds: float, most: int = MAX_SEGMENT_SAMPLES) -> Iterator[list[Sample]]:
    """Consecutive samples grouped into windows of ``seconds`` of sample time, ``most``
    samples at most each."""
    window = max(1, round(min(seconds, MAX_WINDOW_SECONDS) * 1_000_000))
    batch: list[Sample] = []
    for sample in samples:
        if batch and (sample[0] - batch[0][0] >= window or len(batch) == most):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


@dataclass(frozen=True)
class Pushed:
    feed: bytes
    component: str
    samples: int
    updates: list[FeedUpdate]
    skipped: int = 0
    """Samples the feed already held (an earlier, interrupted push of the same data)."""


async def push(session: Session, twin_ref: str, component: str, samples: list[Sample],
               segment_seconds: float | None = None, checkpoint_every: int = CHECKPOINT_EVERY,
               progress: Progress | None = None) -> Pushed:  # fmt: skip
    """Append samples — finite values at strictly increasing times — to the component's
    feed, encrypted, in segments of ``segment_seconds`` of sample time (default: from the
    data's rate); its head is checkpointed on chain. Samples at or before the feed's end
    are what an interrupted push of the same data appended: skipped if the feed holds
    exactly them, refused otherwise (a feed's history is not rewritten)."""
    problem = sample_problem(samples)
    if problem is not None:
        raise BadSample(problem)
    feed = await attached(session, twin_ref, component)
    writer = await open_writer(session, feed.twin, component, feed.feed, checkpoint_every)
    held = sum(1 for moment, _ in samples if moment <= writer.end)
    if held:
        await _check_held(session, twin_ref, component, samples[:held], writer.end)
        if progress is not None:
            progress(held)
    written: list[FeedUpdate] = []
    if segment_seconds is None:  # a burst in sparse data fills no segment past twice the aim
        parts = segments(samples[held:], backfill_segment_seconds(samples), 2 * BACKFILL_SEGMENT_SAMPLES)
    else:
        parts = segments(samples[held:], segment_seconds)
    for batch in parts:
        writer.extend(batch)
        written += await writer.flush()
        if progress is not None:
            progress(len(batch))
    await writer.close()
    return Pushed(feed.feed, feed.entry["component"], len(samples), written, held)


async def _check_held(session: Session, twin_ref: str, component: str, held: list[Sample], end: int) -> None:
    """That the feed holds exactly ``held`` from its first time to ``end``."""
    stored = (await read(session, twin_ref, component, since=held[0][0], until=end)).samples
    for index, (mine, theirs) in enumerate(itertools.zip_longest(held, stored)):
        if mine != theirs:
            raise BadSample(f"the feed already holds samples up to {iso_us(end)}, and sample {index + 1} "
                            f"({iso_us(mine[0]) if mine else 'none'}) differs from the one stored there "
                            f"({iso_us(theirs[0]) if theirs else 'none'}); a feed's history is not rewritten: push "
                            f"only samples after {iso_us(end)}")  # fmt: skip


@dataclass(frozen=True)
class FeedRead:
    feed: bytes
    segments: list[Segment]
    samples: list[Sample]
    """The segments' samples within the asked time range."""


def within(samples: list[Sample], since: int | None, until: int | None) -> list[Sample]:
    """The samples in [``since``, ``until``] (a segment may reach past either end)."""
    if since is None and until is None:
        return samples
    return [s for s in samples if (since is None or s[0] >= since) and (until is None or s[0] <= until)]


async def read(session: Session, twin_ref: str, component: str, after: int = -1, since: int | None = None,
               until: int | None = None, latest: bool = False, device: DeviceKeys | None = None,
               progress: Progress | None = None) -> FeedRead:  # fmt: skip
    """Fetch, verify and decrypt a feed's history (after an update, within a time range
    in microseconds, or only the newest segment), as a reader or through a grant;
    ``progress`` hears of the samples as they are read."""
    feed = (await attached(session, twin_ref, component)).feed
    reader = await FeedReader.open(await session.store(), feed, access.unlock(session, device))
    found: list[Segment] = []
    samples: list[Sample] = []
    if latest:
        newest = await reader.latest()
        found = [newest] if newest is not None else []
        samples = within(newest.samples, since, until) if newest is not None else []
    else:
        async for piece in reader.history(after, since=since, until=until):
            found.append(piece)
            samples += within(piece.samples, since, until)
            if progress is not None:
                progress(len(piece.samples))
    return FeedRead(feed, found, samples)


@dataclass(frozen=True)
class Exported:
    feed: bytes
    samples: int
    segments: int
    first: int | None
    last: int | None


async def export(session: Session, twin_ref: str, component: str, sink: SampleSink, since: int | None = None,
                 until: int | None = None, device: DeviceKeys | None = None,
                 progress: Progress | None = None) -> Exported:  # fmt: skip
    """Write a feed's samples (within a time range) into ``sink`` a segment at a time, so
    a year of data needs no more memory than a segment."""
    feed = (await attached(session, twin_ref, component)).feed
    reader = await FeedReader.open(await session.store(), feed, access.unlock(session, device))
    count = opened = 0
    first = last = None
    try:
        async for piece in reader.history(since=since, until=until):
            chosen = within(piece.samples, since, until)
            opened += 1
            if chosen:
                sink.write(chosen)
                count += len(chosen)
                first = chosen[0][0] if first is None else first
                last = chosen[-1][0]
            if progress is not None:
                progress(len(piece.samples))
    finally:  # the sink lets go of its stream (stdout stays open) whatever happened
        sink.close()
    return Exported(feed, count, opened, first, last)


async def follow(session: Session, twin_ref: str, component: str, after: int | None = None,
                 device: DeviceKeys | None = None) -> AsyncIterator[Segment]:  # fmt: skip
    """New segments as they arrive, after update ``after`` (default: the current head)."""
    feed = (await attached(session, twin_ref, component)).feed
    store = await session.store()
    reader = await FeedReader.open(store, feed, access.unlock(session, device))
    if after is None:
        head = await store.feed_head(reader.acl)
        after = head.sequence if head is not None else -1
    async for found in reader.follow(after):
        yield found


async def rotate(session: Session, twin_ref: str, component: str) -> tuple[bytes, ItemAcl]:
    """Give the feed a new data key for everything appended from now on (a new epoch)."""
    feed = await attached(session, twin_ref, component)
    acl = await rotate_feed(await session.store(), session.signer, session.organisation, session.encryption_key,
                            feed.feed, session.sharing_now((await session.twin(twin_ref))["id"]))  # fmt: skip
    return feed.feed, acl


async def verify(session: Session, twin_ref: str, component: str) -> FeedReport:
    """Check the feed's whole history on every replica against its on-chain checkpoints
    (and what is inside the segments too, if the session can read them)."""
    feed = await attached(session, twin_ref, component)
    store = await session.store()
    owner = bytes.fromhex(feed.entry["owner"])
    unlock = access.unlock(session)
    try:
        await unlock(await store.get_acl(feed.feed), None)
    except AccessDenied:
        return await verify_feed(store, feed.feed, feed.checkpoints, owner)
    return await verify_feed(store, feed.feed, feed.checkpoints, owner, unlock)


async def change_readers(session: Session, twin_ref: str, component: str, add: list[str],
                         remove: list[str]) -> list[ItemAcl]:  # fmt: skip
    feed = await attached(session, twin_ref, component)
    return await access.change_readers(session, [feed.feed], add, remove)
