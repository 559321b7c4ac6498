"""The few error types every policy decides on.

Adapters translate SDK and HTTP failures into these; retries, breakers and fallback never look
at SDK classes. Messages must never contain secrets: adapters build them from status codes and
the upstream's error type/message, never from request headers.
"""
from __future__ import annotations

from typing import TypedDict


class Where(TypedDict, total=False):
    """Where a failed call went, as every `UpstreamError` takes it: `SomeError(message, **where)`."""

    upstream: str
    status: int | None
    request_id: str | None


class UpstreamError(Exception):
    """A call to an upstream failed. `retryable` says whether the same call may succeed later."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        upstream: str = "",
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.upstream = upstream
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.upstream}: " if self.upstream else ""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{where}{self.message}{status}"


class RateLimited(UpstreamError):
    """429, FloodWait, slow mode. `retry_after` is how long the upstream asked us to wait."""

    retryable = True


class PreviewDeferred(RateLimited):
    """A preview of a streaming reply was not sent, to keep capacity for final texts.

    Only previews (text that newer text will replace) are ever deferred; the caller shows newer
    text at its next turn.
    """


class Unavailable(UpstreamError):
    """5xx, 529 overloaded, connection errors, timeouts, a stalled or cut stream."""

    retryable = True


class AuthFailed(UpstreamError):
    """401/403: the credential is wrong or lacks permission."""


class QuotaExhausted(UpstreamError):
    """Out of credit (OpenAI insufficient_quota, Anthropic billing_error): waiting will not help."""


class ContextTooLong(UpstreamError):
    """The prompt does not fit the model's context window."""


class BadRequest(UpstreamError):
    """Any other 4xx: the request itself is wrong, so repeating it cannot help."""


class ModelNotFound(BadRequest):
    """The model id is unknown or retired (a deprecation signal worth surfacing)."""


class MalformedResponse(UpstreamError):
    """The upstream answered with something that does not follow its documented format."""

    retryable = True


class CircuitOpen(UpstreamError):
    """The breaker for this upstream is open: failing fast so fallback starts at once."""
