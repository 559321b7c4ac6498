"""Compaction: a conversation grown past a share of its model's window has its older turns summarised.

When the context (system prompt, summary so far and turns) passes `compact_at` of the answering
model's context window (the user's pick, else the chain's first), the older turns become one
summary (integrations/summariser.py) that stands in for them in every later request; the turns
stay stored. The newest turns, up to half of that threshold and at least the last one, stay as
they are. Each new summary folds in the one before.

When: right after an answer was delivered, in the chat's lane. The answer that crossed the
threshold still fitted (the threshold is below the window), so the user never waits for a
summary before an answer; running in the lane means one summary per conversation at a time and
the next question already sees it. A message sent meanwhile waits for it at most the
summariser's timeout (then the summary is given up).

When summarising fails or times out, nothing changes: the context is trimmed as before
(integrations/context_window.py), and the next answer tries again. After two failures in a row a
chat backs off, 5 minutes, then twice as long each time, up to an hour; the backoff is kept in the
database (state/compaction_backoff.py), so a restart does not send a failing summariser a burst of
requests. The summary's tokens are recorded in the user's usage, so they count against budgets like
any answer, also when it failed or timed out (what it was billed, or a fair estimate).

The size is measured with the system prompt the chat's answers use (its /mode or /prompt), since
that is what every request carries. The answer just delivered says what it was asked with and
what it said (`Asked`), so the check after it reads nothing from the database; the conversation is
read again only when it has grown past the threshold, to pick the turns to summarise.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from handlers.modes import PROMPT_MAX_CHARS, chat_prompt
from handlers.services import Services
from handlers.transport import IncomingMessage
from integrations.chain import ChainModel
from integrations.context_window import estimate_conversation, estimate_tokens, with_summary
from integrations.llm import ChatMessage, ModelRef, Usage
from integrations.summariser import Summariser, SummaryFailed
from state.compaction_backoff import CompactionBackoffs, SummaryBackoff
from state.history import StoredMessage, Summary, TurnMessage

log = logging.getLogger(__name__)

SUMMARY_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Asked:
    """What an answer already knows when compaction looks at its conversation: the context it was
    asked with as stored (summary included, no images) followed by its own words, the chat's
    system prompt, and the user's /model pick (not known after a `/retry <model>`, which asked
    another model: read again then)."""

    messages: list[ChatMessage]
    system: str
    users_model: ModelRef | None
    users_model_known: bool = True


@dataclass(frozen=True)
class CompactionSettings:
    # Summarise once the context passes this share of the answering model's window (COMPACT_AT).
    compact_at: float = 0.75
    # The newest turns kept as they are, as a share of that threshold.
    keep_share: float = 0.5
    # The longest summary, as a share of that threshold (and at most SUMMARY_MAX_TOKENS).
    summary_share: float = 0.25
    # Seconds a chat waits after its second failure in a row; doubled after each further one.
    first_backoff: float = 300.0
    max_backoff: float = 3600.0


class Compaction:
    def __init__(
        self, summariser: Summariser, backoffs: CompactionBackoffs, settings: CompactionSettings = CompactionSettings()
    ) -> None:
        self._summariser = summariser
        self._backoffs = backoffs
        self._settings = settings
        # Read from the database at the first answer, then kept here and written through.
        self._failures: dict[int, SummaryBackoff] | None = None
        self._loading = asyncio.Lock()

    async def after_answer(
        self, services: Services, message: IncomingMessage, stored: StoredMessage, asked: Asked | None = None
    ) -> None:
        """Summarise the older turns of `stored`'s conversation if it has grown too long. Never
        raises (but for cancellation): the user already has the answer. `asked`: what the answer
        knows of it (else it is read)."""
        try:
            await self._compact(services, message, stored, asked)
        except Exception:
            log.exception("compacting the conversation of chat %s failed; it is trimmed instead", stored.chat_id)

    async def _compact(
        self, services: Services, message: IncomingMessage, stored: StoredMessage, asked: Asked | None
    ) -> None:
        chat_id = stored.chat_id
        failures = (await self._known_failures()).get(chat_id)
        if failures is not None and services.clock.now() < failures.retry_at:
            return
        model = await _answering_model(services, message.user_id, asked)
        if model is None:
            return
        threshold = int(self._settings.compact_at * model.context_tokens)
        if asked is not None and estimate_conversation(asked.messages) + estimate_tokens(asked.system) <= threshold:
            return  # what the answer was asked and said is the conversation: nothing to read again
        summary, turns = await services.history.conversation_so_far(stored, with_its_answer=True)
        context = with_summary(summary.text if summary else None, [m for _, m in turns])
        size = estimate_conversation(context)
        if size + _longest_prompt_tokens(services) <= threshold:
            return  # far from it, whatever the chat's prompt: no need to read it
        size += estimate_tokens((await chat_prompt(services, chat_id)).text)
        if size <= threshold:
            return
        folded, covers_through = _oldest_turns(turns, keep_tokens=int(threshold * self._settings.keep_share))
        if not folded:
            return  # the newest turn alone is that long: trimming does what can be done
        max_tokens = max(64, min(SUMMARY_MAX_TOKENS, int(threshold * self._settings.summary_share)))
        try:
            result = await self._summariser.summarise(summary.text if summary else None, folded, max_tokens=max_tokens)
        except SummaryFailed as failure:
            await _record_usage(services, message, failure.usage)
            wait = await self._failed(chat_id, services)
            log.warning(
                "could not summarise the conversation of chat %s (%s); it is trimmed instead, next try %s",
                chat_id, failure, f"in {wait:g} s" if wait else "after the next answer",
            )
            return
        await _record_usage(services, message, result.usage)
        await services.history.record_summary(stored, Summary(result.text, covers_through), str(result.model))
        if (await self._known_failures()).pop(chat_id, None) is not None:
            await self._backoffs.succeeded(chat_id)
        log.info(
            "summarised %d messages (~%d tokens of ~%d) of chat %s into ~%d tokens with %s",
            len(folded), estimate_conversation(folded), size, chat_id, estimate_tokens(result.text), result.model,
        )

    async def _known_failures(self) -> dict[int, SummaryBackoff]:
        async with self._loading:
            if self._failures is None:
                self._failures = await self._backoffs.all()
        return self._failures

    async def _failed(self, chat_id: int, services: Services) -> float:
        """Count a failure (in the database too); the seconds until the chat may try again."""
        failures = await self._known_failures()
        previous = failures.get(chat_id)
        count = 1 if previous is None else previous.failures + 1
        settings = self._settings
        wait = 0.0 if count == 1 else min(settings.first_backoff * 2 ** (count - 2), settings.max_backoff)
        failures[chat_id] = SummaryBackoff(count, services.clock.now() + timedelta(seconds=wait))
        await self._backoffs.failed(chat_id, failures[chat_id])
        return wait


def _oldest_turns(turns: list[TurnMessage], *, keep_tokens: int) -> tuple[list[ChatMessage], int]:
    """The messages of the turns to summarise (all but the newest turns that fit in `keep_tokens`,
    and never the last turn), and the last of those turns."""
    kept_from = len(turns)
    used = 0
    while kept_from > 0:
        turn = turns[kept_from - 1][0]
        start = kept_from
        while start > 0 and turns[start - 1][0] == turn:
            start -= 1
        cost = estimate_conversation([m for _, m in turns[start:kept_from]])
        if kept_from < len(turns) and used + cost > keep_tokens:
            break
        used += cost
        kept_from = start
    folded = turns[:kept_from]
    return [m for _, m in folded], (folded[-1][0] if folded else 0)


def _longest_prompt_tokens(services: Services) -> int:
    """The most any chat's system prompt can add: the operator's, a mode's, or a /prompt's longest."""
    prompts = [services.chat.system_prompt, "x" * PROMPT_MAX_CHARS] + [m.prompt or "" for m in services.chat.modes]
    return max(estimate_tokens(prompt) for prompt in prompts)


async def _answering_model(services: Services, user_id: int, asked: Asked | None) -> ChainModel | None:
    """The model asked first for this user's next answer: their pick, else the chain's first."""
    if asked is not None and asked.users_model_known:
        pick = asked.users_model
    else:
        name = await services.preferences.model_for(user_id)
        pick = services.chain.find(name) if name else None
    ordered = services.chain.ordered(pick)
    return ordered[0] if ordered else None


async def _record_usage(services: Services, message: IncomingMessage, usage: tuple[tuple[ModelRef, Usage], ...]) -> None:
    recorder = services.features.usage
    if recorder is not None and usage:
        await recorder.record(message.user_id, usage)
