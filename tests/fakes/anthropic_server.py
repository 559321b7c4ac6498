"""A strict local Anthropic: the Messages API (streamed or not) and the model list.

Scripted like `FakeOpenAI`: each message request takes the next behaviour (`Reply`, `Fail`, or a
bare fault such as RESET), or the default once the script is empty. Like Sonnet 4.6 and later, it
refuses a conversation that ends with an assistant message (no prefill). Image blocks (base64)
are checked as the API checks them (type, 5 MB, 8000 px, the data matching its declared type; a
`blind_models` model takes none) and their tokens added to the reported input tokens. A model
given a context window (`windows`) refuses a prompt over it, text (about 4 characters a token)
and images counted, with the API's "prompt is too long: N tokens > M maximum".
"""
from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

from tests.fakes.http_server import HANG_UP, RESET, STALL, FakeUpstream, Fault, HttpServer, RecordedRequest, Response
from tests.fakes.openai_server import split_text
from tests.fakes.vision import SeenImage, anthropic_tokens, decode

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
IMAGE_MAX_BASE64 = 5 * 1024 * 1024
IMAGE_MAX_EDGE = 8000

PREFILL_REFUSAL = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)

REQUEST_FIELDS = {
    "model", "messages", "max_tokens", "system", "stream", "metadata", "stop_sequences", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers", "context_management",
    "output_config", "inference_geo",
}  # fmt: skip


@dataclass(frozen=True)
class Interrupt:
    """What breaks a reply after `after_chunks` text deltas: a fault, an `error` event, garbage,
    an event off the documented schema (`odd`: its name and payload), or (none of them) a clean end
    of the body without the rest of the reply."""

    after_chunks: int
    fault: Fault | None = None
    error_type: str | None = None
    malformed: bool = False
    odd: tuple[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    text: str = "Hello from the fake."
    chunks: int = 3
    stop_reason: str = "end_turn"
    input_tokens: int = 12
    pings: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    interrupt: Interrupt | None = None


@dataclass(frozen=True)
class Fail:
    status: int
    type: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


Behaviour = Reply | Fail | Fault


def rate_limited(retry_after: str | None = "7", **headers: str) -> Fail:
    extra = {"retry-after": retry_after} if retry_after is not None else {}
    message = "This request would exceed the rate limit for your organization of 50 requests per minute."
    return Fail(429, "rate_limit_error", message, {**extra, **headers})


def overloaded() -> Fail:
    return Fail(529, "overloaded_error", "Overloaded")


def api_error() -> Fail:
    return Fail(500, "api_error", "Internal server error")


def billing_error() -> Fail:
    return Fail(402, "billing_error", "Your credit balance is too low to access the Anthropic API.")


def prompt_too_long() -> Fail:
    return Fail(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")


def cut_after(chunks: int, text: str = "one two three four five six", *, abortive: bool = True) -> Reply:
    return Reply(text, chunks=6, interrupt=Interrupt(chunks, fault=RESET if abortive else HANG_UP))


def end_early(chunks: int, text: str = "one two three four five six") -> Reply:
    """Finish the HTTP body cleanly after `chunks` text chunks, as a misbehaving proxy might."""
    return Reply(text, chunks=6, interrupt=Interrupt(chunks))


def stall_after(chunks: int, text: str = "one two three four five six") -> Reply:
    return Reply(text, chunks=6, interrupt=Interrupt(chunks, fault=STALL))


def error_event_after(chunks: int, error_type: str = "overloaded_error") -> Reply:
    return Reply("one two three four five six", chunks=6, interrupt=Interrupt(chunks, error_type=error_type))


def malformed_after(chunks: int) -> Reply:
    return Reply("one two three four five six", chunks=6, interrupt=Interrupt(chunks, malformed=True))


def odd_event_after(chunks: int, name: str, payload: Any) -> Reply:
    """Valid JSON that breaks the documented schema (a field missing, or of the wrong type)."""
    return Reply("one two three four five six", chunks=6, interrupt=Interrupt(chunks, odd=(name, payload)))


class FakeAnthropic(FakeUpstream):
    """`async with FakeAnthropic(api_key=...) as fake:` then point the SDK at `fake.base_url`."""

    def __init__(
        self,
        *,
        api_key: str,
        models: Sequence[str] = ("claude-test", "claude-test-haiku"),
        blind_models: Sequence[str] = (),
        default: Behaviour = Reply(),
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        limits: Mapping[str, tuple[int, int, float]] | None = None,
        windows: Mapping[str, int] | None = None,
    ) -> None:
        """`limits` maps a limit name (requests, tokens, input-tokens, output-tokens) to
        (limit, remaining, seconds until reset), sent as anthropic-ratelimit-* headers."""
        self.api_key = api_key
        self.models = list(models)
        # Models that take no images (like Claude 2 did): an image block is refused.
        self.blind_models = set(blind_models)
        # Every image the API accepted, in the order received.
        self.images: list[SeenImage] = []
        # Each model's context window in tokens, where a test wants one enforced.
        self.windows = dict(windows or {})
        self.default = default
        self.now = now
        self.limits = dict(limits or {"requests": (50, 49, 1.2), "tokens": (80_000, 79_000, 0.5)})
        self.server = HttpServer(self._handle)
        self.calls = 0  # message requests received, refused ones included
        self.request_ids: list[str] = []
        # The connection (its serving task) each request came on, in order: a client that reads
        # a stream to its end sends the next request on the same one.
        self.connections: list[asyncio.Task[Any] | None] = []
        self._script: deque[Behaviour] = deque()
        self._ids = itertools.count(1)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.server.requests if r.path == "/v1/messages"]

    def script(self, *behaviours: Behaviour) -> None:
        self._script.extend(behaviours)

    def limit_headers(self) -> dict[str, str]:
        headers = {}
        now = self.now()
        for name, (limit, remaining, reset_in) in self.limits.items():
            headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
            reset = now + timedelta(seconds=reset_in)
            headers[f"anthropic-ratelimit-{name}-reset"] = reset.isoformat().replace("+00:00", "Z")
        return headers

    async def _handle(self, request: RecordedRequest) -> Response | Fault:
        request_id = f"req_011Fake{next(self._ids):016d}"
        self.request_ids.append(request_id)
        self.connections.append(asyncio.current_task())
        headers = {"request-id": request_id, "anthropic-organization-id": "org-fake"}
        messages = request.method == "POST" and request.path == "/v1/messages"
        self.calls += messages
        refusal = self._admit(request)
        if refusal is not None:
            return _error(refusal, headers, request_id)
        if request.method == "GET" and request.path == "/v1/models":
            return Response.json(self._model_page(request.query), headers=headers)
        if messages:
            return self._messages(request, headers, request_id)
        return _error(Fail(404, "not_found_error", "Not found"), headers, request_id)

    def _admit(self, request: RecordedRequest) -> Fail | None:
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        key = request.headers.get("x-api-key") or (bearer if scheme == "Bearer" else "")
        if not key:
            return Fail(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            return Fail(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return Fail(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    def _model_page(self, query: Mapping[str, str]) -> dict[str, Any]:
        ids = self.models
        if "after_id" in query and query["after_id"] in ids:
            ids = ids[ids.index(query["after_id"]) + 1 :]
        limit = int(query.get("limit", "20"))
        page = ids[:limit]
        data = [
            {"type": "model", "id": m, "display_name": m.title(), "created_at": "2026-01-01T00:00:00Z"} for m in page
        ]
        return {
            "data": data,
            "has_more": len(ids) > limit,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }

    def _messages(self, request: RecordedRequest, headers: dict[str, str], request_id: str) -> Response | Fault:
        headers = {**headers, **self.limit_headers()}
        body = request.json
        refusal = _validate(body, request.headers.get("content-type", ""), self.models)
        images: list[SeenImage] = []
        if refusal is None:
            refusal = _image_problem(body, self.blind_models, images)
        if refusal is None:
            refusal = _over_window(body, images, self.windows.get(body["model"]))
        if refusal is not None:
            return _error(refusal, headers, request_id)
        self.images += images
        behaviour = self._script.popleft() if self._script else self.default
        if isinstance(behaviour, Fault):
            return behaviour
        if isinstance(behaviour, Fail):
            return _error(behaviour, headers, request_id)
        headers.update(behaviour.headers)
        image_tokens = sum(anthropic_tokens(image) for image in images)
        message = _Message(body["model"], replace(behaviour, input_tokens=behaviour.input_tokens + image_tokens), request_id)
        if body.get("stream"):
            headers["content-type"] = "text/event-stream; charset=utf-8"
            headers["cache-control"] = "no-cache"
            return Response(200, headers, message.events())
        return Response.json(message.whole(), headers=headers)


def _validate(body: Any, content_type: str, models: Sequence[str]) -> Fail | None:
    def invalid(message: str) -> Fail:
        return Fail(400, "invalid_request_error", message)

    if not content_type.startswith("application/json") or not isinstance(body, dict):
        return invalid("There was an issue with your request body: expected a JSON object.")
    for name in body:
        if name not in REQUEST_FIELDS:
            return invalid(f"{name}: Extra inputs are not permitted")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return invalid(f"{name}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return invalid("max_tokens: Input should be greater than or equal to 1")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return invalid("messages: at least one message is required")
    for index, message in enumerate(messages):
        refusal = _message_problem(message)
        if refusal:
            return invalid(f"messages.{index}: {refusal}")
    if messages[-1]["role"] == "assistant":
        return invalid(PREFILL_REFUSAL)
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return invalid("system: Input should be a valid string or a list of text blocks")
    if body["model"] not in models:
        return Fail(404, "not_found_error", f"model: {body['model']}")
    return None


def _message_problem(message: Any) -> str | None:
    if not isinstance(message, dict) or set(message) - {"role", "content"}:
        return "a message has exactly the fields role and content"
    if message.get("role") not in ("user", "assistant"):
        return (
            f'Unexpected role "{message.get("role")}". The Messages API accepts a top-level `system` parameter, '
            "not \"system\" as an input message role."
        )
    content = message.get("content")
    if isinstance(content, str):
        return None if content else "text content blocks must be non-empty"
    if not isinstance(content, list) or not content:
        return "content: Input should be a valid string or a non-empty list of content blocks"
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text" and not block.get("text"):
            return "text content blocks must be non-empty"
    return None


def _over_window(body: dict[str, Any], images: Sequence[SeenImage], window: int | None) -> Fail | None:
    """The API's refusal of a prompt (text, images and max_tokens) larger than the model's window."""
    if window is None:
        return None
    texts = [body.get("system") if isinstance(body.get("system"), str) else ""]
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"]
    tokens = sum(len(text) for text in texts) // 4 + sum(anthropic_tokens(image) for image in images)
    if tokens + body["max_tokens"] <= window:
        return None
    return Fail(400, "invalid_request_error", f"prompt is too long: {tokens} tokens > {window - body['max_tokens']} maximum")


def _image_problem(body: dict[str, Any], blind_models: set[str], seen: list[SeenImage]) -> Fail | None:
    """What the API says of the request's image blocks (base64 only), or None; `seen` gets each."""

    def invalid(message: str) -> Fail:
        return Fail(400, "invalid_request_error", message)

    for index, message in enumerate(body["messages"]):
        content = message["content"]
        for number, block in enumerate(content if isinstance(content, list) else []):
            if not isinstance(block, dict) or block.get("type") != "image":
                continue
            where = f"messages.{index}.content.{number}.image.source.base64"
            if body["model"] in blind_models:
                return invalid(f"messages.{index}.content.{number}: this model does not support image input")
            source = block.get("source") or {}
            if source.get("type") != "base64":
                return invalid(f"{where}: the fake takes base64 images only")
            media_type = source.get("media_type")
            if media_type not in IMAGE_TYPES:
                return invalid(f"{where}.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'")
            data = source.get("data") or ""
            if len(data) > IMAGE_MAX_BASE64:
                return invalid(f"{where}: image exceeds 5 MB maximum: {len(data)} bytes > {IMAGE_MAX_BASE64} bytes")
            image = decode(data, media_type)
            if image is None:
                return invalid(f"{where}.data: Could not process image")
            if image.real_type != media_type:
                return invalid(f"{where}.data: Image does not match the provided media type {media_type}")
            if max(image.width, image.height) > IMAGE_MAX_EDGE:
                return invalid(f"{where}.data: At least one of the image dimensions exceed max allowed size: {IMAGE_MAX_EDGE} pixels")
            seen.append(image)
    return None


def _error(fail: Fail, headers: Mapping[str, str], request_id: str) -> Response:
    envelope = {"type": "error", "error": {"type": fail.type, "message": fail.message}, "request_id": request_id}
    return Response.json(envelope, status=fail.status, headers={**headers, **fail.headers})


class _Message:
    """One scripted reply rendered as the documented message and stream events."""

    def __init__(self, model: str, reply: Reply, request_id: str) -> None:
        self.model = model
        self.reply = reply
        self.id = f"msg_fake{request_id[-8:]}"
        self.pieces = split_text(reply.text, reply.chunks)
        self.output_tokens = len(reply.text.split())

    def whole(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.reply.text}],
            "stop_reason": self.reply.stop_reason,
            "stop_sequence": None,
            "usage": self._usage(self.output_tokens),
        }

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.reply.input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    async def events(self) -> AsyncIterator[bytes | Fault]:
        interrupt = self.reply.interrupt
        start = {**self.whole(), "content": [], "stop_reason": None, "usage": self._usage(1)}
        yield _event("message_start", {"type": "message_start", "message": start})
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        yield _event("content_block_start", block)
        if self.reply.pings:
            yield _event("ping", {"type": "ping"})
        for index, piece in enumerate(self.pieces):
            if interrupt is not None and index == interrupt.after_chunks:
                async for item in self._interrupt(interrupt):
                    yield item
                if interrupt.fault is not STALL:
                    return
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            yield _event("content_block_delta", delta)
            if self.reply.pings and index % 2 == 1:
                yield _event("ping", {"type": "ping"})
        if interrupt is not None and interrupt.after_chunks >= len(self.pieces):
            async for item in self._interrupt(interrupt):
                yield item
            if interrupt.fault is not STALL:
                return
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": self.output_tokens},
            },
        )
        yield _event("message_stop", {"type": "message_stop"})

    async def _interrupt(self, interrupt: Interrupt) -> AsyncIterator[bytes | Fault]:
        if interrupt.fault is not None:
            yield interrupt.fault
        elif interrupt.error_type is not None:
            error = {"type": interrupt.error_type, "message": interrupt.error_type.replace("_", " ").capitalize()}
            yield _event("error", {"type": "error", "error": error})
        elif interrupt.odd is not None:
            yield _event(*interrupt.odd)
        elif interrupt.malformed:
            yield b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {\n\n'


def _event(name: str, payload: Any) -> bytes:
    # Non-ASCII text as raw UTF-8, as the API streams it; JSON leaves U+2028 and U+0085 unescaped too.
    return f"event: {name}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
