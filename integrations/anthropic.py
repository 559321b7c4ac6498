"""Anthropic's Messages API as a `ChatProvider`.

A thin adapter: it shapes the conversation the way the API wants it (system as a parameter,
alternating turns, ending with the user), streams text deltas, and translates every SDK and
transport failure, including an `error` event inside the stream, into the project's error types.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, AsyncIterator, Mapping, Sequence

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
    Where,
)
from integrations.http_errors import LimitHint, anthropic_limit_hint, error_class_for_status
from integrations.images import ANTHROPIC_IMAGE_LIMITS, as_base64, fit
from integrations.llm import ChatMessage, ChatRequest, StreamResult
from integrations.provider import ChatSdkAdapter, Sdk

logger = logging.getLogger(__name__)

_CONTEXT_PHRASES = ("prompt is too long", "context window", "too many tokens")
ANTHROPIC_SDK = Sdk(
    client=anthropic.AsyncAnthropic,
    timeout=anthropic.Timeout,
    error=anthropic.AnthropicError,
    refusals=(anthropic.AuthenticationError, anthropic.PermissionDeniedError),
    # The SDK reads the body of a stream without wrapping transport failures in its own types.
    transport_errors=(httpx2.TransportError, anyio.EndOfStream, anyio.BrokenResourceError, OSError),
)


class AnthropicChat(ChatSdkAdapter):
    default_name = "anthropic"
    sdk = ANTHROPIC_SDK

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        if any(message.images for message in request.messages):
            # Scaling images down takes CPU time: in a thread, so that other replies go on.
            messages = await asyncio.to_thread(alternating_turns, request.messages)
        else:
            messages = alternating_turns(request.messages)
        if not messages:
            raise BadRequest("the conversation has no user message to answer", upstream=self.name)
        options: dict[str, Any] = {"system": request.system} if request.system else {}
        try:
            events = await self._client.messages.create(
                model=request.model, max_tokens=request.max_tokens, messages=messages, stream=True, **options
            )
        except anthropic.AnthropicError as err:
            raise self._translate(err, request_id=None) from self._cause(err)
        result.request_id = events.response.headers.get("request-id")
        self._report_limits(events.response.headers)
        finished = False
        try:
            with self._reading(result.request_id, "stream event"):
                async for event in events:
                    if event.type == "message_stop":
                        finished = True
                    text = self._take_from(_take, event, result, f"{event.type} event")
                    if text:
                        yield text
        finally:
            await events.close()
        if not finished:
            raise Unavailable(
                "the stream ended before message_stop", upstream=self.name, request_id=result.request_id
            )

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


def _take(event: RawMessageStreamEvent, result: StreamResult) -> str:
    """Record usage and the stop reason from one raw stream event; return its text."""
    # Comparing `event.type` itself (not a copy) lets the type checker narrow the SDK's event union.
    if event.type == "message_start":
        usage = event.message.usage
        result.usage.input_tokens = usage.input_tokens or 0
        result.usage.output_tokens = usage.output_tokens or 0
    elif event.type == "message_delta":
        if event.delta.stop_reason:
            result.stop_reason = event.delta.stop_reason
        if event.usage is not None:
            # message_delta usage is cumulative, so it replaces what message_start said.
            result.usage.output_tokens = event.usage.output_tokens or result.usage.output_tokens
            if event.usage.input_tokens:
                result.usage.input_tokens = event.usage.input_tokens
    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
        return event.delta.text or ""
    return ""


def _mentions_context(err: anthropic.APIStatusError) -> bool:
    message = (err.api_message or "").lower()
    return any(phrase in message for phrase in _CONTEXT_PHRASES)


def _body_request_id(err: anthropic.APIStatusError) -> str | None:
    body = err.body
    value = body.get("request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None
