"""/search: a web search answered by Perplexity, streamed like a chat reply, then its sources.

`parse_search_query` turns the command's text into a `SearchQuery` (a pure function: trimmed,
whitespace collapsed, the bot's @name dropped, length capped, and the optional filters taken
out: a leading `day:`/`week:`/`month:`/`year:` and `site:`/`-site:` domains).

`SearchService` answers a query from the cache, or from Perplexity through the injected
`Upstream` (breaker, retry, rate limiter, per-attempt timeout), and caches only complete
answers. The command streams the answer, ends it with numbered sources, and records the
question and answer in the chat's history so follow-up questions can build on it.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, urlsplit

from handlers.chat import CUT_NOTE
from handlers.commands import Command
from handlers.lanes import USER_CANCEL
from handlers.render import escape_markdown
from handlers.reply import open_stream, reply
from handlers.services import Services
from handlers.stream import ReplyStream
from handlers.transport import IncomingMessage
from integrations.errors import (
    AuthFailed,
    BadRequest,
    CircuitOpen,
    MalformedResponse,
    QuotaExhausted,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from integrations.llm import ModelRef, Usage
from integrations.perplexity import (
    RECENCY_FILTERS,
    PerplexitySearch,
    SearchAnswer,
    SearchQuery,
    SearchRunFailed,
    Source,
    TextDelta,
)
from integrations.resilience.compose import Upstream
from state.cache import SqliteCache

log = logging.getLogger(__name__)

CACHE_KIND = "search"
MAX_DOMAINS = 20  # the API's limit for search_domain_filter
USAGE = "[day:|week:|month:|year:] <question> [site:example.com] [-site:example.com]"
USAGE_HELP = (
    "Search the web: /search <question>\n\n"
    "Optional filters:\n"
    "• start with day:, week:, month: or year: for recent pages only, e.g. /search week: rust async\n"
    "• site:example.com to search only that site, -site:example.com to leave it out"
)
NOT_CONFIGURED = (
    "Web search is not set up. The operator can enable it by setting PERPLEXITY_API_KEY "
    "(an API key from https://www.perplexity.ai/settings/api) and restarting the bot."
)
STOPPED_NOTE = "\n\n_(stopped)_"
INTERRUPTED_NOTE = "\n\n_(interrupted: the bot is restarting; I'll run this search again when it is back)_"

_RECENCY_PREFIX = re.compile(rf"({'|'.join(RECENCY_FILTERS)}):(.*)", re.IGNORECASE | re.DOTALL)
_SITE = re.compile(r"(-?)site:(.+)", re.IGNORECASE)
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")


@dataclass(frozen=True)
class SearchConfig:
    cache_ttl: float = 300.0
    max_query_chars: int = 1000
    # Our @name, dropped from queries (the transport strips it only at the start or the end).
    bot_username: str = ""


@dataclass(frozen=True)
class SearchOutcome:
    answer: SearchAnswer
    # Seconds since the answer was stored, when it came from the cache.
    cached_age: float | None = None


def parse_search_query(text: str, *, bot_username: str = "", max_chars: int = 1000) -> SearchQuery | None:
    """The normalised query and its filters; None when no question is left."""
    words = text.split()
    recency: str | None = None
    if words:
        prefix = _RECENCY_PREFIX.fullmatch(words[0])
        if prefix is not None:
            recency = prefix.group(1).lower()
            words = ([prefix.group(2)] if prefix.group(2) else []) + words[1:]
    mention = f"@{bot_username}".casefold() if bot_username else None
    domains: list[str] = []
    kept: list[str] = []
    for word in words:
        if mention is not None and word.casefold() == mention:
            continue
        domain = _site_filter(word)
        if domain is None:
            kept.append(word)
        elif domain not in domains and len(domains) < MAX_DOMAINS:
            domains.append(domain)
    question = " ".join(kept)
    if len(question) > max_chars:
        question = question[:max_chars].rsplit(" ", 1)[0] if " " in question[:max_chars] else question[:max_chars]
    if not question:
        return None
    return SearchQuery(question, recency, tuple(domains))


def _site_filter(word: str) -> str | None:
    """`site:example.com` -> "example.com", `-site:spam.com` -> "-spam.com"; None for other words."""
    match = _SITE.fullmatch(word)
    if match is None:
        return None
    target = match.group(2).strip().lower()
    host = urlsplit(target if "//" in target else f"//{target}").hostname or ""
    if not _DOMAIN.fullmatch(host):
        return None
    return f"{match.group(1)}{host}"


class SearchService:
    """Cache, then Perplexity through its resilience policies; only complete answers are cached."""

    def __init__(
        self,
        client: PerplexitySearch,
        cache: SqliteCache,
        upstream: Upstream | None,
        config: SearchConfig = SearchConfig(),
    ) -> None:
        self.client = client
        self.cache = cache
        self.upstream = upstream
        self.config = config

    def parse(self, text: str) -> SearchQuery | None:
        return parse_search_query(text, bot_username=self.config.bot_username, max_chars=self.config.max_query_chars)

    async def search(self, query: SearchQuery, on_text: Callable[[str], None] = lambda text: None) -> SearchOutcome:
        """The answer; `on_text` sees the text written so far (from scratch again if a retry starts over)."""
        key = self.client.cache_key(query)
        hit = await self.cache.get(CACHE_KIND, key)
        if hit is not None:
            try:
                return SearchOutcome(SearchAnswer.from_json(hit.value), cached_age=hit.age_seconds)
            except ValueError:
                log.warning("ignoring an unreadable cached search answer")

        async def attempt() -> SearchAnswer:
            return await self._fetch(query, on_text)

        answer = await (self.upstream.call(attempt, "agent") if self.upstream is not None else attempt())
        if answer.complete and not answer.found_nothing:
            await self.cache.put(CACHE_KIND, key, answer.to_json(), self.config.cache_ttl)
        return SearchOutcome(answer)

    async def _fetch(self, query: SearchQuery, on_text: Callable[[str], None]) -> SearchAnswer:
        text = ""
        async for event in self.client.stream(query):
            if isinstance(event, TextDelta):
                text += event.text
                on_text(text)
            else:
                return event
        raise MalformedResponse("the search stream ended without an answer", upstream=self.client.name)


SEARCH_BROKE = (
    "Sorry, something went wrong on my side during this search, so I stopped. "
    "The operator can see what happened in the log. Please try again later."
)


async def search(services: Services, message: IncomingMessage, args: str) -> None:
    service = services.features.search
    if service is None:
        await reply(services, message, NOT_CONFIGURED)
        return
    query = service.parse(args)
    if query is None:
        await reply(services, message, USAGE_HELP)
        return
    stream = open_stream(services, message)
    stream.start()
    try:
        await _answer(services, message, service, query, stream)
    finally:
        await stream.close()


async def _answer(
    services: Services, message: IncomingMessage, service: SearchService, query: SearchQuery, stream: ReplyStream
) -> None:
    shown = ""

    def show(text: str) -> None:
        nonlocal shown
        shown = text
        stream.update(text)

    try:
        outcome = await service.search(query, on_text=show)
    except asyncio.CancelledError:
        # /cancel or shutdown: keep what was shown and say why it stopped; nothing is cached.
        # A second cancel (a shutdown out of time) is not caught here.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if services.lanes.cancel_reason(message.chat_id) == USER_CANCEL:
            await stream.finish((shown or "…") + STOPPED_NOTE)
            return
        # A shutdown: the search runs again after the restart, replacing this.
        await stream.finish((shown or "…") + INTERRUPTED_NOTE)
        raise
    except UpstreamError as error:
        log.warning("search failed in chat %s: %s", message.chat_id, error)
        await stream.finish(failure_text(error))
        return
    except Exception:  # a bug or a storage fault: the user hears of it in this reply
        log.exception("search failed in chat %s", message.chat_id)
        await stream.finish(SEARCH_BROKE)
        return
    await stream.finish(format_outcome(query, outcome))
    answer = outcome.answer
    recorder = services.features.usage
    if recorder is not None and outcome.cached_age is None:
        tokens = Usage(answer.usage.input_tokens, answer.usage.output_tokens)
        await recorder.record(message.user_id, [(ModelRef("perplexity", answer.model), tokens)])
    if (answer.complete or cut_at_length(answer)) and not answer.found_nothing:
        # A cut answer is kept too, so /continue can have the chat model finish it.
        await services.history.record_exchange(
            message.chat_id, message.user_id, question_text(query), format_answer(answer), f"perplexity:{answer.model}"
        )


def cut_at_length(answer: SearchAnswer) -> bool:
    """Perplexity stopped at the output limit (`incomplete`, reason `max_output_tokens`)."""
    return not answer.complete and answer.incomplete_reason == "max_output_tokens"


def question_text(query: SearchQuery) -> str:
    """The question as the chat history keeps it, so follow-ups know it was a web search."""
    filters = [f"{query.recency}:"] if query.recency else []
    filters += [f"-site:{d[1:]}" if d.startswith("-") else f"site:{d}" for d in query.domains]
    suffix = f" ({' '.join(filters)})" if filters else ""
    return f"Web search: {query.text}{suffix}"


def format_outcome(query: SearchQuery, outcome: SearchOutcome) -> str:
    answer = outcome.answer
    if cut_at_length(answer) and not answer.found_nothing:
        text = format_answer(answer) + CUT_NOTE
    elif not answer.complete:
        reason = answer.incomplete_reason or "no reason given"
        text = f"⚠️ _The search stopped before the answer was complete ({escape_markdown(reason)}); "
        if answer.found_nothing:
            text += "it had nothing to show yet. Please try again._"
        else:
            text += "this is only part of it and was not saved._\n\n" + format_answer(answer)
    elif answer.found_nothing:
        text = f"🔎 Nothing found for “{escape_markdown(query.text[:200])}”. Try other words or fewer filters."
    else:
        text = format_answer(answer)
    if outcome.cached_age is not None:
        text += f"\n\n_cached {_age(outcome.cached_age)}_"
    return text


def format_answer(answer: SearchAnswer) -> str:
    """The answer's text, then its numbered sources (or a note that there are none)."""
    body = answer.text.strip()
    sources = [line for line in (_source_line(s) for s in answer.sources) if line]
    if not sources:
        note = "_No sources were returned for this answer, so check it elsewhere._"
        return f"{body}\n\n{note}" if body else note
    listing = "**Sources**\n" + "\n".join(f"{number}. {line}" for number, line in enumerate(sources, 1))
    if not body:
        return "No summary was written, but these pages matched:\n\n" + listing
    return f"{body}\n\n{listing}"


def _source_line(source: Source) -> str | None:
    parts = urlsplit(source.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    title = source.title or parts.hostname or source.url
    # Characters that would end the link destination early are percent-encoded.
    url = quote(source.url, safe=":/?#[]@!$&'*+,;=%~-._")
    return f"[{escape_markdown(title)}]({url})"


def _age(seconds: float) -> str:
    if seconds < 60:
        return "just now" if seconds < 5 else f"{int(seconds)} s ago"
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min ago"
    return f"{round(seconds / 3600)} h ago"


def failure_text(error: UpstreamError) -> str:
    if isinstance(error, SearchRunFailed):
        return (
            f"⚠️ The search did not finish: Perplexity reported the run as {error.run_status}. "
            "Nothing was saved; please try again in a minute."
        )
    if isinstance(error, CircuitOpen):
        return "Web search is paused after repeated Perplexity failures; please try again in a minute."
    if isinstance(error, RateLimited):
        wait = f" in {max(1, round(error.retry_after))} s" if error.retry_after else " in a minute"
        return f"Perplexity is limiting how often I can search right now; please try again{wait}."
    if isinstance(error, AuthFailed):
        return "Perplexity refused the bot's API key. The operator needs to check PERPLEXITY_API_KEY."
    if isinstance(error, QuotaExhausted):
        return "The Perplexity account is out of credit. The operator needs to top it up."
    if isinstance(error, MalformedResponse):
        return "Perplexity sent an answer I could not read, so I cannot show it. Please try again in a minute."
    if isinstance(error, BadRequest):
        return f"Perplexity refused this search ({escape_markdown(error.message[:200])}). Try rephrasing it."
    if isinstance(error, Unavailable):
        return "Perplexity is not answering right now. Please try again in a minute."
    return "The search failed. Please try again in a minute."


def search_commands() -> list[Command]:
    return [Command("search", "search the web (answers with sources)", search, queued=True, usage=USAGE, metered=True)]
