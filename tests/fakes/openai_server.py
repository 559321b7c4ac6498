"""A strict local OpenAI: chat completions (streamed or not) and the model list.

Each chat request takes the next scripted behaviour, or the default once the script is empty:
a `Reply` (optionally interrupted after some content chunks), a `Fail` (an error response with
the documented envelope and headers), or a bare fault from `http_server` (RESET, STALL) sent
instead of any response. Image parts (base64 data URLs) are checked as the API checks them
(a format it reads, 50 MB a request, only `vision_models` take them) and their tokens added to
the prompt tokens (170 a 512 px tile plus 85, after the API's own scaling).
"""
from __future__ import annotations

import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Mapping, Sequence

from tests.fakes.http_server import HANG_UP, RESET, STALL, FakeUpstream, Fault, HttpServer, RecordedRequest, Response
from tests.fakes.vision import SeenImage, decode, openai_tokens

UNSUPPORTED_IMAGE = (
    "You uploaded an unsupported image. Please make sure your image has of one the following formats: "
    "['png', 'jpeg', 'gif', 'webp']."
)
IMAGE_PAYLOAD_LIMIT = 50 * 1024 * 1024

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

DEFAULT_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "200000",
    "x-ratelimit-remaining-tokens": "199000",
    "x-ratelimit-reset-tokens": "300ms",
}


@dataclass(frozen=True)
class Interrupt:
    """What breaks a reply after `after_chunks` content chunks: a fault, an error event, garbage,
    or (none of them) a clean end of the body without the rest of the reply."""

    after_chunks: int
    fault: Fault | None = None
    error: Mapping[str, Any] | None = None
    malformed: bool = False


@dataclass(frozen=True)
class Reply:
    text: str = "Hello from the fake."
    chunks: int = 3
    finish_reason: str = "stop"
    prompt_tokens: int = 12
    headers: Mapping[str, str] = field(default_factory=dict)
    interrupt: Interrupt | None = None


@dataclass(frozen=True)
class Fail:
    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


Behaviour = Reply | Fail | Fault


def rate_limited(*, retry_after: str | None = None, retry_after_ms: str | None = None, **headers: str) -> Fail:
    extra = dict(headers)
    if retry_after is not None:
        extra["retry-after"] = retry_after
    if retry_after_ms is not None:
        extra["retry-after-ms"] = retry_after_ms
    return Fail(
        429,
        "requests",
        "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1.",
        code="rate_limit_exceeded",
        headers=extra,
    )


def insufficient_quota() -> Fail:
    return Fail(
        429,
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
        code="insufficient_quota",
    )


def context_length_exceeded() -> Fail:
    return Fail(
        400,
        "invalid_request_error",
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
        code="context_length_exceeded",
        param="messages",
    )


def server_error(status: int = 500) -> Fail:
    return Fail(status, "server_error", "The server had an error while processing your request.")


def cut_after(chunks: int, text: str = "one two three four five six", *, abortive: bool = True) -> Reply:
    return Reply(text, chunks=6, interrupt=Interrupt(chunks, fault=RESET if abortive else HANG_UP))


def end_early(chunks: int, text: str = "one two three four five six") -> Reply:
    """Finish the HTTP body cleanly after `chunks` text chunks, as a misbehaving proxy might."""
    return Reply(text, chunks=6, interrupt=Interrupt(chunks))


def stall_after(chunks: int, text: str = "one two three four five six") -> Reply:
    return Reply(text, chunks=6, interrupt=Interrupt(chunks, fault=STALL))


def error_in_stream(
    chunks: int, *, type: str = "server_error", code: str | None = None, message: str = "The server had an error."
) -> Reply:
    error = {"message": message, "type": type, "param": None, "code": code}
    return Reply("one two three four five six", chunks=6, interrupt=Interrupt(chunks, error=error))


def malformed_after(chunks: int) -> Reply:
    return Reply("one two three four five six", chunks=6, interrupt=Interrupt(chunks, malformed=True))


class FakeOpenAI(FakeUpstream):
    """`async with FakeOpenAI(api_key=...) as fake:` then point the SDK at `fake.base_url`."""

    def __init__(
        self,
        *,
        api_key: str,
        models: Sequence[str] = ("gpt-test", "gpt-test-mini"),
        vision_models: Sequence[str] = ("gpt-5.1", "gpt-4o"),
        default: Behaviour = Reply(),
        limit_headers: Mapping[str, str] = DEFAULT_LIMIT_HEADERS,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        # Only these take image parts; any other model refuses them, as GPT-3.5 does.
        self.vision_models = set(vision_models)
        # Every image the API accepted, in the order received.
        self.images: list[SeenImage] = []
        self.default = default
        self.limit_headers = dict(limit_headers)
        self.server = HttpServer(self._handle)
        self.calls = 0  # chat completion requests received, refused ones included
        self.request_ids: list[str] = []
        self._script: deque[Behaviour] = deque()
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.server.requests if r.path == "/v1/chat/completions"]

    def script(self, *behaviours: Behaviour) -> None:
        self._script.extend(behaviours)

    async def _handle(self, request: RecordedRequest) -> Response | Fault:
        request_id = f"req_{next(self._ids):024x}"
        self.request_ids.append(request_id)
        headers = {"x-request-id": request_id, "openai-version": "2020-10-01", "openai-processing-ms": "7"}
        chat = request.method == "POST" and request.path == "/v1/chat/completions"
        self.calls += chat
        refusal = self._authenticate(request)
        if refusal is not None:
            return _error(refusal, headers)
        if request.method == "GET" and request.path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"} for m in self.models]
            return Response.json({"object": "list", "data": data}, headers=headers)
        if chat:
            return self._chat(request, headers)
        return _error(Fail(404, "invalid_request_error", f"Invalid URL ({request.method} {request.path})"), headers)

    def _authenticate(self, request: RecordedRequest) -> Fail | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not key:
            return Fail(
                401,
                "invalid_request_error",
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if key != self.api_key:
            # The real API echoes a masked key; adapters must not pass it on.
            masked = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
            return Fail(
                401,
                "invalid_request_error",
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    def _chat(self, request: RecordedRequest, headers: dict[str, str]) -> Response | Fault:
        body = request.json
        refusal = _validate(body, request.headers.get("content-type", ""), self.models)
        images: list[tuple[SeenImage, str]] = []
        if refusal is None:
            refusal = _image_problem(body, self.vision_models, images)
        if refusal is not None:
            return _error(refusal, {**headers, **self.limit_headers})
        self.images += [image for image, _ in images]
        behaviour = self._script.popleft() if self._script else self.default
        if isinstance(behaviour, Fault):
            return behaviour
        if isinstance(behaviour, Fail):
            return _error(behaviour, {**headers, **self.limit_headers, **behaviour.headers})
        headers = {**headers, **self.limit_headers, **behaviour.headers}
        image_tokens = sum(openai_tokens(image, detail) for image, detail in images)
        behaviour = replace(behaviour, prompt_tokens=behaviour.prompt_tokens + image_tokens)
        completion = _Completion(body["model"], behaviour, include_usage=_include_usage(body))
        if body.get("stream"):
            headers["content-type"] = "text/event-stream; charset=utf-8"
            return Response(200, headers, completion.events())
        return Response.json(completion.whole(), headers=headers)


def _validate(body: Any, content_type: str, models: Sequence[str]) -> Fail | None:
    def invalid(message: str, *, param: str | None = None, code: str | None = None) -> Fail:
        return Fail(400, "invalid_request_error", message, code=code, param=param)

    if not content_type.startswith("application/json") or not isinstance(body, dict):
        return invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload.)"
        )
    if not body.get("model"):
        return invalid("you must provide a model parameter")
    if "messages" not in body:
        return invalid("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return invalid(f"Invalid value for 'messages[{index}].role'.", param=f"messages[{index}].role")
        if message["role"] != "assistant" and not isinstance(message.get("content"), (str, list)):
            return invalid(
                f"Missing required parameter: 'messages[{index}].content'.",
                param=f"messages[{index}].content",
                code="missing_required_parameter",
            )
    if "stream_options" in body and not body.get("stream"):
        return invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    if body["model"] not in models:
        return Fail(
            404,
            "invalid_request_error",
            f"The model `{body['model']}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return None


def _image_problem(body: dict[str, Any], vision_models: set[str], seen: list[tuple[SeenImage, str]]) -> Fail | None:
    """What the API says of the request's image parts (base64 data URLs only), or None; `seen`
    gets each with its detail."""
    total = 0
    for index, message in enumerate(body["messages"]):
        content = message.get("content")
        for number, part in enumerate(content if isinstance(content, list) else []):
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            if body["model"] not in vision_models:
                return Fail(
                    400,
                    "invalid_request_error",
                    "Invalid content type. image_url is only supported by certain models.",
                    param=f"messages.[{index}].content.[{number}].type",
                )
            image_url = part.get("image_url") or {}
            header, _, data = str(image_url.get("url", "")).partition(",")
            declared = header.removeprefix("data:").removesuffix(";base64")
            image = decode(data, declared) if header.startswith("data:") and header.endswith(";base64") else None
            if image is None or image.real_type is None:
                return Fail(400, "invalid_request_error", UNSUPPORTED_IMAGE, code="invalid_image_format")
            total += len(data)
            if total > IMAGE_PAYLOAD_LIMIT:
                return Fail(400, "invalid_request_error", "Total image payload exceeds the 50 MB limit.", code="image_too_large")
            seen.append((image, image_url.get("detail", "auto")))
    return None


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return not body.get("stream") or (isinstance(options, dict) and bool(options.get("include_usage")))


def _error(fail: Fail, headers: Mapping[str, str]) -> Response:
    envelope = {"error": {"message": fail.message, "type": fail.type, "param": fail.param, "code": fail.code}}
    return Response.json(envelope, status=fail.status, headers={**headers, **fail.headers})


def split_text(text: str, pieces: int) -> list[str]:
    """Split `text` into at most `pieces` consecutive parts, between words when there are enough."""
    words = re.findall(r"\s*\S+\s*", text) if len(text.split()) >= pieces else list(text)
    pieces = max(1, min(pieces, len(words)))
    size, extra = divmod(len(words), pieces)
    parts, start = [], 0
    for index in range(pieces):
        end = start + size + (1 if index < extra else 0)
        parts.append("".join(words[start:end]))
        start = end
    return [part for part in parts if part]


class _Completion:
    """One scripted reply rendered as the documented chat.completion(.chunk) objects."""

    def __init__(self, model: str, reply: Reply, *, include_usage: bool) -> None:
        self.model = model
        self.reply = reply
        self.include_usage = include_usage
        self.id = f"chatcmpl-fake{abs(hash((model, reply.text))) % 10**12}"
        self.created = int(time.time())
        self.pieces = split_text(reply.text, reply.chunks)

    def usage(self) -> dict[str, Any]:
        completion_tokens = len(self.reply.text.split())
        return {
            "prompt_tokens": self.reply.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.reply.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    def whole(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.reply.text, "refusal": None, "annotations": []}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.reply.finish_reason}],
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": choices,
            **({"usage": None} if self.include_usage else {}),
            **extra,
        }
        return _sse(payload)

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    async def events(self) -> AsyncIterator[bytes | Fault]:
        interrupt = self.reply.interrupt
        yield self.delta({"role": "assistant", "content": "", "refusal": None})
        for index, piece in enumerate(self.pieces):
            if interrupt is not None and index == interrupt.after_chunks:
                async for item in self._interrupt(interrupt):
                    yield item
                if interrupt.fault is not STALL:
                    return
            yield self.delta({"content": piece})
        if interrupt is not None and interrupt.after_chunks >= len(self.pieces):
            async for item in self._interrupt(interrupt):
                yield item
            if interrupt.fault is not STALL:
                return
        yield self.delta({}, self.reply.finish_reason)
        if self.include_usage:
            yield self.chunk([], usage=self.usage())
        yield b"data: [DONE]\n\n"

    async def _interrupt(self, interrupt: Interrupt) -> AsyncIterator[bytes | Fault]:
        if interrupt.fault is not None:
            yield interrupt.fault
        elif interrupt.error is not None:
            yield _sse({"error": dict(interrupt.error)})
        elif interrupt.malformed:
            yield b'data: {"id": "chatcmpl-broken", "object": "chat.completion.chunk", "choices": [\n\n'


def _sse(payload: Any) -> bytes:
    # Non-ASCII text as raw UTF-8, as the API streams it; JSON leaves U+2028 and U+0085 unescaped too.
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
