"""Anthropic's Messages API as a `ChatProvider`.

A thin adapter: it shapes the conversation the way the API wants it (system as a parameter,
alternating turns, ending with the user), streams text deltas, and translates every SDK and
transport failure, including an `error` event inside the stream, into the project's error types.
The request goes through the SDK; the stream's events are read here as JSON (integrations/sse.py
says why), handled as the SDK's own `AsyncStream` handles them.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any, AsyncIterator, Mapping, Sequence

import anthropic
import anyio
import httpx2

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
    Where,
)
from integrations.http_errors import LimitHint, anthropic_limit_hint, error_class_for_status
from integrations.images import ANTHROPIC_IMAGE_LIMITS, as_base64, fit
from integrations.llm import ChatMessage, ChatRequest, StreamResult
from integrations.provider import ChatSdkAdapter, Sdk
from integrations.sse import server_events

logger = logging.getLogger(__name__)

_CONTEXT_PHRASES = ("prompt is too long", "context window", "too many tokens")
ANTHROPIC_SDK = Sdk(
    client=anthropic.AsyncAnthropic,
    timeout=anthropic.Timeout,
    error=anthropic.AnthropicError,
    refusals=(anthropic.AuthenticationError, anthropic.PermissionDeniedError),
    # The stream's body is read here (integrations/sse.py), so its transport failures come unwrapped.
    transport_errors=(httpx2.TransportError, anyio.EndOfStream, anyio.BrokenResourceError, OSError),
)


class AnthropicChat(ChatSdkAdapter):
    default_name = "anthropic"
    sdk = ANTHROPIC_SDK

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        # Only the response stays in this frame while the stream is read: a thousand replies in
        # flight would otherwise each keep their request's messages and their last event.
        response = await self._response(request)
        result.request_id = response.headers.get("request-id")
        self._report_limits(response.headers)
        finished = False
        try:
            with self._reading(result.request_id, "stream event"):
                async for sse in server_events(response.aiter_bytes()):
                    # As the SDK does: an event without a name (or a ping, or without data) carries
                    # nothing. After message_stop the body is only read to its end, so that the
                    # connection can be reused.
                    if finished or sse.name is None or sse.name == "ping":
                        continue
                    if sse.name == "error":
                        raise _error_in_stream(sse.data, response)
                    if not sse.data:
                        continue
                    text = self._take_from(_take, json.loads(sse.data), result, f"{sse.name} event")
                    finished = sse.name == "message_stop"
                    if text:
                        yield text
        finally:
            await response.aclose()
        if not finished:
            raise Unavailable(
                "the stream ended before message_stop", upstream=self.name, request_id=result.request_id
            )

    async def _response(self, request: ChatRequest) -> httpx2.Response:
        """The streamed response, its body unread: the SDK makes the request and turns error
        statuses into its errors before returning; the events are read here."""
        if any(message.images for message in request.messages):
            # Scaling images down takes CPU time: in a thread, so that other replies go on.
            messages = await asyncio.to_thread(alternating_turns, request.messages)
        else:
            messages = alternating_turns(request.messages)
        if not messages:
            raise BadRequest("the conversation has no user message to answer", upstream=self.name)
        options: dict[str, Any] = {"system": request.system} if request.system else {}
        try:
            raw = await self._client.messages.with_raw_response.create(
                model=request.model, max_tokens=request.max_tokens, messages=messages, stream=True, **options
            )
        except anthropic.AnthropicError as err:
            raise self._translate(err, request_id=None) from self._cause(err)
        response: httpx2.Response = raw.http_response
        return response

    def _limit_hint(self, headers: Mapping[str, str], now: datetime) -> LimitHint | None:
        return anthropic_limit_hint(headers, now)

    def _translate(self, err: anthropic.AnthropicError, *, request_id: str | None) -> UpstreamError:
        where: Where = {"upstream": self.name, "request_id": request_id}
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
        where: Where = {
            "upstream": self.name,
            "status": status,
            "request_id": err.request_id or _body_request_id(err) or request_id,
        }
        kind = err.type or ""
        if kind in ("authentication_error", "permission_error") or status in (401, 403):
            return AuthFailed(f"credential refused ({kind or 'no detail'})", **where)
        if kind == "rate_limit_error" or status == 429:
            wait = self.rate_limit_wait(headers) if status is not None else None
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
        return self._error_text(err.type or "error", err.api_message or "")


def alternating_turns(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as the API wants it: no blank turns, same-role neighbours merged, user last.

    A message with images becomes content blocks: each image (base64, fitted to Anthropic's
    limits), then its text, as the API's documentation advises.
    A trailing assistant turn is dropped: newer models refuse prefill, so a cut-off answer is
    continued by the caller with a user message that quotes it.
    """
    turns: list[dict[str, Any]] = []
    for message in messages:
        if not message.content.strip() and not message.images:
            continue
        content = _content(message)
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"] = _joined(turns[-1]["content"], content)
        else:
            turns.append({"role": message.role, "content": content})
    while turns and turns[-1]["role"] == "assistant":
        logger.debug("dropping a trailing assistant turn: the API refuses prefill")
        turns.pop()
    return turns


Content = str | list[dict[str, Any]]


def _content(message: ChatMessage) -> Content:
    if not message.images:
        return message.content
    blocks: list[dict[str, Any]] = []
    for image in message.images:
        fitted = fit(image, ANTHROPIC_IMAGE_LIMITS)
        source = {"type": "base64", "media_type": fitted.media_type, "data": as_base64(fitted)}
        blocks.append({"type": "image", "source": source})
    if message.content.strip():
        blocks.append({"type": "text", "text": message.content})
    return blocks


def _joined(first: Content, second: Content) -> Content:
    if isinstance(first, str) and isinstance(second, str):
        return first + "\n\n" + second
    return _as_blocks(first) + _as_blocks(second)


def _as_blocks(content: Content) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _take(event: Any, result: StreamResult) -> str:
    """Record usage and the stop reason from one stream event (the JSON of a RawMessageStreamEvent);
    return its text. A documented field missing or of the wrong kind raises KeyError or TypeError,
    which `_take_from` reports as a malformed response; events of other types are passed over."""
    kind = event["type"]
    if kind == "content_block_delta":  # by far the most frequent, so first
        delta = event["delta"]
        if delta["type"] != "text_delta":
            return ""
        text = delta["text"]
        if not isinstance(text, str):
            raise TypeError(f"text_delta text is {type(text).__name__}")
        return text
    if kind == "message_start":
        usage = event["message"]["usage"]
        result.usage.input_tokens = _tokens(usage.get("input_tokens"))
        result.usage.output_tokens = _tokens(usage.get("output_tokens"))
    elif kind == "message_delta":
        stop_reason = event["delta"].get("stop_reason")
        if stop_reason is not None and not isinstance(stop_reason, str):
            raise TypeError(f"stop_reason is {type(stop_reason).__name__}")
        if stop_reason:
            result.stop_reason = stop_reason
        usage = event.get("usage")
        if usage is not None:
            # message_delta usage is cumulative, so it replaces what message_start said.
            result.usage.output_tokens = _tokens(usage.get("output_tokens")) or result.usage.output_tokens
            if input_tokens := _tokens(usage.get("input_tokens")):
                result.usage.input_tokens = input_tokens
    return ""


def _tokens(value: Any) -> int:
    """A token count as the API sends it (an integer, or null where not yet known)."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"a token count is {type(value).__name__}")
    return value


def _error_in_stream(data: str, response: httpx2.Response) -> anthropic.APIStatusError:
    """An `event: error` inside a 200 stream, as the SDK raises it. The SDK's private
    `_make_status_error` picks the class its table maps `(status, error code)` to; the table has no
    entry for a 200 (SDK 2.14), so that is the plain APIStatusError, built here through its public
    constructor, which reads type, api_message and request_id from the body and headers alike."""
    body: object = data
    try:
        body = json.loads(data)
        message = f"{body}"
    except ValueError:
        message = data or f"Error code: {response.status_code}"
    return anthropic.APIStatusError(message, response=response, body=body)


def _mentions_context(err: anthropic.APIStatusError) -> bool:
    message = (err.api_message or "").lower()
    return any(phrase in message for phrase in _CONTEXT_PHRASES)


def _body_request_id(err: anthropic.APIStatusError) -> str | None:
    body = err.body
    value = body.get("request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None
