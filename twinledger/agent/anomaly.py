"""The anomaly check (Dietz et al. §4.3): readings held against the range the
specification expects of their signal.

One reading out of range is noise; ``RAISE_AFTER`` in a row on the same side raise an
alert, and ``CLEAR_AFTER`` in a row back in range clear it. The check is a plain state
machine over samples, so the agent, a test or a replay of a feed get the same alerts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from twinledger.aml import Signal

RAISE_AFTER = 3
CLEAR_AFTER = 3


@dataclass(frozen=True)
class Transition:
    state: str
    """'raised' or 'cleared'."""
    deviation: str
    """'below' or 'above' when raised; '' when cleared."""
    since: int
    """The time of the first reading of the run that caused it (microseconds)."""


class AnomalyCheck:
    def __init__(self, signal: Signal, open_: bool = False) -> None:
        self.signal = signal
        self.open = open_
        self.deviation = ""
        self.streak = 0
        self.since = 0

    def observe(self, samples: Iterable[tuple[int, float]]) -> list[Transition]:
        """The alerts these readings raise or clear, in order."""
        found = []
        for moment, value in samples:
            deviation = self.signal.deviation(value)
            changes = deviation is None if self.open else deviation is not None
            if not changes:
                self.streak = 0
                continue
            if self.streak == 0 or (not self.open and deviation != self.deviation):
                self.streak, self.since, self.deviation = 0, moment, deviation or ""
            self.streak += 1
            if self.streak >= (CLEAR_AFTER if self.open else RAISE_AFTER):
                self.open = not self.open
                found.append(Transition("raised" if self.open else "cleared", self.deviation if self.open else "",
                                        self.since))  # fmt: skip
                self.streak = 0
        return found
