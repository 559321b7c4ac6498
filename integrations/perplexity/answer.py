"""A web search answer as the bot streams and keeps it: text deltas, then the text with its sources and usage."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal


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


# What `PerplexitySearch.stream` yields: deltas as the answer is written, then the answer.
SearchEvent = TextDelta | SearchAnswer
