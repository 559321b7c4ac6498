"""Which project error a Perplexity error object (an `error` event, a failed run's `error`) stands for."""
from __future__ import annotations

from typing import Any, Mapping, Unpack

from integrations.errors import AuthFailed, BadRequest, ModelNotFound, RateLimited, Unavailable, UpstreamError, Where
from integrations.http_errors import error_class_for_status
from integrations.provider import describe_error


class SearchRunFailed(Unavailable):
    """Perplexity took the request, but the run ended `failed` or `cancelled` instead of answering."""

    def __init__(self, message: str, *, run_status: str, **where: Unpack[Where]) -> None:
        super().__init__(message, **where)
        self.run_status = run_status


def error_from_event(
    body: Mapping[str, Any], *, upstream: str, request_id: str | None = None, redact: str = ""
) -> UpstreamError:
    """The project error an `error` event (or a failed run's `error`) stands for."""
    inner = body.get("error")
    error = inner if isinstance(inner, Mapping) else body
    code = error.get("code")
    kind = str(error.get("type") or "")
    status = _status_code(code)
    where: Where = {"upstream": upstream, "status": status, "request_id": request_id}
    message = describe(error, redact)
    if status is not None:
        return error_class_for_status(status)(message, **where)
    words = f"{code or ''} {kind}".lower()
    if "rate_limit" in words:
        return RateLimited(message, **where)
    if "invalid_model" in words:
        return ModelNotFound(message, **where)
    if "invalid_request" in words or "payload_too_large" in words:
        return BadRequest(message, **where)
    if "forbidden" in words or "unauthorized" in words:
        return AuthFailed(f"credential refused ({kind or code})", **where)
    return Unavailable(message, **where)


def describe(error: Mapping[str, Any], redact: str = "") -> str:
    """`type: message` of an error object, without the key `redact`."""
    message = error.get("message")
    return describe_error(
        str(error.get("type") or error.get("code") or "error"), message if isinstance(message, str) else "", redact
    )


def _status_code(code: Any) -> int | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        number = code
    elif isinstance(code, str) and code.isdigit():
        number = int(code)
    else:
        return None
    return number if 400 <= number <= 599 else None
