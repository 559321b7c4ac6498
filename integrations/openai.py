"""OpenAI chat completions (and any OpenAI-compatible server) as a `ChatProvider`.

A thin adapter: it streams text deltas and translates every SDK failure, including those raised
while the stream is being read, into the project's error types. The SDK's own retries are off,
so the resilience layer's retry loop is the only one.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Mapping

import openai
from openai.types.chat import ChatCompletionChunk

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
from integrations.http_errors import LimitHint, error_class_for_status, openai_limit_hint, rate_limit_wait, utc_now
from integrations.llm import ChatRequest, StreamResult, Usage

logger = logging.getLogger(__name__)

_CONTEXT_CODES = {"context_length_exceeded", "exceed_context_size_error"}
# OpenAI-compatible servers (vLLM, llama.cpp, Ollama) say it in words rather than with a code.
_CONTEXT_PHRASES = ("maximum context length", "context length exceeded", "exceeds the available context size")
_MESSAGE_LIMIT = 300


class OpenAIChat:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        name: str = "openai",
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
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=openai.Timeout(read_timeout, connect=connect_timeout),
        )

    def __repr__(self) -> str:
        return f"OpenAIChat(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    def set_api_key(self, api_key: str) -> None:
        """Use a rotated key from the next request on; the SDK reads it for every request."""
        self._api_key = api_key
        self._client.api_key = api_key

    async def aclose(self) -> None:
        await self._client.close()

    async def list_models(self) -> list[str]:
        try:
            return [model.id async for model in self._client.models.list()]
        except openai.OpenAIError as err:
            raise self._translate(err, request_id=None) from _cause(err)
        except ValueError as err:
            raise MalformedResponse("the model list is not valid JSON", upstream=self.name) from err

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        try:
            chunks = await self._client.chat.completions.create(
                model=request.model,
                messages=_messages(request),
                max_completion_tokens=request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.OpenAIError as err:
            raise self._translate(err, request_id=None) from _cause(err)
        result.request_id = chunks.response.headers.get("x-request-id")
        self._report_limits(chunks.response.headers)
        try:
            async for chunk in chunks:
                text = self._take(chunk, result)
                if text:
                    yield text
        except openai.OpenAIError as err:
            raise self._translate(err, request_id=result.request_id) from _cause(err)
        except ValueError as err:
            # json.JSONDecodeError and UnicodeDecodeError: a chunk that is not the documented JSON.
            raise MalformedResponse(
                f"unreadable stream chunk ({type(err).__name__})", upstream=self.name, request_id=result.request_id
            ) from err
        finally:
            await chunks.close()
        if result.stop_reason is None:
            raise Unavailable(
                "the stream ended before the reply was finished", upstream=self.name, request_id=result.request_id
            )

    def _take(self, chunk: ChatCompletionChunk, result: StreamResult) -> str:
        try:
            return _take(chunk, result)
        except (AttributeError, TypeError) as err:
            # The SDK builds chunks leniently, so a documented field that is missing shows up here.
            raise MalformedResponse(
                "a stream chunk lacks a documented field", upstream=self.name, request_id=result.request_id
            ) from err

    def _report_limits(self, headers: Mapping[str, str]) -> None:
        if self._on_headers is not None:
            try:
                self._on_headers(headers)
            except Exception:  # an observer must never break a reply
                logger.exception("%s: on_headers callback failed", self.name)
        hint = openai_limit_hint(headers)
        if hint is None or self._on_limits is None:
            return
        try:
            self._on_limits(hint)
        except Exception:
            # A broken observer must not fail the call it was only watching.
            logger.exception("%s: on_limits callback failed", self.name)

    def _translate(self, err: openai.OpenAIError, *, request_id: str | None) -> UpstreamError:
        where = {"upstream": self.name}
        if isinstance(err, openai.APITimeoutError):
            return Unavailable("timed out", **where, request_id=request_id)
        if isinstance(err, openai.APIConnectionError):
            return Unavailable(f"connection failed ({_root_cause_name(err)})", **where, request_id=request_id)
        if isinstance(err, openai.APIResponseValidationError):
            return MalformedResponse("response does not follow the documented schema", **where, request_id=request_id)
        if isinstance(err, openai.APIStatusError):
            self._report_limits(err.response.headers)
            return self._from_status(err)
        if isinstance(err, openai.APIError):
            # An {"error": ...} object inside a 200 stream: no status, only the error's type and code.
            return self._from_body(None, err, request_id=request_id)
        return Unavailable(f"client error ({type(err).__name__})", **where, request_id=request_id)

    def _from_status(self, err: openai.APIStatusError) -> UpstreamError:
        status = err.status_code
        if status == 429 and not _is_quota(err):
            hint = openai_limit_hint(err.response.headers)
            wait = rate_limit_wait(err.response.headers, self._now(), hint)
            return RateLimited(
                self._describe(err), upstream=self.name, status=status, request_id=err.request_id, retry_after=wait
            )
        return self._from_body(status, err, request_id=err.request_id)

    def _from_body(self, status: int | None, err: openai.APIError, *, request_id: str | None) -> UpstreamError:
        where: dict[str, Any] = {"upstream": self.name, "status": status, "request_id": request_id}
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
        label = err.code or err.type or "error"
        message = _upstream_message(err)
        if self._api_key:
            message = message.replace(self._api_key, "[redacted]")
        return f"{label}: {message[:_MESSAGE_LIMIT]}" if message else label


def _messages(request: ChatRequest) -> list[dict[str, str]]:
    system = [{"role": "system", "content": request.system}] if request.system else []
    return system + [{"role": message.role, "content": message.content} for message in request.messages]


def _take(chunk: ChatCompletionChunk, result: StreamResult) -> str:
    """Record usage and the finish reason from one chunk; return its text."""
    if chunk.usage is not None:
        result.usage = Usage(
            input_tokens=chunk.usage.prompt_tokens or 0, output_tokens=chunk.usage.completion_tokens or 0
        )
    text = ""
    for choice in chunk.choices or []:
        if choice.index != 0:
            continue
        if choice.finish_reason:
            result.stop_reason = choice.finish_reason
        if choice.delta is not None and choice.delta.content:
            text += choice.delta.content
    return text


def _is_quota(err: openai.APIError) -> bool:
    return "insufficient_quota" in (err.code, err.type)


def _mentions_context(err: openai.APIError) -> bool:
    message = _upstream_message(err).lower()
    return any(phrase in message for phrase in _CONTEXT_PHRASES)


def _upstream_message(err: openai.APIError) -> str:
    body = err.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, str):
        return body
    return ""


def _root_cause_name(err: BaseException) -> str:
    cause = err.__cause__ or err.__context__
    return type(cause).__name__ if cause is not None else type(err).__name__


def _cause(err: openai.OpenAIError) -> BaseException | None:
    """Keep the SDK error as the cause, except a refused credential whose text may echo the key."""
    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return None
    return err
