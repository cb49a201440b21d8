"""The one bound on every time the twin reads, from sidecar lines and from image headers.

A modality's clock may run a little ahead of the node's; an event hours or years ahead would sit in
the future of every rule, page and rollup (it once broke the health rules for good), and one before
digital radiography existed is a reset clock. Readers call :meth:`TimeBound.problem` and quarantine
(sidecar) or fall back to the receipt time (headers) when it names one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: Default of ``twin.max_clock_skew_s``: how far ahead of the node's clock a device's time may be.
DEFAULT_MAX_SKEW_S = 300.0
#: Earlier than this a time comes from a reset clock (CMOS default), not from a radiograph.
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TimeBound:
    """Times from ``earliest`` to ``now`` + ``max_skew_s`` are usable; ``now`` is the node's clock."""

    now: datetime
    max_skew_s: float = DEFAULT_MAX_SKEW_S
    earliest: datetime = EARLIEST

    @property
    def latest(self) -> datetime:
        try:
            return self.now + timedelta(seconds=self.max_skew_s)
        except OverflowError:  # a skew that reaches past year 9999: no upper bound
            return datetime.max.replace(tzinfo=UTC)

    def problem(self, at: datetime) -> str | None:
        """Why ``at`` (aware) cannot be used, in words without the line's content; None when it can."""
        if at > self.latest:
            ahead = (at - self.now).total_seconds()
            return (
                f"{_ago(ahead)} ahead of the node's clock (more than twin.max_clock_skew_s "
                f"{self.max_skew_s:g} s)"
            )
        if at < self.earliest:
            return f"before {self.earliest.date().isoformat()} (a reset clock?)"
        return None


def _ago(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s"
