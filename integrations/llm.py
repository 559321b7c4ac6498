"""What a chat model provider is, as the rest of the bot sees it.

A provider streams text for one model and one request; it knows nothing of fallback, retries or
Telegram. Adapters (openai.py, anthropic.py) implement `ChatProvider` and raise only the types in
`integrations.errors`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Literal, Protocol, Sequence

if TYPE_CHECKING:  # Pillow is loaded only where images are read
    from integrations.images import Image

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    # Images sent with this message (a photo's question): only the turn that asks about them
    # carries them; history keeps a text placeholder ("[photo]") instead.
    images: tuple[Image, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: Sequence[ChatMessage]
    system: str | None = None
    max_tokens: int = 1024


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class ModelRef:
    """One entry of LLM_MODELS, e.g. `anthropic:claude-sonnet-4-6`."""

    provider: str
    model: str

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        provider, sep, model = text.strip().partition(":")
        if not sep or not provider or not model:
            raise ValueError(f"{text!r} is not provider:model")
        return cls(provider.strip().lower(), model.strip())

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass
class StreamResult:
    """Filled in by a provider while it streams: usage and the request id, once known."""

    usage: Usage = field(default_factory=Usage)
    request_id: str | None = None
    stop_reason: str | None = None


class ChatProvider(Protocol):
    name: str

    def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        """Yield text deltas; fill `result` with usage as it becomes known."""
        ...

    async def list_models(self) -> list[str]:
        """The model names the provider offers (start-up warns about configured ones it lacks)."""
        ...

    async def aclose(self) -> None: ...
