"""A web search question as the bot asks it: the text with its optional recency and site filters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RECENCY_FILTERS = ("day", "week", "month", "year")


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
