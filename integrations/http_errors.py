"""What an upstream's HTTP answer says about waiting, budgets and failure.

Shared by every adapter: how long the upstream asked us to wait (`retry-after-ms`, `retry-after`
as seconds or an HTTP date, or a budget's reset as seconds, a Go-style duration or a Unix time),
how much of its rate budget is left (`x-ratelimit-*` with Go-style durations,
`anthropic-ratelimit-*` with RFC 3339 reset times), and which project error a status code means
when the body says nothing more specific.
"""
from __future__ import annotations

import email.utils
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from integrations.errors import (
    AuthFailed,
    BadRequest,
    QuotaExhausted,
    RateLimited,
    Unavailable,
    UpstreamError,
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

# Statuses that mean "this attempt did not get through" rather than "this request is wrong".
_TRANSIENT_4XX = {408, 409, 425}
# A reset this large is a Unix time, not a number of seconds.
_EPOCH_THRESHOLD = 1_000_000_000


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class LimitHint:
    """An upstream's view of our rate budget, as its last response reported it."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_s: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_s: float | None = None

    def exhausted_reset_s(self) -> float | None:
        """Seconds until an exhausted budget refills (the longest if both are); else the longest reset."""
        budgets = [
            (self.requests_remaining, self.requests_reset_s),
            (self.tokens_remaining, self.tokens_reset_s),
        ]
        at_zero = [reset for remaining, reset in budgets if remaining == 0 and reset is not None]
        known = at_zero or [reset for _, reset in budgets if reset is not None]
        return max(known) if known else None


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration as OpenAI sends it: `6m0s`, `1.5s`, `20ms`, `1h2m3s`, `0s`."""
    compact = text.strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not compact or position != len(compact):
        raise ValueError(f"not a duration: {text!r}")
    return total


def retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """How long the upstream asked us to wait: `retry-after-ms`, else `retry-after` (seconds or HTTP date)."""
    fields = _lower(headers)
    milliseconds = _number(fields.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    value = fields.get("retry-after")
    seconds = _number(value)
    if seconds is not None or value is None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


def openai_limit_hint(headers: Mapping[str, str]) -> LimitHint | None:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`; None when the response had none."""
    fields = _lower(headers)
    if not any(name.startswith("x-ratelimit-") for name in fields):
        return None
    return LimitHint(
        requests_limit=_integer(fields.get("x-ratelimit-limit-requests")),
        requests_remaining=_integer(fields.get("x-ratelimit-remaining-requests")),
        requests_reset_s=_duration(fields.get("x-ratelimit-reset-requests")),
        tokens_limit=_integer(fields.get("x-ratelimit-limit-tokens")),
        tokens_remaining=_integer(fields.get("x-ratelimit-remaining-tokens")),
        tokens_reset_s=_duration(fields.get("x-ratelimit-reset-tokens")),
    )


def anthropic_limit_hint(headers: Mapping[str, str], now: datetime) -> LimitHint | None:
    """`anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, resets as RFC 3339 times.

    Without the combined `tokens` budget, the tighter of `input-tokens` and `output-tokens` stands in.
    """
    fields = _lower(headers)
    if not any(name.startswith("anthropic-ratelimit-") for name in fields):
        return None

    def budget(kind: str) -> tuple[int | None, int | None, float | None]:
        prefix = f"anthropic-ratelimit-{kind}-"
        return (
            _integer(fields.get(prefix + "limit")),
            _integer(fields.get(prefix + "remaining")),
            _seconds_until(fields.get(prefix + "reset"), now),
        )

    requests = budget("requests")
    tokens = budget("tokens")
    if tokens == (None, None, None):
        candidates = [b for b in (budget("input-tokens"), budget("output-tokens")) if b[1] is not None]
        tokens = min(candidates, key=lambda b: b[1] or 0) if candidates else tokens
    return LimitHint(*requests, *tokens)


def reset_seconds(value: str | None, now: datetime) -> float | None:
    """A budget's reset (`x-ratelimit-reset`) as seconds from now: seconds, a Go-style duration, or a Unix time."""
    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return _duration(text)
    if not math.isfinite(number) or number < 0:
        return None
    if number >= _EPOCH_THRESHOLD:
        return max(0.0, number - now.timestamp())
    return number


def rate_limit_wait(
    headers: Mapping[str, str], now: datetime, hint: LimitHint | None, *, reset_header: str | None = None
) -> float | None:
    """The wait to report with a 429: what the upstream asked for, else when the exhausted budget refills.

    `reset_header` names a header holding the reset of the whole budget (Perplexity's
    `x-ratelimit-reset`), read after Retry-After and before `hint`.
    """
    asked = retry_after_seconds(headers, now)
    if asked is None and reset_header is not None:
        asked = reset_seconds(_lower(headers).get(reset_header.lower()), now)
    if asked is not None:
        return asked
    return hint.exhausted_reset_s() if hint is not None else None


def error_class_for_status(status: int) -> type[UpstreamError]:
    """The project error a status means when the body gives nothing more specific."""
    if status == 429:
        return RateLimited
    if status in (401, 403):
        return AuthFailed
    if status == 402:
        return QuotaExhausted
    if status in _TRANSIENT_4XX or status >= 500:
        return Unavailable
    if 400 <= status < 500:
        return BadRequest
    # An error signalled with a success or redirect status (say, inside a 200 stream): the upstream broke.
    return Unavailable


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None


def _integer(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _seconds_until(value: str | None, now: datetime) -> float | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())
