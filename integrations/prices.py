"""What a model's tokens cost, in US dollars per million tokens, and how money is shown.

Built-in prices cover the default models; `LLM_PRICES` adds or overrides entries. An entry may
name a bare model (`gpt-5.1`) or `provider:model`; the more specific one wins. Dated snapshots
(`claude-haiku-4-5-20251001`) fall back to their undated name. Models of the `local` provider are
free. Any other model has no price: its cost counts as 0 and is flagged, so nobody mistakes a
missing price for a free model.

Speech-to-text models are priced per minute of audio (`audio_cost`); `STT_PRICE_PER_MINUTE`
overrides the built-in price of the configured one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

from integrations.llm import ModelRef, Usage

FREE_PROVIDERS = frozenset({"local"})
_DATE_SUFFIX = re.compile(r"-\d{8}$")


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float


DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        "claude-sonnet-4-6": Price(3.0, 15.0),
        "claude-haiku-4-5": Price(1.0, 5.0),
        "gpt-5.1": Price(1.25, 10.0),
        "gpt-5-mini": Price(0.25, 2.0),
        # Token prices only; Perplexity's per-request search fee is not in this table.
        "perplexity/sonar": Price(1.0, 1.0),
    }
)


# USD per minute of audio, billed by the second. Groq prices by the hour: $0.111 and $0.04.
DEFAULT_AUDIO_PRICES: Mapping[str, float] = MappingProxyType(
    {
        "whisper-1": 0.006,
        "gpt-4o-transcribe": 0.006,
        "gpt-4o-mini-transcribe": 0.003,
        "whisper-large-v3": 0.111 / 60,
        "whisper-large-v3-turbo": 0.04 / 60,
    }
)


@dataclass(frozen=True)
class Cost:
    usd: float
    priced: bool


class PriceTable:
    def __init__(
        self,
        prices: Mapping[str, Price] = DEFAULT_PRICES,
        overrides: Sequence[tuple[str, float, float]] = (),
        *,
        audio_prices: Mapping[str, float] = DEFAULT_AUDIO_PRICES,
        audio_overrides: Mapping[str, float] | None = None,
    ) -> None:
        self._prices = {name.lower(): price for name, price in prices.items()}
        for model, input_price, output_price in overrides:
            self._prices[model.strip().lower()] = Price(input_price, output_price)
        self._audio_prices = {name.lower(): usd for name, usd in {**audio_prices, **(audio_overrides or {})}.items()}

    def price_for(self, ref: ModelRef) -> Price | None:
        if ref.provider in FREE_PROVIDERS:
            return Price(0.0, 0.0)
        model = ref.model.lower()
        for name in (f"{ref.provider}:{model}", model, _DATE_SUFFIX.sub("", model)):
            if name in self._prices:
                return self._prices[name]
        return None

    def cost(self, ref: ModelRef, usage: Usage) -> Cost:
        price = self.price_for(ref)
        if price is None:
            return Cost(0.0, priced=False)
        usd = (usage.input_tokens * price.input_per_million + usage.output_tokens * price.output_per_million) / 1e6
        return Cost(usd, priced=True)

    def audio_cost(self, model: str, seconds: float) -> Cost:
        """What transcribing `seconds` of audio with `model` costs (per minute, billed by the second)."""
        per_minute = self._audio_prices.get(model.strip().lower())
        if per_minute is None:
            return Cost(0.0, priced=False)
        return Cost(max(0.0, seconds) / 60 * per_minute, priced=True)


def format_usd(amount: float) -> str:
    """Dollars with cents; amounts under a cent keep enough digits not to read as $0.00."""
    if 0 < amount < 0.0001:
        return "<$0.0001"
    if 0 < amount < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"
