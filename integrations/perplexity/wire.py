"""Perplexity's final run object as the Agent API documents it (the Responses format), validated with pydantic.

Only the parts the adapter relies on are declared; anything else is ignored, so new fields do not
break it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from integrations.perplexity.answer import Source


class Wire(BaseModel):
    """The parts of the documented response this adapter relies on; anything else is ignored."""

    model_config = ConfigDict(extra="ignore")


class Cost(Wire):
    total_cost: float | None = None
    currency: str | None = None


class Usage(Wire):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int | None = None
    cost: Cost | None = None


class Error(Wire):
    message: str = ""
    code: str | int | None = None
    type: str | None = None


class IncompleteDetails(Wire):
    reason: str | None = None


class ContentPart(Wire):
    type: str
    text: str | None = None


class MessageItem(Wire):
    type: Literal["message"]
    content: list[ContentPart] = []


class SearchResult(Wire):
    url: str
    title: str | None = None
    snippet: str | None = None
    date: str | None = None


class SearchResultsItem(Wire):
    type: Literal["search_results"]
    results: list[SearchResult] = []


class Response(Wire):
    id: str
    status: Literal["completed", "failed", "cancelled", "incomplete", "in_progress", "queued"]
    model: str
    output: list[dict[str, Any]]
    usage: Usage | None = None
    error: Error | None = None
    incomplete_details: IncompleteDetails | None = None

    def text(self) -> str | None:
        """The answer's text from the message items; None when the output has no message."""
        parts: list[str] = []
        found = False
        for item in self.output:
            if item.get("type") != "message":
                continue
            found = True
            for part in MessageItem.model_validate(item).content:
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
            for result in SearchResultsItem.model_validate(item).results:
                url = result.url.strip()
                if url and url not in seen:
                    seen[url] = Source((result.title or "").strip(), url)
        return tuple(seen.values())
