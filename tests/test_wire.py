"""The peer-to-peer frame format: round trips, limits, and fuzzed garbage."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinledger.consensus import tendermint as tm
from twinledger.consensus.messages import parse_proposed_block, parse_signed_proposal, parse_vote
from twinledger.core.encoding import encode
from twinledger.errors import DecodeError
from twinledger.net.wire import MAX_FRAME, PROTOCOL_VERSION, encode_frame, parse_frame, read_frame


def test_frame_round_trip():
    frame = encode_frame("status", {"height": 7})
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    parsed = parse_frame(frame[4:])
    assert (parsed.type, parsed.body, parsed.raw) == ("status", {"height": 7}, frame[4:])


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (encode({"v": PROTOCOL_VERSION + 1, "type": "status", "body": {}}), "protocol version"),
        (encode({"v": PROTOCOL_VERSION, "type": "launch_missiles", "body": {}}), "unknown message type"),
        (encode({"v": PROTOCOL_VERSION, "type": "status", "body": []}), "body must be a map"),
        (encode({"v": PROTOCOL_VERSION, "type": "status"}), "expected a map of v, type and body"),
        (b"\xc1", "not valid canonical encoding"),
    ],
)
def test_bad_frames_name_the_problem(payload, complaint):
    with pytest.raises(DecodeError, match=complaint):
        parse_frame(payload)


def test_oversized_frame_is_refused_before_reading_it():
    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data((MAX_FRAME + 1).to_bytes(4, "big"))
        await read_frame(reader)

    with pytest.raises(DecodeError, match="exceeds the limit"):
        asyncio.run(read())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_frames_fail_with_decode_errors_only(data):
    with contextlib.suppress(DecodeError):
        parse_frame(data)


values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
                      | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["kind", "height", "round", "block_hash", "validator", "signature", "header",
                                        "transactions", "valid_round", "proposer", "x"]), values))  # fmt: skip
def test_fuzzed_consensus_messages_fail_with_decode_errors_only(body):
    some_proposal = tm.Proposal(1, 0, bytes(32), -1, bytes(32), bytes(64))
    for parse in (parse_vote, parse_signed_proposal, lambda b: parse_proposed_block(b, some_proposal)):
        with contextlib.suppress(DecodeError):
            parse(body)
