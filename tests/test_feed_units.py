"""Feed records, segments and their storage on their own: every field of an update is
signed, segments open only in their place, and a store node keeps one linked history."""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinledger.crypto.keys import SigningKey
from twinledger.errors import DecryptionFailed
from twinledger.store.client import linked_updates
from twinledger.store.disk import ChunkStore
from twinledger.store.documents import new_acl
from twinledger.store.feeds import MAX_SEGMENT_SAMPLES, appendable, open_segment, sample_problem, seal_segment
from twinledger.store.items import FeedUpdate, StoreError, check_successor, chunk_hash, decode_feed_update, item_id

OWNER = SigningKey.generate()
FEED = item_id(OWNER.public, "feed", b"plant-7/level-sensor-1")
SECRET = os.urandom(32)
T0 = 1_790_000_000_000_000


def chain(length: int, key: SigningKey = OWNER) -> list[tuple[FeedUpdate, bytes]]:
    """``length`` linked updates with their segments."""
    out: list[tuple[FeedUpdate, bytes]] = []
    for sequence in range(length):
        samples = [(T0 + sequence * 1_000_000 + i, float(i)) for i in range(5)]
        segment = seal_segment(SECRET, FEED, sequence, samples)
        previous = out[-1][0] if out else None
        update = FeedUpdate(FEED, sequence, T0 + sequence, previous.hash if previous else bytes(32),
                            chunk_hash(segment), 5, samples[0][0], samples[-1][0], bytes(32)).signed(key)  # fmt: skip
        out.append((update, segment))
    return out


def test_segments_round_trip_and_open_only_at_their_own_place():
    samples = [(T0 + i, i / 3) for i in range(1000)]
    segment = seal_segment(SECRET, FEED, 7, samples)
    assert len(segment) == 12 + 1000 * 16 + 16
    update = FeedUpdate(FEED, 7, T0, b"\x01" * 32, chunk_hash(segment), 1000, T0, T0 + 999, bytes(32))
    assert open_segment(SECRET, update, segment) == samples
    flipped = segment[:20] + bytes([segment[20] ^ 1]) + segment[21:]
    moved = replace(update, sequence=8)
    for changed_update, data in ((update, flipped), (moved, segment), (replace(update, samples=999), segment),
                                 (replace(update, feed=os.urandom(32)), segment)):  # fmt: skip
        if data is flipped:
            changed_update = replace(changed_update, segment=chunk_hash(flipped))
        with pytest.raises(DecryptionFailed) as caught:
            open_segment(SECRET, changed_update, data)
        assert caught.value.message == "cannot decrypt: wrong key or damaged data"
    with pytest.raises(DecryptionFailed):
        open_segment(os.urandom(32), update, segment)
    assert seal_segment(SECRET, FEED, 7, samples) != segment  # a fresh nonce every time
    with pytest.raises(StoreError, match="1 to"):
        seal_segment(SECRET, FEED, 0, [(T0, 0.0)] * (MAX_SEGMENT_SAMPLES + 1))


def test_every_field_of_an_update_is_signed():
    update, _ = chain(2)[1]
    assert decode_feed_update(update.encoded(), OWNER.public) == update
    for field in fields(FeedUpdate):
        if field.name == "signature":
            continue
        value = getattr(update, field.name)
        changed = value + 1 if isinstance(value, int) else bytes([value[0] ^ 1]) + value[1:]
        with pytest.raises(StoreError) as caught:
            decode_feed_update(replace(update, **{field.name: changed}).encoded(), OWNER.public)
        assert caught.value.code in ("bad_signature", "bad_update"), field.name
    with pytest.raises(StoreError, match="signature"):
        decode_feed_update(update.encoded(), SigningKey.generate().public)
    for raw in (b"", b"\xc1", b"\x00" * 2000, update.encoded()[:-3]):
        with pytest.raises(StoreError) as caught:
            decode_feed_update(raw, OWNER.public)
        assert caught.value.code == "bad_update"
    first = chain(1)[0][0]
    with pytest.raises(StoreError, match="only the first update"):
        decode_feed_update(replace(first, previous=b"\x01" * 32).signed(OWNER).encoded(), OWNER.public)


def test_only_the_next_linked_later_update_follows_the_head():
    (first, _), (second, _), (third, _) = chain(3)
    check_successor(None, first)
    check_successor(first, second)
    for head, update in ((None, second), (first, third), (first, replace(second, previous=first.previous)),
                         (first, replace(second, time=first.time)), (second, first)):  # fmt: skip
        with pytest.raises(StoreError) as caught:
            check_successor(head, update)
        assert caught.value.code == "out_of_order"


def test_a_store_node_keeps_one_linked_history_that_survives_reopening(tmp_path: Path):
    updates = [u for u, _ in chain(6)]
    disk = ChunkStore(tmp_path)
    for update in updates[:4]:
        disk.put_feed_update(update)
    refusals = {"replayed_update": updates[1], "conflicting_update": replace(updates[2], time=updates[2].time + 5),
                "out_of_order": updates[5]}  # fmt: skip
    for code, update in refusals.items():
        with pytest.raises(StoreError) as caught:
            disk.put_feed_update(update)
        assert caught.value.code == code
    disk.close()
    reopened = ChunkStore(tmp_path)
    assert reopened.feed_head(FEED) == updates[3] and reopened.feed_heads() == {FEED: 3}
    reopened.put_feed_update(updates[4])
    acl = new_acl(OWNER, "owner", "feed", b"plant-7/level-sensor-1", SECRET, {})
    assert linked_updates(reopened.feed_updates(FEED), acl, -1) == updates[:5]
    assert [u.sequence for u in linked_updates(reopened.feed_updates(FEED, after=1, limit=2), acl, 1)] == [2, 3]
    in_range = reopened.feed_updates(FEED, since=updates[2].first, until=updates[3].first)
    assert [u.sequence for u in linked_updates(in_range, acl, None)] == [2, 3]
    reopened.close()


def test_a_page_of_updates_must_be_the_owners_in_order_and_linked():
    updates = [u for u, _ in chain(4)]
    acl = new_acl(OWNER, "owner", "feed", b"plant-7/level-sensor-1", SECRET, {})
    raws = [u.encoded() for u in updates]
    assert linked_updates(raws, acl, -1) == updates
    stranger = [u.encoded() for u, _ in chain(2, SigningKey.generate())]
    for page, after in (([raws[0], raws[2]], -1), ([raws[1], raws[0]], None), (raws[1:], -1), (stranger, -1),
                        ("not a list", -1)):  # fmt: skip
        with pytest.raises(StoreError):
            linked_updates(page, acl, after)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1 << 62), st.floats(allow_nan=False)), min_size=1, max_size=200))
def test_any_samples_round_trip_bit_for_bit(samples):
    segment = seal_segment(SECRET, FEED, 3, samples)
    update = FeedUpdate(FEED, 3, T0, b"\x01" * 32, chunk_hash(segment), len(samples), 0, 0, bytes(32))
    assert open_segment(SECRET, update, segment) == samples


@pytest.mark.parametrize(("samples", "after", "complaint"), [
    ([(T0, 1.0), (T0 + 1, float("nan"))], -1, "sample 2 .* has the value nan, not a finite number"),
    ([(T0, float("inf"))], -1, "sample 1 .* has the value inf"),
    ([(T0, 1.0), (T0, 2.0)], -1, "sample 2 has the time .* not after"),
    ([(T0, 1.0), (T0 - 1, 2.0)], -1, "sample 2 has the time"),
    ([(T0, 1.0)], T0, "sample 1 has the time .* not after"),
])  # fmt: skip
def test_a_feed_takes_only_finite_values_at_strictly_increasing_times(samples, after, complaint):
    assert re.search(complaint, sample_problem(samples, after) or "")
    assert sample_problem([(T0, 1.0), (T0 + 1, -0.0), (T0 + 2, 1e308)], T0 - 1) is None


def test_a_device_leaves_out_what_a_feed_cannot_take_and_counts_it():
    readings = [(T0 - 5, 1.0), (T0 + 1, 2.0), (T0 + 1, 2.5), (T0 + 2, float("nan")), (T0 + 3, 3.0)]
    assert appendable(readings, T0) == ([(T0 + 1, 2.0), (T0 + 3, 3.0)], 3), "a replayed reading, a repeat, a NaN"


def test_json_output_is_strict_even_for_values_an_older_feed_holds(capsys):
    from twinledger.cli.common import print_json
    from twinledger.cli.feeds import sparkline

    print_json({"samples": [[T0, float("nan")], [T0 + 1, float("inf")], [T0 + 2, 1.5]]})
    assert json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(name)) == {
        "samples": [[T0, None], [T0 + 1, None], [T0 + 2, 1.5]]}  # fmt: skip
    assert sparkline([float("nan"), 1.0, 2.0, float("inf")]) and sparkline([float("nan")]) == ""


def test_a_historian_export_reads_with_its_header_and_byte_order_mark():
    """Spreadsheets write a byte-order mark first; historians name their columns."""
    import io

    from twinledger.services.feed_files import read_csv

    for text in ("\ufefftime,value\n1,2\n", "timestamp,level\n1,2\n", "1,2\n"):
        assert list(read_csv(io.StringIO(text))) == [(1_000_000, 2.0)], text
