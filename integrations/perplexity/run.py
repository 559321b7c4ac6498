"""One streamed Perplexity run, read event by event: text deltas, then the terminal event's answer.

A run that ends `completed` or `incomplete` becomes a `SearchAnswer` (whose status says which);
`failed` or `cancelled` raises `SearchRunFailed`; an `error` event, a stream that ends before a
terminal event, or a final response that does not follow the documented format raise the
project error they stand for.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from integrations.errors import MalformedResponse, Unavailable, Where
from integrations.perplexity import wire
from integrations.perplexity.answer import SearchAnswer, SearchUsage
from integrations.perplexity.errors import SearchRunFailed, describe, error_from_event

TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete", "response.cancelled"})


class StreamedRun:
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
            response = wire.Response.model_validate(self.final)
            text = response.text()
            sources = response.sources()
        except (ValidationError, ValueError) as err:
            raise self.malformed(f"the final response does not follow the documented format ({_first_problem(err)})") from err
        where: Where = {"upstream": self.upstream, "request_id": self.request_id or response.id}
        if response.status == "failed":
            detail = describe(response.error.model_dump() if response.error else {})
            raise SearchRunFailed(f"the search run failed ({detail})", run_status="failed", **where)
        if response.status == "cancelled":
            raise SearchRunFailed("the search run was cancelled by Perplexity", run_status="cancelled", **where)
        if response.status not in ("completed", "incomplete"):
            raise self.malformed(f"the run ended with status {response.status!r}")
        usage = response.usage or wire.Usage()
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
    as_json: dict[str, Any] = to_dict(mode="json", warnings=False)
    return as_json


def _first_problem(err: Exception) -> str:
    if isinstance(err, ValidationError) and err.errors():
        problem = err.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ()))
        return f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg"))
    return str(err)[:120]
