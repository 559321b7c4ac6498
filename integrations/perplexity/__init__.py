"""Web search through Perplexity's Agent API, streamed, with numbered sources.

- `query`: the question with its filters; `answer`: the answer with its sources, and the stream's events.
- `client`: `PerplexitySearch`, the adapter on the openai SDK (imported only when a search runs).
- `run`: one streamed run read event by event into an answer; `wire`: the documented response format.
- `errors`: which project error a Perplexity error object stands for.

Importing this package loads no SDK: `handlers.search` imports it for its types even when search
is not configured.
"""
from integrations.perplexity.answer import SearchAnswer, SearchEvent, SearchUsage, Source, TextDelta
from integrations.perplexity.client import (
    DEFAULT_BASE_URL,
    DEFAULT_INSTRUCTIONS,
    DEFAULT_MODEL,
    PerplexitySearch,
    probe,
)
from integrations.perplexity.errors import SearchRunFailed, error_from_event
from integrations.perplexity.query import RECENCY_FILTERS, SearchQuery
from integrations.perplexity.run import TERMINAL_EVENTS

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_MODEL",
    "RECENCY_FILTERS",
    "TERMINAL_EVENTS",
    "PerplexitySearch",
    "SearchAnswer",
    "SearchEvent",
    "SearchQuery",
    "SearchRunFailed",
    "SearchUsage",
    "Source",
    "TextDelta",
    "error_from_event",
    "probe",
]
