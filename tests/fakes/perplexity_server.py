"""A strict local Perplexity Agent API: `POST /v1/agent` and its twin `/v1/responses`.

Like the real API it refuses, with the documented 400 envelope, any field it does not know, at the
top level or nested in input items, tools and filters (Go's `json: unknown field "X"`). Streams are
`data: {one-line JSON}` events with `type` and `sequence_number`, no `event:` lines and no
`[DONE]`, ending with exactly one terminal event. Without `stream` the whole response is JSON.

Each request takes the next scripted behaviour, or the default once the script is empty: an
`Answer` (a run ending completed, failed, cancelled or incomplete, optionally interrupted after
some text deltas), a `Fail` (an HTTP error with the documented envelope and headers), or a bare
fault from `http_server` (RESET, STALL) sent instead of any response.
"""
from __future__ import annotations

import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal, Mapping, Sequence

from tests.fakes.http_server import HANG_UP, RESET, STALL, FakeUpstream, Fault, HttpServer, RecordedRequest, Response
from tests.fakes.openai_server import split_text

ENDPOINTS = ("/v1/agent", "/v1/responses")
PRESETS = ("fast", "low", "medium", "high", "xhigh")
RECENCY = ("hour", "day", "week", "month", "year")
DEFAULT_MODELS = ("perplexity/sonar", "openai/gpt-5.1", "anthropic/claude-sonnet-4-6")

# What the API knows; anything else is refused by name.
REQUEST_FIELDS = frozenset(
    {
        "model",
        "models",
        "preset",
        "input",
        "instructions",
        "max_output_tokens",
        "stream",
        "tools",
        "tool_choice",
        "reasoning",
        "response_format",
        "max_steps",
        "language_preference",
    }
)
INPUT_ITEM_FIELDS = frozenset({"type", "role", "content"})
TOOL_FIELDS = {
    "web_search": frozenset({"type", "filters", "max_results", "max_tokens_per_page", "user_location"}),
    "fetch_url": frozenset({"type", "max_urls"}),
    "function": frozenset({"type", "name", "description", "parameters", "strict"}),
}
FILTER_FIELDS = frozenset(
    {
        "search_domain_filter",
        "search_recency_filter",
        "search_after_date_filter",
        "search_before_date_filter",
        "last_updated_after_filter",
        "last_updated_before_filter",
    }
)
TOOL_CHOICE_FIELDS = frozenset({"type", "name"})
REASONING_FIELDS = frozenset({"effort"})

RunStatus = Literal["completed", "failed", "cancelled", "incomplete"]


@dataclass(frozen=True)
class Result:
    url: str
    title: str
    snippet: str = ""
    date: str | None = "2026-11-20"


DEFAULT_RESULTS = (
    Result("https://tokio.rs/tokio/tutorial", "Tokio tutorial", "Tokio is an asynchronous runtime for Rust."),
    Result("https://rust-lang.github.io/async-book/", "Asynchronous Programming in Rust", "The async book."),
)


@dataclass(frozen=True)
class Interrupt:
    """What breaks a run after `after_deltas` text deltas: a fault, an `error` event (flat as in the
    Responses format, or `nested` under "error"), a malformed line, or (none of them) a clean end
    of the body without a terminal event."""

    after_deltas: int
    fault: Fault | None = None
    error: Mapping[str, Any] | None = None
    nested: bool = False
    malformed: bool = False


@dataclass(frozen=True)
class Answer:
    text: str = "Most Rust async code runs on Tokio [1]; the async book explains the model [2]."
    results: Sequence[Result] = DEFAULT_RESULTS
    chunks: int = 3
    status: RunStatus = "completed"
    error: Mapping[str, Any] | None = None  # a failed run's error
    incomplete_reason: str = "max_output_tokens"
    headers: Mapping[str, str] = field(default_factory=dict)
    interrupt: Interrupt | None = None
    # The terminal event's response lacks required fields (status, output).
    malformed_final: bool = False


@dataclass(frozen=True)
class Fail:
    status: int
    type: str
    message: str
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


Behaviour = Answer | Fail | Fault


def rate_limited(*, retry_after: str | None = None, limit: int = 50, reset: str = "60") -> Fail:
    headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return Fail(429, "request_rate_limit_exceeded", "Too many requests, please slow down.", headers=headers)


def server_error(status: int = 500) -> Fail:
    kind = {500: "internal_error", 502: "bad_gateway", 503: "service_unavailable", 504: "gateway_timeout"}
    return Fail(status, kind.get(status, "internal_error"), "The server had an error processing your request.")


def failed_run(message: str = "The agent could not complete the request.", code: str = "internal_error") -> Answer:
    return Answer(text="", results=(), status="failed", error={"code": code, "message": message, "type": "server_error"})


def cancelled_run() -> Answer:
    return Answer(text="", results=(), status="cancelled")


def incomplete_run(text: str = "The answer was going to say more, but") -> Answer:
    return Answer(text=text, status="incomplete")


def no_results(text: str = "I could not find sources for this, but generally it depends.") -> Answer:
    return Answer(text=text, results=())


def nothing_found() -> Answer:
    return Answer(text="", results=())


def cut_after(deltas: int, *, abortive: bool = True) -> Answer:
    return Answer(chunks=6, interrupt=Interrupt(deltas, fault=RESET if abortive else HANG_UP))


def end_early(deltas: int) -> Answer:
    return Answer(chunks=6, interrupt=Interrupt(deltas))


def stall_after(deltas: int) -> Answer:
    return Answer(chunks=6, interrupt=Interrupt(deltas, fault=STALL))


def error_event_after(
    deltas: int, *, code: str = "internal_error", message: str = "Something went wrong.", nested: bool = False
) -> Answer:
    return Answer(chunks=6, interrupt=Interrupt(deltas, error={"code": code, "message": message}, nested=nested))


def malformed_after(deltas: int) -> Answer:
    return Answer(chunks=6, interrupt=Interrupt(deltas, malformed=True))


def malformed_final() -> Answer:
    return Answer(malformed_final=True)


class FakePerplexity(FakeUpstream):
    """`async with FakePerplexity(api_key=...) as fake:` then point the SDK at `fake.base_url`."""

    def __init__(
        self, *, api_key: str, default: Behaviour = Answer(), models: Sequence[str] = DEFAULT_MODELS
    ) -> None:
        self.api_key = api_key
        self.default = default
        self.models = list(models)
        self.server = HttpServer(self._handle)
        self.calls = 0  # agent requests received, refused ones included
        self._script: deque[Behaviour] = deque()
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"

    @property
    def agent_requests(self) -> list[RecordedRequest]:
        return [r for r in self.server.requests if r.path in ENDPOINTS]

    @property
    def bodies(self) -> list[Any]:
        return [r.json for r in self.agent_requests]

    def script(self, *behaviours: Behaviour) -> None:
        self._script.extend(behaviours)

    async def _handle(self, request: RecordedRequest) -> Response | Fault:
        agent = request.method == "POST" and request.path in ENDPOINTS
        self.calls += agent
        refusal = self._authenticate(request)
        if refusal is not None:
            return _error(refusal)
        if not agent:
            return _error(Fail(404, "not_found", f"{request.method} {request.path} not found"))
        body = request.json
        refusal = _validate(body, request.headers.get("content-type", ""), self.models)
        if refusal is not None:
            return _error(refusal)
        behaviour = self._script.popleft() if self._script else self.default
        if isinstance(behaviour, Fault):
            return behaviour
        if isinstance(behaviour, Fail):
            return _error(behaviour)
        run = _Run(f"resp_{next(self._ids):020d}", body, behaviour)
        if body.get("stream"):
            headers = {"content-type": "text/event-stream; charset=utf-8", **behaviour.headers}
            return Response(200, headers, run.events())
        return Response.json(run.response(behaviour.status, final=True), headers=behaviour.headers)

    def _authenticate(self, request: RecordedRequest) -> Fail | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not key:
            return Fail(401, "unauthorized", "Missing API key: send it as Authorization: Bearer <key>.")
        if key != self.api_key:
            return Fail(401, "unauthorized", f"Invalid API key {key[:4]}...")
        return None


class _Invalid(Exception):
    def __init__(self, fail: Fail) -> None:
        self.fail = fail


def _unknown(name: str) -> _Invalid:
    return _Invalid(Fail(400, "invalid_request", f'invalid request body: json: unknown field "{name}"', param=name))


def _wrong_type(where: str, expected: str, value: Any) -> _Invalid:
    got = {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "null"
    )
    return _Invalid(
        Fail(
            400,
            "invalid_request",
            f"invalid request body: json: cannot unmarshal {got} into Go struct field {where} of type {expected}",
            param=where,
        )
    )


def _invalid(message: str, param: str | None = None, kind: str = "invalid_request") -> _Invalid:
    return _Invalid(Fail(400, kind, message, param=param))


def _known(obj: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in obj:
        if name not in allowed:
            raise _unknown(name)


def _validate(body: Any, content_type: str, models: Sequence[str]) -> Fail | None:
    try:
        if not content_type.startswith("application/json") or not isinstance(body, dict):
            raise _invalid("invalid request body: expected a JSON object")
        _check_request(body, models)
    except _Invalid as invalid:
        return invalid.fail
    return None


def _check_request(body: dict[str, Any], models: Sequence[str]) -> None:
    _known(body, REQUEST_FIELDS)
    _typed(body, "model", str, "string")
    _typed(body, "preset", str, "string")
    _typed(body, "instructions", str, "string")
    _typed(body, "stream", bool, "bool")
    _typed(body, "max_output_tokens", int, "int")
    if not (body.get("model") or body.get("preset") or body.get("models")):
        raise _invalid("one of model, models or preset is required", param="model")
    if "preset" in body and body["preset"] not in PRESETS:
        raise _invalid(f"unknown preset {body['preset']!r}", param="preset")
    for model in [body.get("model"), *(body.get("models") or [])]:
        if model is not None and model not in models:
            raise _invalid(f"model {model!r} is not available", param="model", kind="invalid_model")
    if str(body.get("model", "")).startswith("anthropic/") and "max_output_tokens" not in body:
        raise _invalid("max_output_tokens is required for anthropic models", param="max_output_tokens")
    if "max_output_tokens" in body and body["max_output_tokens"] < 1:
        raise _invalid("max_output_tokens must be positive", param="max_output_tokens")
    _check_input(body.get("input"))
    for index, tool in enumerate(_array(body, "tools")):
        _check_tool(tool, index)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        _known(choice, TOOL_CHOICE_FIELDS)
    elif choice is not None and choice not in ("auto", "none", "required"):
        raise _invalid(f"invalid tool_choice {choice!r}", param="tool_choice")
    if isinstance(body.get("reasoning"), dict):
        _known(body["reasoning"], REASONING_FIELDS)


def _typed(obj: Mapping[str, Any], name: str, kind: type, label: str) -> None:
    value = obj.get(name)
    if value is None:
        return
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _wrong_type(name, label, value)


def _array(obj: Mapping[str, Any], name: str) -> list[Any]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong_type(name, "array", value)
    return value


def _check_input(value: Any) -> None:
    if value is None:
        raise _invalid("input is required", param="input")
    if isinstance(value, str):
        if not value.strip():
            raise _invalid("input must not be empty", param="input")
        return
    if not isinstance(value, list) or not value:
        raise _wrong_type("input", "string or array", value)
    for item in value:
        if not isinstance(item, dict):
            raise _wrong_type("input", "object", item)
        _known(item, INPUT_ITEM_FIELDS)
        if item.get("role") not in ("user", "assistant", "system", "developer"):
            raise _invalid("input items need a role of user, assistant, system or developer", param="role")


def _check_tool(tool: Any, index: int) -> None:
    if not isinstance(tool, dict):
        raise _wrong_type(f"tools[{index}]", "object", tool)
    kind = tool.get("type")
    if kind not in TOOL_FIELDS:
        raise _invalid(f"unknown tool type {kind!r}", param="type")
    _known(tool, TOOL_FIELDS[kind])
    if kind != "web_search":
        return
    _typed(tool, "max_results", int, "int")
    filters = tool.get("filters")
    if filters is None:
        return
    if not isinstance(filters, dict):
        raise _wrong_type("filters", "object", filters)
    _known(filters, FILTER_FIELDS)
    recency = filters.get("search_recency_filter")
    if recency is not None and recency not in RECENCY:
        raise _invalid(f"invalid search_recency_filter {recency!r}", param="search_recency_filter")
    domains = _array(filters, "search_domain_filter")
    if len(domains) > 20 or not all(isinstance(d, str) and d.strip("-") for d in domains):
        raise _invalid("search_domain_filter takes up to 20 domains", param="search_domain_filter")


def _error(fail: Fail) -> Response:
    envelope = {"error": {"message": fail.message, "type": fail.type, "code": fail.status}}
    if fail.param is not None:
        envelope["error"]["param"] = fail.param
    return Response.json(envelope, status=fail.status, headers=fail.headers)


class _Run:
    """One scripted run rendered as the documented response object and stream events."""

    def __init__(self, response_id: str, body: dict[str, Any], answer: Answer) -> None:
        self.id = response_id
        self.answer = answer
        self.model = body.get("model") or f"preset/{body.get('preset') or 'default'}"
        self.query = body["input"] if isinstance(body["input"], str) else str(body["input"][-1].get("content"))
        self.created_at = int(time.time())
        self.message_id = f"msg_{response_id[5:]}"
        self.pieces = split_text(answer.text, answer.chunks) if answer.text else []
        self.sequence = itertools.count(0)

    def search_item(self) -> dict[str, Any]:
        results = [
            {
                "id": index,
                "url": r.url,
                "title": r.title,
                "snippet": r.snippet,
                "date": r.date,
                "last_updated": r.date,
                "source": "web",
            }
            for index, r in enumerate(self.answer.results, 1)
        ]
        return {"type": "search_results", "queries": [self.query], "results": results}

    def message_item(self, text: str, status: str = "completed") -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": []}] if text or status == "completed" else []
        return {"type": "message", "id": self.message_id, "role": "assistant", "status": status, "content": content}

    def output(self, status: RunStatus) -> list[dict[str, Any]]:
        if status in ("failed", "cancelled"):
            return []
        return [self.search_item(), self.message_item(self.answer.text, "completed" if status == "completed" else "incomplete")]

    def response(self, status: str, *, final: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": self.output(self.answer.status) if final else [],
        }
        if final:
            output_tokens = len(self.answer.text.split())
            body["usage"] = {
                "input_tokens": 12,
                "output_tokens": output_tokens,
                "total_tokens": 12 + output_tokens,
                "cost": {
                    "input_cost": 0.000012,
                    "output_cost": 0.000001 * output_tokens,
                    "tool_calls_cost": 0.005,
                    "total_cost": 0.005012 + 0.000001 * output_tokens,
                    "currency": "USD",
                },
            }
            if status == "failed":
                body["error"] = dict(self.answer.error or {"code": "internal_error", "message": "The run failed."})
            if status == "incomplete":
                body["incomplete_details"] = {"reason": self.answer.incomplete_reason}
        if final and self.answer.malformed_final:
            del body["status"], body["output"]
        return body

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": next(self.sequence), **fields}
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    async def events(self) -> AsyncIterator[bytes | Fault]:
        answer = self.answer
        interrupt = answer.interrupt
        yield self.event("response.created", response=self.response("in_progress", final=False))
        yield self.event("response.in_progress", response=self.response("in_progress", final=False))
        if answer.status in ("failed", "cancelled"):
            yield self.event(f"response.{answer.status}", response=self.response(answer.status, final=True))
            return
        search = self.search_item()
        yield self.event("response.output_item.added", output_index=0, item={**search, "results": []})
        yield self.event("response.output_item.done", output_index=0, item=search)
        yield self.event("response.output_item.added", output_index=1, item=self.message_item("", "in_progress"))
        where = {"item_id": self.message_id, "output_index": 1, "content_index": 0}
        for index, piece in enumerate(self.pieces):
            if interrupt is not None and index == interrupt.after_deltas:
                async for item in self._interrupt(interrupt):
                    yield item
                if interrupt.fault is not STALL:
                    return
            yield self.event("response.output_text.delta", delta=piece, **where)
        if interrupt is not None and interrupt.after_deltas >= len(self.pieces):
            async for item in self._interrupt(interrupt):
                yield item
            if interrupt.fault is not STALL:
                return
        item_status = "completed" if answer.status == "completed" else "incomplete"
        yield self.event("response.output_text.done", text=answer.text, **where)
        yield self.event("response.output_item.done", output_index=1, item=self.message_item(answer.text, item_status))
        yield self.event(f"response.{answer.status}", response=self.response(answer.status, final=True))

    async def _interrupt(self, interrupt: Interrupt) -> AsyncIterator[bytes | Fault]:
        if interrupt.fault is not None:
            yield interrupt.fault
        elif interrupt.error is not None:
            if interrupt.nested:
                yield self.event("error", error={**interrupt.error, "type": "server_error"})
            else:
                yield self.event("error", param=None, **interrupt.error)
        elif interrupt.malformed:
            yield b'data: {"type":"response.output_text.delta","sequence_number":9,"delta":"bro\n\n'
