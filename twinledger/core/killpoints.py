"""Kill points: the moments of commit, block sync, reorganisation, journaling and voting
where a process killed with SIGKILL could leave its files half way. A test names one in
the environment of a node process, ``TWINLEDGER_KILL_AT=<point>[:<n>]``, and the node
kills itself (SIGKILL, no cleanup) the n-th time it reaches that point (the first by
default); the test then restarts it and checks that nothing acknowledged was lost.
Unset, as in every real deployment, a kill point costs one comparison.

Like FoundationDB's and TiKV's fail points, they let a test reach each moment on purpose
instead of hoping that a kill at a random time lands there."""

from __future__ import annotations

import os
import signal
import threading

KILL_POINTS = {
    "commit.decided": "a block this validator decided is about to be written; its vote guard holds the precommit",
    "commit.before": "a decided or synced block is about to be written",
    "commit.written": "the block's rows are written, the store transaction not yet committed",
    "commit.durable": "the block is durable; the chain's head in memory and the mempool are not updated",
    "sync.block-applied": "a block that block sync brought is applied, the rest of its batch not yet",
    "reorganisation.rewound": "the canonical chain rewound to the common ancestor, no block of the new branch applied",
    "reorganisation.part-way": "one block of the new branch applied",
    "reorganisation.switched": "the new branch applied; what the old one held not yet pending again",
    "journal.written": "submitted transactions are durable, the client not yet answered",
    "vote.guarded": "the vote guard has recorded a vote that is not yet signed or sent",
}
ENVIRONMENT = "TWINLEDGER_KILL_AT"


def _armed() -> tuple[str, int] | None:
    value = os.environ.get(ENVIRONMENT)
    if not value:
        return None
    name, _, count = value.partition(":")
    if name not in KILL_POINTS or (count and not (count.isascii() and count.isdigit() and int(count) > 0)):
        raise SystemExit(f"{ENVIRONMENT}={value!r}: expected one of {', '.join(KILL_POINTS)}, optionally ':<n>' with n ≥ 1")
    return name, int(count or 1)


_ARMED = _armed()
_reached = 0
_lock = threading.Lock()


def kill_point(name: str) -> None:
    """Die here with SIGKILL if the environment armed this point and this is its n-th time."""
    global _reached
    assert name in KILL_POINTS, name
    if _ARMED is None or _ARMED[0] != name:
        return
    with _lock:
        _reached += 1
        if _reached == _ARMED[1]:
            os.kill(os.getpid(), signal.SIGKILL)
