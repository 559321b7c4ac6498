"""What an upstream's rate-limit headers say is left before its reset, and how fast to spend it.

A report ("`remaining` left, resets in `reset_after` s") is read as: at most `remaining` more
units may go before the reset. Units we granted after the request whose response carried the
report (`in_flight`) are taken off at once, and every unit granted afterwards is taken off too, so
concurrent callers never all pass on the same count. What is left is spent freely while it is
comfortably above zero; within the last `RESERVE_SHARE` of the limit each unit waits its share
of the time to the reset, so that the remainder lasts until then; with nothing left, everything
waits for the reset. After the reset the window says nothing until the next report.

Reports carry a ticket: how many units had been granted when their request was. A report older
than the one in force (its request was granted before that one's, its response came later) knows
no more than it and is ignored, so a late response never loosens the limit.
"""
from __future__ import annotations

from typing import Iterable

# Why keep a reserve rather than spend every unit at once and then wait for the reset: the count
# is a snapshot, and whatever else shares the key (another instance, a script) keeps spending.
# Near zero, an optimistic count means 429s, each costing a retry and a pause for everyone; paced,
# each response's fresh count corrects ours before the next of the last units goes. Pacing also
# leaves a few units for users who ask late in the window, instead of all of them being refused
# until the reset. A tenth of the limit (at least one unit: 5 of 50 requests a minute) covers the
# requests a busy bot has in flight at once, and lets the other nine tenths go at full speed.
RESERVE_SHARE = 0.1


class UpstreamWindow:
    """The units an upstream allows until its reset, as its latest report (less what we sent since) says."""

    def __init__(self) -> None:
        self.reset_at = float("-inf")
        self.left = float("inf")
        self.reserve = 1.0
        self._ticket = float("-inf")

    def report(
        self, remaining: float, reset_after: float, now: float, *, ticket: float, in_flight: float, limit: float | None
    ) -> bool:
        """Put the report in force unless a newer one already is; True when it was."""
        if now < self.reset_at and ticket < self._ticket:
            return False
        share = RESERVE_SHARE * (limit if limit is not None else remaining)
        # Without the limit, the largest count seen in this window stands in for it.
        carried = self.reserve if limit is None and now < self.reset_at else 1.0
        self.reserve = max(1.0, share, carried)
        self.reset_at = now + max(0.0, reset_after)
        self.left = remaining - in_flight
        self._ticket = ticket
        return True

    def take(self, cost: float, now: float) -> None:
        if now < self.reset_at:
            self.left -= cost

    def binds(self, now: float) -> bool:
        """Whether one more unit would be held back (paced, or kept until the reset)."""
        return now < self.reset_at and self.left - 1 < self.reserve

    def ready_at(self, cost: float, now: float, last_grant: float, ahead: Iterable[float] = ()) -> float:
        """The earliest moment `cost` units may go, once the units queued `ahead` of them went.

        `last_grant` is when the last units went: pacing counts from there, so a late wake-up
        pushes the next grant back rather than letting it catch up.
        """
        if now >= self.reset_at:
            return now
        at, left, since = now, self.left, last_grant
        for units in (*ahead, cost):
            if at >= self.reset_at:
                break
            at = self._next(units, left, since, at)
            left, since = left - units, at
        return at

    def _next(self, cost: float, left: float, since: float, now: float) -> float:
        if cost > left:
            return self.reset_at
        if cost == 0 or left - cost >= self.reserve or since == float("-inf"):
            return now
        # Spread what is left evenly between the last grant and the reset: with `left` units of
        # 1, one every (reset - since) / (left + 1), the last one going one interval before it.
        return max(now, since + (self.reset_at - since) * cost / (left + cost))
