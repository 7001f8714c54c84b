"""A feed's history checked against its on-chain checkpoints on every replica: what was
deleted, altered, reordered or is out of order, and — for a reader, who opens the
segments — samples out of time order or not finite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from twinledger.errors import DecryptionFailed, TwinledgerError
from twinledger.store.client import StoreClient
from twinledger.store.documents import Unlock
from twinledger.store.feeds import EpochKeys, open_segment, sample_problem
from twinledger.store.items import FeedUpdate, ItemAcl, StoreError, chunk_hash, decode_feed_update
from twinledger.store.placement import StoreNode

VERIFY_IN_FLIGHT = 16


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    head: bytes


@dataclass(frozen=True)
class FeedProblem:
    kind: str
    """deleted, altered, reordered, out of order, non-finite, forged, segment missing,
    segment altered, unreachable."""
    sequence: int
    """-1 when the problem is not about one update."""
    node: str
    """The store node it was found on; empty when every replica shows it."""
    detail: str


@dataclass
class FeedReport:
    feed: bytes
    updates: int = 0
    checkpoints: int = 0
    segments_opened: bool = False
    """Whether segments were also decrypted (the verifier is a reader)."""
    replicas: list[str] = field(default_factory=list)
    behind: dict[str, int] = field(default_factory=dict)
    """Replicas whose head is older than the feed's (repair brings them up); not a problem."""
    problems: list[FeedProblem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


async def verify_feed(store: StoreClient, feed: bytes, checkpoints: Sequence[Checkpoint], owner: bytes | None = None,
                      unlock: Unlock | None = None) -> FeedReport:  # fmt: skip
    """Check the whole history of ``feed`` against the on-chain ``checkpoints``.

    Every replica's updates are read; what survives on any replica counts, so a problem is
    one no repair can fix: a sequence no replica holds (deleted), an update whose signature
    fails, that two replicas disagree on or that differs from a checkpoint (altered), an
    update not linked to the one before (reordered), a segment no replica serves intact.
    ``owner`` is the key the chain says attached the feed; a reader (``unlock``) also opens
    each segment it holds the epoch's key for, which finds one moved to another place in
    the history."""
    acl = await store.get_acl(feed)
    report = FeedReport(feed, checkpoints=len(checkpoints), segments_opened=unlock is not None)
    keys = EpochKeys(store, acl, unlock) if unlock is not None else None
    if owner is not None and acl.owner != owner:
        report.problems.append(FeedProblem("forged", -1, "", "the feed's updates are signed by another key than "
                                                             "the one that attached it on chain"))  # fmt: skip
    versions: dict[int, dict[bytes, FeedUpdate]] = {}
    heads: dict[str, int] = {}
    for node in store.replicas(feed):
        report.replicas.append(node.label)
        try:
            history = await _replica_history(store, node, acl, report)
        except StoreError as exc:
            report.problems.append(FeedProblem("unreachable", -1, node.label, exc.message))
            continue
        heads[node.label] = max(history, default=-1)
        for sequence, update in history.items():
            versions.setdefault(sequence, {})[update.hash] = update
    last = max([-1, *heads.values(), *(c.sequence for c in checkpoints)])
    report.behind = {label: head for label, head in heads.items() if head < last}
    pinned = {c.sequence: c.head for c in checkpoints}
    chain = _chain(versions, last, pinned, report)
    report.updates = len(chain)
    ordered = [chain[sequence] for sequence in sorted(chain)]
    for start in range(0, len(ordered), VERIFY_IN_FLIGHT):
        found = await asyncio.gather(*(_segment_problem(store, acl, update, keys)
                                       for update in ordered[start : start + VERIFY_IN_FLIGHT]))  # fmt: skip
        report.problems.extend(problem for problem in found if problem is not None)
    return report


def _chain(versions: dict[int, dict[bytes, FeedUpdate]], last: int, pinned: Mapping[int, bytes],
           report: FeedReport) -> dict[int, FeedUpdate]:  # fmt: skip
    """One update per sequence (the checkpointed one where replicas disagree), with the
    gaps, disagreements, broken links and checkpoint mismatches reported."""
    chain: dict[int, FeedUpdate] = {}
    missing = []
    for sequence in range(last + 1):
        found = versions.get(sequence, {})
        if not found:
            missing.append(sequence)
            continue
        if len(found) > 1:
            report.problems.append(FeedProblem("altered", sequence, "", f"replicas hold {len(found)} different "
                                                                        f"updates {sequence}"))  # fmt: skip
        chain[sequence] = found.get(pinned.get(sequence, b""), next(iter(found.values())))
        if sequence in pinned and chain[sequence].hash != pinned[sequence]:
            report.problems.append(FeedProblem("altered", sequence, "", f"update {sequence} differs from the "
                                                                        "on-chain checkpoint"))  # fmt: skip
    for start, end in _runs(missing):
        span = f"update {start} is" if start == end else f"updates {start} to {end} are"
        report.problems.append(FeedProblem("deleted", start, "", f"{span} on no replica"))
    for sequence, update in sorted(chain.items()):
        before = chain.get(sequence - 1)
        if before is not None and (update.previous != before.hash or update.time <= before.time):
            report.problems.append(FeedProblem("reordered", sequence, "", f"update {sequence} does not follow "
                                                                          f"update {sequence - 1}"))  # fmt: skip
        elif before is not None and update.first <= before.last:
            report.problems.append(FeedProblem("out of order", sequence, "", f"the samples of update {sequence} start "
                                               f"at {update.first} µs, not after those of update {sequence - 1} "
                                               f"({before.last} µs)"))  # fmt: skip
    return chain


async def _replica_history(store: StoreClient, node: StoreNode, acl: ItemAcl,
                           report: FeedReport) -> dict[int, FeedUpdate]:  # fmt: skip
    """Every update ``node`` serves that verifies on its own; one that does not (a bad
    signature, another feed, a sequence twice) is reported as altered on that node."""
    history: dict[int, FeedUpdate] = {}
    after = -1
    while True:
        answer = await store.request(node, "feed_get", {"feed": acl.item, "after": after})
        raws = answer.get("updates")
        if not isinstance(raws, list) or not raws:
            return history
        for position, raw in enumerate(raws):
            try:
                update = decode_feed_update(raw, acl.owner)
            except StoreError as exc:
                report.problems.append(FeedProblem("altered", after + 1 + position, node.label, exc.message))
                continue
            if update.feed != acl.item or update.sequence in history:
                report.problems.append(FeedProblem("altered", update.sequence, node.label,
                                                   "an update of another feed or a second one with this sequence"))  # fmt: skip
                continue
            history[update.sequence] = update
        after = max(after + len(raws), max(history, default=after))


def _runs(numbers: list[int]) -> Iterable[tuple[int, int]]:
    """Consecutive runs of sorted ``numbers`` as (first, last)."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return [(first, last) for first, last in runs]


async def _segment_problem(store: StoreClient, acl: ItemAcl, update: FeedUpdate,
                           keys: EpochKeys | None) -> FeedProblem | None:  # fmt: skip
    """Whether some replica still serves ``update``'s segment intact (a store node repairs
    a damaged copy from another replica before answering)."""
    codes: set[str] = set()
    for node in store.replicas(update.segment):
        try:
            answer = await store.request(node, "get", {"item": acl.item, "hash": update.segment})
        except StoreError as exc:
            codes.add(exc.code)
            continue
        data = answer.get("data")
        if not isinstance(data, bytes) or chunk_hash(data) != update.segment:
            codes.add("corrupt_chunk")
            continue
        if keys is not None:
            try:
                secret = await keys.get(update)
            except TwinledgerError:  # an epoch this verifier cannot open: the hash check is what it can do
                return None
            try:
                samples = open_segment(secret, update, data)
            except DecryptionFailed:
                return FeedProblem("reordered", update.sequence, "", f"the segment of update {update.sequence} was "
                                                                     "sealed for another place in the feed")  # fmt: skip
            problem = sample_problem(samples)
            if problem is not None:
                return FeedProblem("out of order" if "time" in problem else "non-finite", update.sequence, "",
                                   f"update {update.sequence}: {problem}")  # fmt: skip
        return None
    if codes <= {"not_found"}:
        return FeedProblem("segment missing", update.sequence, "", f"the segment of update {update.sequence} is on "
                                                                   "no replica")  # fmt: skip
    if "corrupt_chunk" in codes:
        return FeedProblem("segment altered", update.sequence, "", f"the segment of update {update.sequence} no "
                                                                   "longer matches its hash on any replica")  # fmt: skip
    return FeedProblem("unreachable", update.sequence, "", f"no replica of the segment of update {update.sequence} "
                                                           f"answered ({', '.join(sorted(codes))})")  # fmt: skip
