"""What a group of model calls cost, however each ended: the usage it reported, or a fair estimate.

A stream that was cut (a hard timeout, a cancellation, a stall or a failure after it began) was
still billed for what the upstream had processed: the whole request's input and the output sent
so far. Providers report usage at the start (Anthropic's input tokens) or only at the very end
(OpenAI's last chunk), so a cut stream has reported little or nothing. The meter keeps what was
reported and fills in the rest from the request and the text received (`estimate_tokens`, the
estimate the rate limiter reserves by). A call refused before it sent any text (an error status)
is charged only what it reported, which is normally nothing; a finished one, what it reported.

`UsageMeter.metered(model)` wraps a chain model's provider (`chain(...)` every model of a chain);
the meter sees every stream opened through it (retries included) and `spent()` gives each one's
usage, in order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import AsyncIterator

from integrations.chain import ChainModel, ModelChain
from integrations.context_window import CHARS_PER_TOKEN, estimate_tokens
from integrations.errors import UpstreamError
from integrations.llm import ChatProvider, ChatRequest, ModelRef, StreamResult, Usage


@dataclass
class _Call:
    ref: ModelRef
    request: ChatRequest
    result: StreamResult
    received: int = 0  # characters of text the stream gave
    finished: bool = False
    refused: bool = False  # failed before any text

    def usage(self) -> Usage:
        reported = self.result.usage
        if self.finished or self.refused:
            return reported
        asked = sum(estimate_tokens(m.content) for m in self.request.messages) + estimate_tokens(self.request.system or "")
        sent = math.ceil(self.received / CHARS_PER_TOKEN)
        return Usage(reported.input_tokens or asked, max(reported.output_tokens, sent))


class _MeteredProvider:
    """A chat provider whose every stream is recorded in a meter's calls."""

    def __init__(self, provider: ChatProvider, ref: ModelRef, calls: list[_Call]) -> None:
        self.name = provider.name
        self._provider = provider
        self._ref = ref
        self._calls = calls

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        call = _Call(self._ref, request, result)
        self._calls.append(call)
        try:
            async for text in self._provider.stream(request, result):
                call.received += len(text)
                yield text
        except UpstreamError:
            call.refused = call.received == 0
            raise
        call.finished = True

    async def list_models(self) -> list[str]:
        return await self._provider.list_models()

    async def aclose(self) -> None:
        await self._provider.aclose()


class UsageMeter:
    def __init__(self) -> None:
        self._calls: list[_Call] = []

    def metered(self, model: ChainModel) -> ChainModel:
        """`model` with its streams recorded by this meter."""
        return replace(model, provider=_MeteredProvider(model.provider, model.ref, self._calls))

    def chain(self, chain: ModelChain) -> ModelChain:
        """`chain` with every model metered. While the offline model is still starting and no other
        model is there, the chain as it is (that model costs nothing)."""
        if not chain.models:
            return chain
        return replace(chain, models=[self.metered(model) for model in chain.models], starting=None)

    def spent(self) -> tuple[tuple[ModelRef, Usage], ...]:
        """Each call's usage (reported, or estimated where it was cut), calls that cost nothing left out."""
        usage = ((call.ref, call.usage()) for call in self._calls)
        return tuple((ref, used) for ref, used in usage if used.input_tokens or used.output_tokens)
