"""Payloads larger than one transaction, staged in parts by their sender and taken whole
by one later call of the same sender that names their SHA-256 (a plant's model delta).

    staging/<sender hex>/<digest hex>            {parts, received}
    staging/<sender hex>/<digest hex>/<part>     the part's bytes
    staging/<sender hex>                         the digests the sender has staged and not taken

A sender keeps at most MAX_STAGED payloads of at most MAX_STAGED_PARTS parts: what a key
can park in the state is bounded, and taking a payload removes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.contracts.arguments import Arguments
from twinledger.contracts.membership import required_organisation
from twinledger.contracts.runtime import Call
from twinledger.core.types import MAX_TX_BYTES
from twinledger.errors import ContractError

MAX_STAGED_PARTS = 160
"""The largest delta (8 MiB) in parts of up to one transaction."""
MAX_STAGED = 4


class StagingError(ContractError):
    code = "staging"


def _key(sender: bytes, digest: bytes | None = None, part: int | None = None) -> str:
    base = f"staging/{sender.hex()}"
    if digest is None:
        return base
    return f"{base}/{digest.hex()}" if part is None else f"{base}/{digest.hex()}/{part:06d}"


def put_staged(call: Call, digest: bytes, part: int, parts: int, data: bytes) -> None:
    held = list(call.state.get(_key(call.sender)) or [])
    entry = call.state.get(_key(call.sender, digest))
    if entry is None:
        if len(held) >= MAX_STAGED:
            raise StagingError(f"this key already has {MAX_STAGED} payloads staged; use or replace them first")
        entry = {"parts": parts, "received": 0}
        call.state.set(_key(call.sender), [*held, digest])
    if entry["parts"] != parts:
        raise StagingError(f"payload {digest.hex()[:16]}… was staged in {entry['parts']} parts, not {parts}")
    if call.state.get(_key(call.sender, digest, part)) is None:
        entry = {**entry, "received": entry["received"] + 1}
    call.state.set(_key(call.sender, digest, part), data)
    call.state.set(_key(call.sender, digest), entry)


def drop_staged(call: Call, digest: bytes) -> None:
    entry = call.state.get(_key(call.sender, digest))
    if entry is None:
        raise StagingError(f"this key has no payload {digest.hex()[:16]}… staged")
    _remove(call, digest, entry["parts"])


def _remove(call: Call, digest: bytes, parts: int) -> None:
    for part in range(parts):
        call.state.set(_key(call.sender, digest, part), None)
    call.state.set(_key(call.sender, digest), None)
    call.state.set(_key(call.sender), [d for d in call.state.get(_key(call.sender)) or [] if d != digest] or None)


def take_staged(call: Call, digest: bytes) -> bytes:
    """The whole payload the sender staged under ``digest``, checked against it, and
    removed from the state."""
    entry = call.state.get(_key(call.sender, digest))
    if entry is None or entry["received"] != entry["parts"]:
        have = "nothing" if entry is None else f"{entry['received']} of {entry['parts']} parts"
        raise StagingError(f"payload {digest.hex()[:16]}… is not staged whole by this key ({have})")
    data = b"".join(call.state.get(_key(call.sender, digest, part)) for part in range(entry["parts"]))
    if hashlib.sha256(data).digest() != digest:
        raise StagingError(f"the staged parts of {digest.hex()[:16]}… do not hash to it")
    _remove(call, digest, entry["parts"])
    return data


# -- the twins contract's methods ----------------------------------------------------------------


@dataclass(frozen=True)
class StageArgs:
    digest: bytes
    part: int
    parts: int
    data: bytes


def parse_stage(args: Mapping[str, Any]) -> StageArgs:
    read = Arguments("twins.stage", args, ("digest", "part", "parts", "data"))
    parts = read.integer("parts", minimum=1, maximum=MAX_STAGED_PARTS)
    return StageArgs(read.digest("digest"), read.integer("part", minimum=0, maximum=parts - 1), parts,
                     read.blob("data", max_size=MAX_TX_BYTES))  # fmt: skip


def stage(call: Call, args: StageArgs) -> None:
    """Keep one part of a payload larger than a transaction (a plant's model delta) for
    the sender's next create or edit that names its SHA-256; members only."""
    required_organisation(call.state, call.sender, "stage a payload")
    put_staged(call, args.digest, args.part, args.parts, args.data)


@dataclass(frozen=True)
class UnstageArgs:
    digest: bytes


def parse_unstage(args: Mapping[str, Any]) -> UnstageArgs:
    return UnstageArgs(Arguments("twins.unstage", args, ("digest",)).digest("digest"))


def unstage(call: Call, args: UnstageArgs) -> None:
    """Drop a payload the sender staged and will not use (a creation that failed)."""
    drop_staged(call, args.digest)
