"""Words for counts, so that no output says "1 bottles"."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 sample``, ``2,000 samples`` (``nouns`` for an irregular plural)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
