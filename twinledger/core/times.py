"""Times as people write and read them: seconds since the epoch or ISO 8601 in, ISO 8601
(UTC) out. Feeds count microseconds, the chain milliseconds."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from twinledger.errors import TwinledgerError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
LAST_SECOND = 1 << 33
"""Times past 2242 are refused: no plant records them, and they are typing mistakes."""


def parse_time(text: str) -> int:
    """Microseconds since the epoch from seconds since the epoch or an ISO 8601 time
    (UTC if it names no zone)."""
    try:
        seconds = float(text)
        microseconds = round(seconds * 1_000_000) if math.isfinite(seconds) else -1
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise TwinledgerError(f"{text[:40]!r} is neither seconds since the epoch nor an ISO 8601 time",
                                  code="bad_time") from None  # fmt: skip
        # exact to the microsecond, as an exported feed wrote it
        microseconds = ((moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - EPOCH) // MICROSECOND
    if not 0 <= microseconds < LAST_SECOND * 1_000_000:
        raise TwinledgerError(f"{text[:40]!r} is not a time between 1970 and 2242", code="bad_time")
    return microseconds


def iso_us(microseconds: int, timespec: str = "microseconds") -> str:
    """A feed time as ISO 8601 in UTC."""
    return (EPOCH + microseconds * MICROSECOND).isoformat(timespec=timespec)


def iso_ms(milliseconds: int) -> str:
    """A chain time (block, transaction, grant expiry) as ISO 8601 in UTC, to the second
    (a time no calendar holds, as a grant's end may be, as its number)."""
    try:
        return (EPOCH + milliseconds * 1000 * MICROSECOND).isoformat(timespec="seconds")
    except OverflowError:
        return f"{milliseconds} ms"
