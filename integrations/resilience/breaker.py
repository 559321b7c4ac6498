"""A circuit breaker for one upstream: stop calling it while it is failing, so fallback starts at once.

closed    -> open       after `failure_threshold` failures within the last `window` seconds
open      -> half_open  after `cooldown` seconds; calls meanwhile fail fast with `CircuitOpen`
half_open -> closed     when the single probe call succeeds (other callers fail fast meanwhile)
half_open -> open       when the probe fails, with a fresh cooldown

Only errors that say the upstream is unwell count (unavailable, rate limited, malformed answers,
auth and quota trouble). A bad request or a prompt that is too long is the caller's fault: the
upstream answered sensibly, so for the breaker that call is a success. A call that never reached
the upstream (another breaker open, a limiter of ours refusing to wait) counts for nothing.
"""
from __future__ import annotations

import logging
from collections import deque
from datetime import datetime
from types import TracebackType
from typing import Awaitable, Callable, TypeVar

from integrations.clock import Clock
from integrations.errors import (
    AuthFailed,
    CircuitOpen,
    MalformedResponse,
    QuotaExhausted,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from integrations.resilience.ratelimit import WaitTooLong
from integrations.resilience.snapshots import BreakerSnapshot

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

COUNTED_FAILURES: tuple[type[UpstreamError], ...] = (
    Unavailable,
    RateLimited,
    MalformedResponse,
    AuthFailed,
    QuotaExhausted,
)


# Refused before the upstream was asked: they say nothing about it.
NOT_ASKED: tuple[type[UpstreamError], ...] = (CircuitOpen, WaitTooLong)


def counts_as_failure(error: BaseException) -> bool:
    return isinstance(error, COUNTED_FAILURES) and not isinstance(error, NOT_ASKED)


def _upstream_answered(error: BaseException) -> bool:
    """The upstream refused the request itself (bad request, too long): it is healthy."""
    return isinstance(error, UpstreamError) and not isinstance(error, NOT_ASKED) and not counts_as_failure(error)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        clock: Clock,
        failure_threshold: int = 5,
        window: float = 60.0,
        cooldown: float = 30.0,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.window = window
        self.cooldown = cooldown
        self._clock = clock
        self._state = CLOSED
        self._failures: deque[float] = deque()
        self._retry_at = 0.0
        self._opened_at: datetime | None = None
        self._probe_in_flight = False
        self._last_error: str | None = None
        self._totals = {"successes": 0, "failures": 0, "rejected": 0, "opened": 0}

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock.monotonic() >= self._retry_at:
            self._state = HALF_OPEN
            self._probe_in_flight = False
            logger.info("%s: cooldown over, letting one probe through", self.name)
        return self._state

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` if the circuit lets it through, and record how it went."""
        probe = self._admit()
        try:
            result = await fn()
        except BaseException as error:
            self._record_outcome(probe, error)
            raise
        self._record_outcome(probe, None)
        return result

    def guard(self) -> "_Guard":
        """`async with breaker.guard():` admits the body (or raises CircuitOpen) and records its outcome."""
        return _Guard(self)

    def record_success(self) -> None:
        self._totals["successes"] += 1
        if self.state == HALF_OPEN:
            self._close()

    def record_failure(self, error: BaseException) -> None:
        """Count `error` if it says the upstream is unwell; other errors are ignored."""
        if not counts_as_failure(error):
            return
        now = self._clock.monotonic()
        self._totals["failures"] += 1
        self._last_error = str(error)
        state = self.state
        if state == HALF_OPEN:
            self._open(now, self.cooldown)
        elif state == CLOSED:
            self._failures.append(now)
            self._forget_old_failures(now)
            if len(self._failures) >= self.failure_threshold:
                self._open(now, self.cooldown)
        # Already open: a late failure of a call admitted earlier does not extend the cooldown.

    def force_open(self, reason: str, *, for_seconds: float | None = None) -> None:
        """Open now (e.g. the credential was refused for good); half-opens after the cooldown as usual."""
        self._last_error = reason
        self._open(self._clock.monotonic(), self.cooldown if for_seconds is None else for_seconds)

    def reset(self) -> None:
        """Close the circuit and forget past failures (an operator's command)."""
        logger.info("%s: reset by operator", self.name)
        self._close()

    def snapshot(self) -> BreakerSnapshot:
        now = self._clock.monotonic()
        state = self.state
        self._forget_old_failures(now)
        return {
            "name": self.name,
            "state": state,
            "failures_in_window": len(self._failures),
            "failure_threshold": self.failure_threshold,
            "window": self.window,
            "cooldown": self.cooldown,
            "last_error": self._last_error,
            "opened_at": self._opened_at.isoformat() if self._opened_at and state != CLOSED else None,
            "retry_in": round(max(0.0, self._retry_at - now), 3) if state == OPEN else 0.0,
            "probe_in_flight": state == HALF_OPEN and self._probe_in_flight,
            "totals": dict(self._totals),
        }

    def _admit(self) -> bool:
        """Let a call through or raise CircuitOpen; True when the call is the half-open probe."""
        state = self.state
        if state == CLOSED:
            return False
        if state == HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        self._totals["rejected"] += 1
        if state == OPEN:
            raise CircuitOpen(
                "circuit open",
                upstream=self.name,
                retry_after=max(0.0, self._retry_at - self._clock.monotonic()),
            )
        raise CircuitOpen("circuit half-open, probe in flight", upstream=self.name)

    def _record_outcome(self, probe: bool, error: BaseException | None) -> None:
        if probe:
            self._probe_in_flight = False
        if error is None or _upstream_answered(error):
            self.record_success()
        elif counts_as_failure(error):
            self.record_failure(error)
        # Anything else (cancellation, a bug, a call that never reached the upstream) says nothing
        # about it; a released probe slot lets the next caller probe instead.

    def _open(self, now: float, cooldown: float) -> None:
        if self._state != OPEN:
            self._totals["opened"] += 1
            logger.warning("%s: circuit opened for %.0f s (%s)", self.name, cooldown, self._last_error)
        self._state = OPEN
        self._retry_at = now + cooldown
        self._opened_at = self._clock.now()
        self._probe_in_flight = False

    def _close(self) -> None:
        if self._state != CLOSED:
            logger.info("%s: circuit closed", self.name)
        self._state = CLOSED
        self._failures.clear()
        self._probe_in_flight = False
        self._opened_at = None

    def _forget_old_failures(self, now: float) -> None:
        while self._failures and self._failures[0] <= now - self.window:
            self._failures.popleft()


class _Guard:
    __slots__ = ("_breaker", "_probe")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._probe = False

    async def __aenter__(self) -> None:
        self._probe = self._breaker._admit()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._breaker._record_outcome(self._probe, exc)
        return False
