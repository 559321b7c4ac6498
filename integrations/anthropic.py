"""Anthropic's Messages API as a `ChatProvider`.

A thin adapter: it shapes the conversation the way the API wants it (system as a parameter,
alternating turns, ending with the user), streams text deltas, and translates every SDK and
transport failure, including an `error` event inside the stream, into the project's error types.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

import anthropic
import anyio
import httpx2
from anthropic.types import RawMessageStreamEvent

from integrations.errors import (
    AuthFailed,
    BadRequest,
    ContextTooLong,
    MalformedResponse,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from integrations.http_errors import LimitHint, anthropic_limit_hint, error_class_for_status, rate_limit_wait, utc_now
from integrations.llm import ChatMessage, ChatRequest, StreamResult

logger = logging.getLogger(__name__)

_CONTEXT_PHRASES = ("prompt is too long", "context window", "too many tokens")
_MESSAGE_LIMIT = 300
# The SDK reads the body of a stream without wrapping transport failures in its own types.
_TRANSPORT_ERRORS = (httpx2.TransportError, anyio.EndOfStream, anyio.BrokenResourceError, OSError)


class AnthropicChat:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        name: str = "anthropic",
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        on_limits: Callable[[LimitHint], None] | None = None,
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.name = name
        self._api_key = api_key
        self._on_limits = on_limits
        # Sees every response's headers (Deprecation / Sunset signals).
        self._on_headers = on_headers
        self._now = now
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=anthropic.Timeout(read_timeout, connect=connect_timeout),
        )

    def __repr__(self) -> str:
        return f"AnthropicChat(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    def set_api_key(self, api_key: str) -> None:
        """Use a rotated key from the next request on; the SDK reads it for every request."""
        self._api_key = api_key
        self._client.api_key = api_key

    async def aclose(self) -> None:
        await self._client.close()

    async def list_models(self) -> list[str]:
        try:
            return [model.id async for model in self._client.models.list()]
        except anthropic.AnthropicError as err:
            raise self._translate(err, request_id=None) from _cause(err)
        except _TRANSPORT_ERRORS as err:
            raise Unavailable(f"connection failed ({type(err).__name__})", upstream=self.name) from err
        except ValueError as err:
            raise MalformedResponse("the model list is not valid JSON", upstream=self.name) from err

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        messages = alternating_turns(request.messages)
        if not messages:
            raise BadRequest("the conversation has no user message to answer", upstream=self.name)
        options: dict[str, Any] = {"system": request.system} if request.system else {}
        try:
            events = await self._client.messages.create(
                model=request.model, max_tokens=request.max_tokens, messages=messages, stream=True, **options
            )
        except anthropic.AnthropicError as err:
            raise self._translate(err, request_id=None) from _cause(err)
        result.request_id = events.response.headers.get("request-id")
        self._report_limits(events.response.headers)
        finished = False
        try:
            async for event in events:
                if event.type == "message_stop":
                    finished = True
                text = self._take(event, result)
                if text:
                    yield text
        except anthropic.AnthropicError as err:
            raise self._translate(err, request_id=result.request_id) from _cause(err)
        except _TRANSPORT_ERRORS as err:
            raise Unavailable(
                f"the stream broke off ({type(err).__name__})", upstream=self.name, request_id=result.request_id
            ) from err
        except ValueError as err:
            # json.JSONDecodeError and UnicodeDecodeError: an event that is not the documented JSON.
            raise MalformedResponse(
                f"unreadable stream event ({type(err).__name__})", upstream=self.name, request_id=result.request_id
            ) from err
        finally:
            await events.close()
        if not finished:
            raise Unavailable(
                "the stream ended before message_stop", upstream=self.name, request_id=result.request_id
            )

    def _take(self, event: RawMessageStreamEvent, result: StreamResult) -> str:
        try:
            return _take(event, result)
        except (AttributeError, TypeError) as err:
            # The SDK builds events leniently, so a documented field that is missing shows up here.
            raise MalformedResponse(
                f"{event.type} event lacks a documented field", upstream=self.name, request_id=result.request_id
            ) from err

    def _report_limits(self, headers: Mapping[str, str]) -> None:
        if self._on_headers is not None:
            try:
                self._on_headers(headers)
            except Exception:  # an observer must never break a reply
                logger.exception("%s: on_headers callback failed", self.name)
        hint = anthropic_limit_hint(headers, self._now())
        if hint is None or self._on_limits is None:
            return
        try:
            self._on_limits(hint)
        except Exception:
            # A broken observer must not fail the call it was only watching.
            logger.exception("%s: on_limits callback failed", self.name)

    def _translate(self, err: anthropic.AnthropicError, *, request_id: str | None) -> UpstreamError:
        where = {"upstream": self.name, "request_id": request_id}
        if isinstance(err, anthropic.APITimeoutError):
            return Unavailable("timed out", **where)
        if isinstance(err, anthropic.APIConnectionError):
            return Unavailable("connection failed", **where)
        if isinstance(err, anthropic.APIResponseValidationError):
            return MalformedResponse("response does not follow the documented schema", **where)
        if isinstance(err, anthropic.APIStatusError):
            return self._from_status(err, request_id=request_id)
        return Unavailable(f"client error ({type(err).__name__})", **where)

    def _from_status(self, err: anthropic.APIStatusError, *, request_id: str | None) -> UpstreamError:
        headers = err.response.headers
        # An `error` event arrives inside a 200 stream: only its type says what went wrong.
        status = err.status_code if err.status_code >= 300 else None
        if status is not None:
            self._report_limits(headers)
        where: dict[str, Any] = {
            "upstream": self.name,
            "status": status,
            "request_id": err.request_id or _body_request_id(err) or request_id,
        }
        kind = err.type or ""
        if kind in ("authentication_error", "permission_error") or status in (401, 403):
            return AuthFailed(f"credential refused ({kind or 'no detail'})", **where)
        if kind == "rate_limit_error" or status == 429:
            wait = None
            if status is not None:
                now = self._now()
                wait = rate_limit_wait(headers, now, anthropic_limit_hint(headers, now))
            return RateLimited(self._describe(err), **where, retry_after=wait)
        if kind == "billing_error":
            return QuotaExhausted(self._describe(err), **where)
        if kind in ("overloaded_error", "api_error", "timeout_error"):
            return Unavailable(self._describe(err), **where)
        if kind == "not_found_error":
            return ModelNotFound(self._describe(err), **where)
        if kind in ("invalid_request_error", "request_too_large") or (status and 400 <= status < 500):
            if _mentions_context(err):
                return ContextTooLong(self._describe(err), **where)
        if kind == "invalid_request_error":
            return BadRequest(self._describe(err), **where)
        return error_class_for_status(status or 200)(self._describe(err), **where)

    def _describe(self, err: anthropic.APIStatusError) -> str:
        label = err.type or "error"
        message = err.api_message or ""
        if self._api_key:
            message = message.replace(self._api_key, "[redacted]")
        return f"{label}: {message[:_MESSAGE_LIMIT]}" if message else label


def alternating_turns(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """The conversation as the API wants it: no blank turns, same-role neighbours merged, user last.

    A trailing assistant turn is dropped: newer models refuse prefill, so a cut-off answer is
    continued by the caller with a user message that quotes it.
    """
    turns: list[dict[str, str]] = []
    for message in messages:
        if not message.content.strip():
            continue
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": message.role, "content": message.content})
    while turns and turns[-1]["role"] == "assistant":
        logger.debug("dropping a trailing assistant turn: the API refuses prefill")
        turns.pop()
    return turns


def _take(event: RawMessageStreamEvent, result: StreamResult) -> str:
    """Record usage and the stop reason from one raw stream event; return its text."""
    kind = event.type
    if kind == "message_start":
        usage = event.message.usage
        result.usage.input_tokens = usage.input_tokens or 0
        result.usage.output_tokens = usage.output_tokens or 0
    elif kind == "message_delta":
        if event.delta.stop_reason:
            result.stop_reason = event.delta.stop_reason
        if event.usage is not None:
            # message_delta usage is cumulative, so it replaces what message_start said.
            result.usage.output_tokens = event.usage.output_tokens or result.usage.output_tokens
            if event.usage.input_tokens:
                result.usage.input_tokens = event.usage.input_tokens
    elif kind == "content_block_delta" and event.delta.type == "text_delta":
        return event.delta.text or ""
    return ""


def _mentions_context(err: anthropic.APIStatusError) -> bool:
    message = (err.api_message or "").lower()
    return any(phrase in message for phrase in _CONTEXT_PHRASES)


def _body_request_id(err: anthropic.APIStatusError) -> str | None:
    body = err.body
    value = body.get("request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _cause(err: anthropic.AnthropicError) -> BaseException | None:
    """Keep the SDK error as the cause, except a refused credential (no reason to carry its text)."""
    if isinstance(err, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
        return None
    return err
