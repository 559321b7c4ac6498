"""The Perplexity adapter: web searches through its Agent API (the OpenAI Responses format), streamed.

A thin adapter on the official openai SDK: `responses.create(stream=True)` against Perplexity's
base URL, with the Perplexity-only fields (`tools` with its search filters, `tool_choice`,
`preset`) in `extra_body`, so the SDK neither reshapes them nor adds fields of its own (the API
refuses any field it does not know). The SDK's retries are off: the resilience layer retries.

`PerplexitySearch.stream` yields `TextDelta`s as the answer is written, then one `SearchAnswer`
(read by `run.StreamedRun` from the terminal event). Every failure is one of the project's error
types.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping

from integrations.errors import AuthFailed, MalformedResponse, ModelNotFound, RateLimited, Unavailable, UpstreamError, Where
from integrations.http_errors import LimitHint, error_class_for_status, openai_limit_hint, utc_now
from integrations.perplexity.answer import SearchEvent, TextDelta
from integrations.perplexity.errors import SearchRunFailed, describe, error_from_event
from integrations.perplexity.query import SearchQuery
from integrations.perplexity.run import StreamedRun
from integrations.provider import SdkAdapter, root_cause_name

if TYPE_CHECKING:
    import openai

# The openai SDK (~0.2-0.4 s to import) is imported by the code that uses it, not here:
# handlers.search imports this package for its types even when search is not configured.

DEFAULT_BASE_URL = "https://api.perplexity.ai/v1"
DEFAULT_MODEL = "perplexity/sonar"
DEFAULT_INSTRUCTIONS = (
    "Search the web and answer the question accurately and concisely, in the language it is "
    "asked in. Cite the sources you rely on with bracketed numbers like [1]. Format the answer "
    "in Markdown without tables or HTML."
)


class PerplexitySearch(SdkAdapter):
    """Perplexity's Agent API through the openai SDK: one streamed web search per call."""

    # When a 429 has no Retry-After: the reset of Perplexity's whole budget.
    reset_header = "x-ratelimit-reset"

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
        from integrations.openai import OPENAI_SDK

        super().__init__(
            OPENAI_SDK,
            api_key=api_key,
            base_url=base_url,
            name=name,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            now=now,
        )
        self.model = model
        self.preset = preset
        self.max_results = max_results
        self.max_output_tokens = max_output_tokens
        self.instructions = instructions

    def __repr__(self) -> str:
        return f"PerplexitySearch(base_url={str(self._client.base_url)!r}, model={self.model!r}, preset={self.preset!r})"

    @property
    def label(self) -> str:
        """What answers: the preset if one is set, else the model."""
        return f"preset {self.preset}" if self.preset else self.model

    async def probe(self) -> None:
        """The cheapest live call (a few output tokens, no web search), for /health and `check`."""
        arguments: dict[str, Any] = {"input": "ping", "max_output_tokens": 16}
        extra: dict[str, Any] = {"preset": self.preset} if self.preset else {}
        if not self.preset:
            arguments["model"] = self.model
        try:
            response = await self._client.responses.with_raw_response.create(extra_body=extra, **arguments)
        except self._sdk.error as err:
            raise self._translate(err, request_id=None) from self._cause(err)
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
        arguments, extra = self.request(query)
        try:
            events = await self._client.responses.create(stream=True, extra_body=extra, **arguments)
        except self._sdk.error as err:
            raise self._translate(err, request_id=None) from self._cause(err)
        request_id = events.response.headers.get("x-request-id")
        run = StreamedRun(self.name, request_id)
        try:
            with self._reading(request_id, "stream event"):
                async for event in events:
                    delta = run.take(event)
                    if delta:
                        yield TextDelta(delta)
                    if run.finished:
                        break
        finally:
            await events.close()
        yield run.answer()

    def _translate(self, err: Exception, *, request_id: str | None) -> UpstreamError:
        import openai

        where: Where = {"upstream": self.name, "request_id": request_id}
        if isinstance(err, openai.APITimeoutError):
            return Unavailable("timed out", **where)
        if isinstance(err, openai.APIConnectionError):
            return Unavailable(f"connection failed ({root_cause_name(err)})", **where)
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
        where: Where = {"upstream": self.name, "status": status, "request_id": err.request_id}
        body = err.body if isinstance(err.body, Mapping) else {}
        kind = str(body.get("type") or "")
        if status in (401, 403):
            # The upstream's text may echo part of the key: say only what kind of refusal it was.
            return AuthFailed(f"credential refused ({kind or 'forbidden'})", **where)
        message = describe(body, self._api_key)
        if status == 429:
            return RateLimited(message, retry_after=self.rate_limit_wait(headers), **where)
        if status == 400 and (kind == "invalid_model" or body.get("param") in ("model", "models")):
            return ModelNotFound(message, **where)
        return error_class_for_status(status)(message, **where)

    def _limit_hint(self, headers: Mapping[str, str], now: datetime) -> LimitHint | None:
        return openai_limit_hint(headers)


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
