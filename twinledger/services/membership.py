"""Consortium membership: proposals to add or remove organisations, and approvals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twinledger.contracts import calls
from twinledger.services.session import Session


@dataclass(frozen=True)
class Proposed:
    applied: bool
    proposal: str | None
    tx: str


async def propose(session: Session, change: dict[str, Any]) -> Proposed:
    """Propose a membership change (applies at once when an administrator signs it)."""
    outcome = await session.transact(calls.propose(change))
    events = {e["type"]: e["data"] for e in outcome.events}
    return Proposed("MembershipChanged" in events, events.get("MembershipProposed", {}).get("proposal"),
                    outcome.tx_hash.hex())  # fmt: skip


def add_organisation(name: str, operators: list[bytes], encryption_key: bytes) -> dict[str, Any]:
    return {"op": "add_organisation", "name": name, "operators": operators, "encryption_key": encryption_key}


def remove_organisation(name: str) -> dict[str, Any]:
    return {"op": "remove_organisation", "name": name}


async def approve(session: Session, proposal: bytes) -> Proposed:
    outcome = await session.transact(calls.approve(proposal))
    return Proposed(any(e["type"] == "MembershipChanged" for e in outcome.events), proposal.hex(),
                    outcome.tx_hash.hex())  # fmt: skip
