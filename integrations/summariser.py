"""A conversation's older turns as one summary, written by the cheapest model that answers in time.

The models are the chain's own, behind the same policies (breakers, rate limits, retries), tried
cheapest first for a request of this size (`PriceTable`; models without a price after those with
one): the cheapest model whose breaker is open or that fails hands over to the next cheapest.
The offline model is never asked: its summaries would lose what they replace. The whole attempt,
every model included, ends after `timeout` seconds on the injected clock. What it cost is known
however it ends (`UsageMeter`): a summary cut by the timeout is charged the tokens its stream
reported, or a fair estimate of them (the request, and the text received so far).
"""
from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Sequence

from integrations.chain import AllModelsFailed, ChainModel, Completed, ModelChain, TextDelta
from integrations.clock import Clock, wait_for
from integrations.context_window import estimate_tokens
from integrations.llm import ChatMessage, ModelRef, Usage
from integrations.prices import PriceTable
from integrations.usage_meter import UsageMeter

OFFLINE_PROVIDERS = frozenset({"local"})

SUMMARY_SYSTEM = (
    "You condense a chat between a user and an assistant so that the assistant can carry on "
    "without the full text. Keep what matters for the rest of the conversation: what the user "
    "said about themselves and what they want, facts, names, numbers, decisions, code and "
    "commands that were settled, and questions still open. Leave out greetings and small talk. "
    "Write in the language of the conversation, as short bullet points, in at most {words} words. "
    "Reply with the summary only."
)
ROLE_NAMES = {"user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Summarised:
    text: str
    model: ModelRef
    # Every model's tokens spent on it (a model that failed first included, estimated where cut).
    usage: tuple[tuple[ModelRef, Usage], ...]


class SummaryFailed(Exception):
    """No summary: every model failed, none is left to ask, or time ran out."""

    def __init__(self, reason: str, usage: Sequence[tuple[ModelRef, Usage]] = ()) -> None:
        super().__init__(reason)
        self.usage = tuple(usage)


def transcript(previous: str | None, turns: Sequence[ChatMessage]) -> str:
    """The request: the summary so far (if any) and the turns to fold into it."""
    lines = []
    if previous:
        lines += ["The summary so far:", previous.strip(), "", "The conversation after it:"]
    else:
        lines += ["The conversation:"]
    lines += [f"{ROLE_NAMES[turn.role]}: {turn.content}" for turn in turns]
    lines += ["", "Write the summary of all of the above" + (", the summary so far included." if previous else ".")]
    return "\n".join(lines)


class Summariser:
    def __init__(self, chain: ModelChain, prices: PriceTable, clock: Clock, *, timeout: float) -> None:
        self._chain = chain
        self._prices = prices
        self._clock = clock
        self._timeout = timeout

    def candidates(self, input_tokens: int, max_tokens: int) -> list[ChainModel]:
        """The chain's models that may summarise, cheapest first for a request of this size."""

        def cost(model: ChainModel) -> tuple[bool, float]:
            cost = self._prices.cost(model.ref, Usage(input_tokens, max_tokens))
            return (not cost.priced, cost.usd)

        return sorted((m for m in self._chain.models if m.ref.provider not in OFFLINE_PROVIDERS), key=cost)

    async def summarise(self, previous: str | None, turns: Sequence[ChatMessage], *, max_tokens: int) -> Summarised:
        request = transcript(previous, turns)
        system = SUMMARY_SYSTEM.format(words=max(50, int(max_tokens * 0.6)))
        models = self.candidates(estimate_tokens(request) + estimate_tokens(system), max_tokens)
        if not models:
            raise SummaryFailed("no model can summarise (the offline model is not asked)")
        meter = UsageMeter()
        chain = ModelChain([meter.metered(m) for m in models], self._clock, self._chain.timeouts, open_policy=self._chain.open_policy)
        try:
            written = await wait_for(self._clock, self._write(chain, request, system, max_tokens), self._timeout)
        except TimeoutError:
            raise SummaryFailed(f"no summary within {self._timeout:g} s", meter.spent()) from None
        except AllModelsFailed as error:
            raise SummaryFailed(str(error), meter.spent()) from None
        except SummaryFailed as failure:
            raise SummaryFailed(str(failure), meter.spent()) from None
        return replace(written, usage=meter.spent())

    async def _write(self, chain: ModelChain, request: str, system: str, max_tokens: int) -> Summarised:
        text = ""
        async with aclosing(chain.stream([ChatMessage("user", request)], system=system, max_tokens=max_tokens)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    text += event.text
                elif isinstance(event, Completed):
                    if not text.strip():
                        raise SummaryFailed(f"{event.model} returned an empty summary", event.usage)
                    return Summarised(text.strip(), event.model, event.usage)
        raise SummaryFailed("the summary ended without completing")
