"""OpenAI chat completions (and any OpenAI-compatible server) as a `ChatProvider`.

A thin adapter: it streams text deltas and translates every SDK failure, including those raised
while the stream is being read, into the project's error types. The SDK's own retries are off,
so the resilience layer's retry loop is the only one.
"""
from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any, AsyncIterator, Mapping

import anyio
import httpx2
import openai

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
from integrations.http_errors import LimitHint, error_class_for_status, openai_limit_hint
from integrations.images import OPENAI_IMAGE_LIMITS, as_base64, fit
from integrations.llm import ChatMessage, ChatRequest, StreamResult, Usage
from integrations.provider import ChatSdkAdapter, Sdk, root_cause_name
from integrations.sse import server_events

_CONTEXT_CODES = {"context_length_exceeded", "exceed_context_size_error"}
# OpenAI-compatible servers (vLLM, llama.cpp, Ollama) say it in words rather than with a code.
_CONTEXT_PHRASES = ("maximum context length", "context length exceeded", "exceeds the available context size")
OPENAI_SDK = Sdk(
    client=openai.AsyncOpenAI,
    timeout=openai.Timeout,
    error=openai.OpenAIError,
    refusals=(openai.AuthenticationError, openai.PermissionDeniedError),
    # The stream's body is read here (integrations/sse.py), so its transport failures come unwrapped.
    transport_errors=(httpx2.TransportError, anyio.EndOfStream, anyio.BrokenResourceError, OSError),
)


class OpenAIChat(ChatSdkAdapter):
    default_name = "openai"
    sdk = OPENAI_SDK

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        # Only the response stays in this frame while the stream is read: a thousand replies in
        # flight would otherwise each keep their request's messages and their last chunk.
        response = await self._response(request)
        result.request_id = response.headers.get("x-request-id")
        self._report_limits(response.headers)
        try:
            with self._reading(result.request_id, "stream chunk"):
                done = False
                async for event in server_events(response.aiter_bytes()):
                    # After [DONE] the body is read to its end, so that the connection can be reused.
                    done = done or event.data.startswith("[DONE]")
                    if done:
                        continue
                    text = self._take_from(_take, _chunk(event.data, response.request), result, "a stream chunk")
                    if text:
                        yield text
        finally:
            await response.aclose()
        if result.stop_reason is None:
            raise Unavailable(
                "the stream ended before the reply was finished", upstream=self.name, request_id=result.request_id
            )

    async def _response(self, request: ChatRequest) -> httpx2.Response:
        """The streamed response, its body unread: the SDK makes the request and turns error
        statuses into its errors; the chunks are read here (integrations/sse.py says why)."""
        # Scaling images down takes CPU time: in a thread, so that other replies go on.
        messages = await asyncio.to_thread(_messages, request) if any(m.images for m in request.messages) else _messages(request)
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=request.model,
                messages=messages,
                max_completion_tokens=request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.OpenAIError as err:
            raise self._translate(err, request_id=None) from self._cause(err)
        response: httpx2.Response = raw.http_response
        return response

    def _limit_hint(self, headers: Mapping[str, str], now: datetime) -> LimitHint | None:
        return openai_limit_hint(headers)

    def _translate(self, err: openai.OpenAIError, *, request_id: str | None) -> UpstreamError:
        where: Where = {"upstream": self.name, "request_id": request_id}
        if isinstance(err, openai.APITimeoutError):
            return Unavailable("timed out", **where)
        if isinstance(err, openai.APIConnectionError):
            return Unavailable(f"connection failed ({root_cause_name(err)})", **where)
        if isinstance(err, openai.APIResponseValidationError):
            return MalformedResponse("response does not follow the documented schema", **where)
        if isinstance(err, openai.APIStatusError):
            self._report_limits(err.response.headers)
            return self._from_status(err)
        if isinstance(err, openai.APIError):
            # An {"error": ...} object inside a 200 stream: no status, only the error's type and code.
            return self._from_body(None, err, request_id=request_id)
        return Unavailable(f"client error ({type(err).__name__})", **where)

    def _from_status(self, err: openai.APIStatusError) -> UpstreamError:
        status = err.status_code
        if status == 429 and not _is_quota(err):
            return RateLimited(
                self._describe(err),
                upstream=self.name,
                status=status,
                request_id=err.request_id,
                retry_after=self.rate_limit_wait(err.response.headers),
            )
        return self._from_body(status, err, request_id=err.request_id)

    def _from_body(self, status: int | None, err: openai.APIError, *, request_id: str | None) -> UpstreamError:
        where: Where = {"upstream": self.name, "status": status, "request_id": request_id}
        code, kind = err.code or "", err.type or ""
        if status in (401, 403) or code == "invalid_api_key" or kind == "authentication_error":
            # The upstream's text can echo part of the key, so say only what kind of refusal it was.
            return AuthFailed(f"credential refused ({code or kind or 'no detail'})", **where)
        if _is_quota(err):
            return QuotaExhausted(self._describe(err), **where)
        if code in ("rate_limit_exceeded",) or kind in ("rate_limit_error", "requests", "tokens"):
            return RateLimited(self._describe(err), **where)
        if code in _CONTEXT_CODES or kind in _CONTEXT_CODES or _mentions_context(err):
            return ContextTooLong(self._describe(err), **where)
        if code == "model_not_found" or (status == 404 and "model" in _upstream_message(err).lower()):
            return ModelNotFound(self._describe(err), **where)
        if status is None:
            if kind == "invalid_request_error":
                return BadRequest(self._describe(err), **where)
            return Unavailable(self._describe(err), **where)
        return error_class_for_status(status)(self._describe(err), **where)

    def _describe(self, err: openai.APIError) -> str:
        return self._error_text(err.code or err.type or "error", _upstream_message(err))


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    system = [{"role": "system", "content": request.system}] if request.system else []
    return system + [{"role": message.role, "content": _content(message)} for message in request.messages]


def _content(message: ChatMessage) -> str | list[dict[str, Any]]:
    """A message's text, or with images its content parts: the text, then each image as a base64
    data URL fitted to OpenAI's limits (what detail "high" would scale it to anyway)."""
    if not message.images:
        return message.content
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content.strip() else []
    for image in message.images:
        fitted = fit(image, OPENAI_IMAGE_LIMITS)
        url = f"data:{fitted.media_type};base64,{as_base64(fitted)}"
        parts.append({"type": "image_url", "image_url": {"url": url, "detail": "high"}})
    return parts


def _take(chunk: Any, result: StreamResult) -> str:
    """Record usage and the finish reason from one chunk (the JSON of a ChatCompletionChunk);
    return its text. A documented field missing or of the wrong kind raises KeyError, TypeError or
    AttributeError, which `_take_from` reports as a malformed response."""
    usage = chunk.get("usage")
    if usage is not None:
        result.usage = Usage(
            input_tokens=usage.get("prompt_tokens") or 0, output_tokens=usage.get("completion_tokens") or 0
        )
    text = ""
    for choice in chunk["choices"] or ():
        if choice["index"] != 0:
            continue
        if choice.get("finish_reason"):
            result.stop_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if delta is not None and delta.get("content"):
            text += delta["content"]
    return text


def _chunk(data: str, request: httpx2.Request) -> Any:
    """One chunk's JSON; an {"error": ...} object in its place is raised as the SDK raises it."""
    chunk = json.loads(data)
    if isinstance(chunk, dict) and chunk.get("error"):
        raise _error_in_stream(chunk["error"], request)
    return chunk


def _error_in_stream(error: Any, request: httpx2.Request) -> openai.APIError:
    """An {"error": ...} object inside a 200 stream, as the SDK raises it."""
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "An error occurred during streaming"
    return openai.APIError(message, request, body=error)


def _is_quota(err: openai.APIError) -> bool:
    return "insufficient_quota" in (err.code, err.type)


def _mentions_context(err: openai.APIError) -> bool:
    message = _upstream_message(err).lower()
    return any(phrase in message for phrase in _CONTEXT_PHRASES)


def _upstream_message(err: openai.APIError) -> str:
    body = err.body
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str):
        return message
    if isinstance(body, str):
        return body
    return ""
