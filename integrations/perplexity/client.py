"""Web search through Perplexity's Agent API (the OpenAI Responses format), streamed.

A thin adapter on the official openai SDK: `responses.create(stream=True)` against Perplexity's
base URL, with the Perplexity-only fields (`tools` with its search filters, `tool_choice`,
`preset`) in `extra_body`, so the SDK neither reshapes them nor adds fields of its own (the API
refuses any field it does not know). The SDK's retries are off: the resilience layer retries.

`PerplexitySearch.stream` yields `TextDelta`s as the answer is written, then one `SearchAnswer`
parsed from the terminal event and validated with pydantic. Sources come from the
`search_results` output item (there are no top-level citations). A run that ends `failed` or
`cancelled` raises `SearchRunFailed`; a truncated one (`incomplete`) is a `SearchAnswer` whose
status says so. Every failure is one of the project's error types.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from integrations.errors import (
    AuthFailed,
    BadRequest,
    MalformedResponse,
    ModelNotFound,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from integrations.http_errors import (
    error_class_for_status,
    openai_limit_hint,
    parse_duration,
    retry_after_seconds,
    utc_now,
)

if TYPE_CHECKING:
    import openai

# The openai SDK (~0.2-0.4 s to import) is imported by the code that uses it, not here:
# handlers.search imports this module for its types even when search is not configured.

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.perplexity.ai/v1"
DEFAULT_MODEL = "perplexity/sonar"
RECENCY_FILTERS = ("day", "week", "month", "year")
DEFAULT_INSTRUCTIONS = (
    "Search the web and answer the question accurately and concisely, in the language it is "
    "asked in. Cite the sources you rely on with bracketed numbers like [1]. Format the answer "
    "in Markdown without tables or HTML."
)
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete", "response.cancelled"})
_MESSAGE_LIMIT = 300
# A reset this large is a Unix time, not a number of seconds.
_EPOCH_THRESHOLD = 1_000_000_000


@dataclass(frozen=True)
class SearchQuery:
    """A normalised question with its optional filters; `handlers.search` builds it from a command."""

    text: str
    recency: str | None = None
    # "example.com" to search only there, "-spam.com" to leave it out.
    domains: tuple[str, ...] = ()

    def filters(self) -> dict[str, Any]:
        filters: dict[str, Any] = {}
        if self.recency is not None:
            filters["search_recency_filter"] = self.recency
        if self.domains:
            filters["search_domain_filter"] = list(self.domains)
        return filters


@dataclass(frozen=True)
class Source:
    title: str
    url: str


@dataclass(frozen=True)
class SearchUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    currency: str | None = None


@dataclass(frozen=True)
class SearchAnswer:
    text: str
    sources: tuple[Source, ...]
    model: str
    status: Literal["completed", "incomplete"] = "completed"
    incomplete_reason: str | None = None
    usage: SearchUsage = field(default_factory=SearchUsage)
    response_id: str | None = None

    @property
    def complete(self) -> bool:
        return self.status == "completed"

    @property
    def found_nothing(self) -> bool:
        return not self.text.strip() and not self.sources

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> SearchAnswer:
        """Rebuild a stored answer; ValueError if it is not one."""
        try:
            data = json.loads(text)
            return cls(
                text=data["text"],
                sources=tuple(Source(s["title"], s["url"]) for s in data["sources"]),
                model=data["model"],
                status=data["status"],
                incomplete_reason=data.get("incomplete_reason"),
                usage=SearchUsage(**data.get("usage", {})),
                response_id=data.get("response_id"),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a stored search answer ({type(err).__name__})") from err


@dataclass(frozen=True)
class TextDelta:
    text: str


SearchEvent = TextDelta | SearchAnswer


class SearchRunFailed(Unavailable):
    """Perplexity took the request, but the run ended `failed` or `cancelled` instead of answering."""

    def __init__(self, message: str, *, run_status: str, **where: Any) -> None:
        super().__init__(message, **where)
        self.run_status = run_status


class PerplexitySearch:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        preset: str | None = None,
        max_results: int = 5,
        max_output_tokens: int = 1024,
        instructions: str = DEFAULT_INSTRUCTIONS,
        name: str = "perplexity",
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.name = name
        self.model = model
        self.preset = preset
        self.max_results = max_results
        self.max_output_tokens = max_output_tokens
        self.instructions = instructions
        self._api_key = api_key
        self._now = now
        import openai

        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=openai.Timeout(read_timeout, connect=connect_timeout),
        )

    def __repr__(self) -> str:
        return f"PerplexitySearch(base_url={str(self._client.base_url)!r}, model={self.model!r}, preset={self.preset!r})"

    @property
    def label(self) -> str:
        """What answers: the preset if one is set, else the model."""
        return f"preset {self.preset}" if self.preset else self.model

    def set_api_key(self, api_key: str) -> None:
        """Use a rotated key from the next request on."""
        self._api_key = api_key
        self._client.api_key = api_key

    async def aclose(self) -> None:
        await self._client.close()

    async def probe(self) -> None:
        """The cheapest live call (a few output tokens, no web search), for /health and `check`."""
        arguments: dict[str, Any] = {"input": "ping", "max_output_tokens": 16}
        extra: dict[str, Any] = {"preset": self.preset} if self.preset else {}
        if not self.preset:
            arguments["model"] = self.model
        import openai

        try:
            response = await self._client.responses.with_raw_response.create(extra_body=extra, **arguments)
        except openai.OpenAIError as err:
            raise self._translate(err, request_id=None) from _cause(err)
        body = json.loads(response.http_response.text)
        if body.get("status") == "failed":
            raise SearchRunFailed("the probe run failed", upstream=self.name, run_status="failed")

    def cache_key(self, query: SearchQuery) -> str:
        """Same question, filters and search setup, same key; nothing about who asked."""
        return json.dumps(
            {
                "q": query.text.casefold(),
                "recency": query.recency,
                "domains": sorted(domain.casefold() for domain in query.domains),
                "model": None if self.preset else self.model,
                "preset": self.preset,
                "max_results": self.max_results,
            },
            sort_keys=True,
            ensure_ascii=False,
        )

    def request(self, query: SearchQuery) -> tuple[dict[str, Any], dict[str, Any]]:
        """(SDK keyword arguments, extra_body) for one search: only fields the Agent API knows."""
        arguments: dict[str, Any] = {
            "input": query.text,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
        }
        web_search: dict[str, Any] = {"type": "web_search", "max_results": self.max_results}
        filters = query.filters()
        if filters:
            web_search["filters"] = filters
        extra: dict[str, Any] = {}
        if self.preset:
            # A preset bundles model and tools; a tool is added only to carry the user's filters.
            extra["preset"] = self.preset
            if filters:
                extra["tools"] = [web_search]
        else:
            arguments["model"] = self.model
            # Without the tool the model answers from memory; tool_choice makes it search.
            extra["tools"] = [web_search]
            extra["tool_choice"] = {"type": "web_search"}
        return arguments, extra

    async def stream(self, query: SearchQuery) -> AsyncIterator[SearchEvent]:
        import openai

        arguments, extra = self.request(query)
        try:
            events = await self._client.responses.create(stream=True, extra_body=extra, **arguments)
        except openai.OpenAIError as err:
            raise self._translate(err, request_id=None) from _cause(err)
        request_id = events.response.headers.get("x-request-id")
        run = _Run(self.name, request_id)
        try:
            async for event in events:
                delta = run.take(event)
                if delta:
                    yield TextDelta(delta)
                if run.finished:
                    break
        except openai.OpenAIError as err:
            raise self._translate(err, request_id=request_id) from _cause(err)
        except ValueError as err:
            # json.JSONDecodeError and UnicodeDecodeError: an event that is not the documented JSON.
            raise MalformedResponse(
                f"unreadable stream event ({type(err).__name__})", upstream=self.name, request_id=request_id
            ) from err
        finally:
            await events.close()
        yield run.answer()

    def _translate(self, err: openai.OpenAIError, *, request_id: str | None) -> UpstreamError:
        import openai

        where: dict[str, Any] = {"upstream": self.name, "request_id": request_id}
        if isinstance(err, openai.APITimeoutError):
            return Unavailable("timed out", **where)
        if isinstance(err, openai.APIConnectionError):
            return Unavailable(f"connection failed ({_root_cause_name(err)})", **where)
        if isinstance(err, openai.APIResponseValidationError):
            return MalformedResponse("response does not follow the documented schema", **where)
        if isinstance(err, openai.APIStatusError):
            return self._from_status(err)
        if isinstance(err, openai.APIError):
            # `{"error": {...}}` inside the 200 stream: the SDK raises it with the inner object as body.
            body = err.body if isinstance(err.body, Mapping) else {"message": err.message}
            return error_from_event(body, upstream=self.name, request_id=request_id, redact=self._api_key)
        return Unavailable(f"client error ({type(err).__name__})", **where)

    def _from_status(self, err: openai.APIStatusError) -> UpstreamError:
        status = err.status_code
        headers = err.response.headers
        where: dict[str, Any] = {"upstream": self.name, "status": status, "request_id": err.request_id}
        body = err.body if isinstance(err.body, Mapping) else {}
        kind = str(body.get("type") or "")
        if status in (401, 403):
            # The upstream's text may echo part of the key: say only what kind of refusal it was.
            return AuthFailed(f"credential refused ({kind or 'forbidden'})", **where)
        message = _describe(body, self._api_key)
        if status == 429:
            return RateLimited(message, retry_after=self.rate_limit_wait(headers), **where)
        if status == 400 and (kind == "invalid_model" or body.get("param") in ("model", "models")):
            return ModelNotFound(message, **where)
        return error_class_for_status(status)(message, **where)

    def rate_limit_wait(self, headers: Mapping[str, str]) -> float | None:
        """Retry-After when given; else when the exhausted X-RateLimit-* budget resets."""
        now = self._now()
        asked = retry_after_seconds(headers, now)
        if asked is not None:
            return asked
        fields = {name.lower(): value for name, value in headers.items()}
        reset = _reset_seconds(fields.get("x-ratelimit-reset"), now)
        if reset is not None:
            return reset
        hint = openai_limit_hint(headers)
        return hint.exhausted_reset_s() if hint is not None else None


def error_from_event(
    body: Mapping[str, Any], *, upstream: str, request_id: str | None = None, redact: str = ""
) -> UpstreamError:
    """The project error an `error` event (or a failed run's `error`) stands for."""
    inner = body.get("error")
    error = inner if isinstance(inner, Mapping) else body
    code = error.get("code")
    kind = str(error.get("type") or "")
    where: dict[str, Any] = {"upstream": upstream, "request_id": request_id}
    message = _describe(error, redact)
    status = _status_code(code)
    if status is not None:
        return error_class_for_status(status)(message, status=status, **where)
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


class _Wire(BaseModel):
    """The parts of the documented response this adapter relies on; anything else is ignored."""

    model_config = ConfigDict(extra="ignore")


class _Cost(_Wire):
    total_cost: float | None = None
    currency: str | None = None


class _Usage(_Wire):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int | None = None
    cost: _Cost | None = None


class _Error(_Wire):
    message: str = ""
    code: str | int | None = None
    type: str | None = None


class _IncompleteDetails(_Wire):
    reason: str | None = None


class _ContentPart(_Wire):
    type: str
    text: str | None = None


class _MessageItem(_Wire):
    type: Literal["message"]
    content: list[_ContentPart] = []


class _SearchResult(_Wire):
    url: str
    title: str | None = None
    snippet: str | None = None
    date: str | None = None


class _SearchResultsItem(_Wire):
    type: Literal["search_results"]
    results: list[_SearchResult] = []


class _Response(_Wire):
    id: str
    status: Literal["completed", "failed", "cancelled", "incomplete", "in_progress", "queued"]
    model: str
    output: list[dict[str, Any]]
    usage: _Usage | None = None
    error: _Error | None = None
    incomplete_details: _IncompleteDetails | None = None

    def text(self) -> str | None:
        """The answer's text from the message items; None when the output has no message."""
        parts: list[str] = []
        found = False
        for item in self.output:
            if item.get("type") != "message":
                continue
            found = True
            for part in _MessageItem.model_validate(item).content:
                if part.type == "output_text":
                    if part.text is None:
                        raise ValueError("an output_text part has no text")
                    parts.append(part.text)
        return "".join(parts) if found else None

    def sources(self) -> tuple[Source, ...]:
        seen: dict[str, Source] = {}
        for item in self.output:
            if item.get("type") != "search_results":
                continue
            for result in _SearchResultsItem.model_validate(item).results:
                url = result.url.strip()
                if url and url not in seen:
                    seen[url] = Source((result.title or "").strip(), url)
        return tuple(seen.values())


class _Run:
    """Reads one streamed run: collects the text deltas, then the terminal event."""

    def __init__(self, upstream: str, request_id: str | None) -> None:
        self.upstream = upstream
        self.request_id = request_id
        self.text = ""
        self.final: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.final is not None

    def take(self, event: Any) -> str:
        """The text an event adds (if any); raises the project error an `error` event stands for."""
        kind = getattr(event, "type", None)
        if kind == "response.output_text.delta":
            delta = getattr(event, "delta", None)
            if not isinstance(delta, str):
                raise self.malformed("a text delta event has no text")
            self.text += delta
            return delta
        if kind in TERMINAL_EVENTS:
            response = _as_dict(event).get("response")
            if not isinstance(response, dict):
                raise self.malformed(f"{kind} carries no response")
            self.final = response
        elif kind == "error":
            raise error_from_event(_as_dict(event), upstream=self.upstream, request_id=self.request_id)
        # Anything else (created, in_progress, output items, reasoning steps, new types) says nothing we need.
        return ""

    def answer(self) -> SearchAnswer:
        if self.final is None:
            raise Unavailable(
                "the stream ended before the search finished", upstream=self.upstream, request_id=self.request_id
            )
        try:
            response = _Response.model_validate(self.final)
            text = response.text()
            sources = response.sources()
        except (ValidationError, ValueError) as err:
            raise self.malformed(f"the final response does not follow the documented format ({_first_problem(err)})") from err
        where: dict[str, Any] = {"upstream": self.upstream, "request_id": self.request_id or response.id}
        if response.status == "failed":
            detail = _describe(response.error.model_dump() if response.error else {}, "")
            raise SearchRunFailed(f"the search run failed ({detail})", run_status="failed", **where)
        if response.status == "cancelled":
            raise SearchRunFailed("the search run was cancelled by Perplexity", run_status="cancelled", **where)
        if response.status not in ("completed", "incomplete"):
            raise self.malformed(f"the run ended with status {response.status!r}")
        usage = response.usage or _Usage()
        truncated_by = response.incomplete_details.reason if response.incomplete_details else None
        return SearchAnswer(
            # The final response is authoritative; the deltas stand in when it carries no message.
            text=text if text is not None else self.text,
            sources=sources,
            model=response.model,
            status=response.status,
            incomplete_reason=truncated_by if response.status == "incomplete" else None,
            usage=SearchUsage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost=usage.cost.total_cost if usage.cost else None,
                currency=usage.cost.currency if usage.cost else None,
            ),
            response_id=response.id,
        )

    def malformed(self, message: str) -> MalformedResponse:
        return MalformedResponse(message, upstream=self.upstream, request_id=self.request_id)


def _as_dict(event: Any) -> dict[str, Any]:
    """An SDK event as the JSON it came from (the SDK keeps fields its own models lack)."""
    to_dict = getattr(event, "to_dict", None)
    if to_dict is None:
        return event if isinstance(event, dict) else {}
    # The SDK builds Perplexity's own output items into OpenAI classes leniently; that is expected.
    return to_dict(mode="json", warnings=False)


def _describe(error: Mapping[str, Any], redact: str) -> str:
    label = error.get("type") or error.get("code") or "error"
    message = error.get("message")
    message = message if isinstance(message, str) else ""
    if redact:
        message = message.replace(redact, "[redacted]")
    return f"{label}: {message[:_MESSAGE_LIMIT]}" if message else str(label)


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


def _reset_seconds(value: str | None, now: datetime) -> float | None:
    """X-RateLimit-Reset as seconds, a Go-style duration, or a Unix time."""
    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError:
            return None
    if not math.isfinite(number) or number < 0:
        return None
    if number >= _EPOCH_THRESHOLD:
        return max(0.0, number - now.timestamp())
    return number


def _first_problem(err: Exception) -> str:
    if isinstance(err, ValidationError) and err.errors():
        problem = err.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ()))
        return f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg"))
    return str(err)[:120]


def _root_cause_name(err: BaseException) -> str:
    cause = err.__cause__ or err.__context__
    return type(cause).__name__ if cause is not None else type(err).__name__


def _cause(err: openai.OpenAIError) -> BaseException | None:
    """Keep the SDK error as the cause, except a refused credential whose text may echo the key."""
    import openai

    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return None
    return err


async def probe(settings: Any) -> str:
    """`switchboard check`: one tiny answer without web search (a few output tokens, no search fee)."""
    client = PerplexitySearch(
        api_key=settings.api_key.reveal(), base_url=settings.base_url, model=settings.model, preset=settings.preset
    )
    try:
        await client.probe()
    finally:
        await client.aclose()
    return f"answered ({client.label})"
