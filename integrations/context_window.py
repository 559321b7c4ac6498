"""Fitting a conversation into a model's context window.

Token counts are estimated (about 3.5 characters a token for mixed prose and code, rounded up,
plus a few tokens of per-message overhead): cheap, provider-neutral, and on the safe side. The
newest messages are kept; the last message (the one being answered) always stays.

Images a turn carries (a photo's question) count as each provider documents them (see
/work/shared/API-FACTS.md), so an album takes its room from the older turns instead of
overflowing the window: Anthropic about width x height / 750 once the long edge is at most
1568 px; OpenAI (detail high) 85 + 170 per 512 px tile once fitted into 2048 x 2048 and its
short edge brought to 768 px. A provider neither documents (an OpenAI-compatible server's own
model) is counted by the larger of the two.

A summary of older turns (handlers/compaction.py) opens the conversation inside the first user
message, between two marker lines, rather than as a message of its own: two user messages in a
row are refused by some OpenAI-compatible servers' chat templates, and a made-up assistant reply
would put words in the model's mouth. Trimming keeps or drops it with that first question.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

from integrations.llm import ChatMessage

if TYPE_CHECKING:  # Pillow is loaded only where images are read
    from integrations.images import Image

CHARS_PER_TOKEN = 3.5
MESSAGE_OVERHEAD_TOKENS = 4
SUMMARY_OPENING = "[Summary of our conversation so far, written by the assistant]"
SUMMARY_CLOSING = "[End of summary; the conversation goes on from here]"


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN + 0.999) + MESSAGE_OVERHEAD_TOKENS


def estimate_conversation(messages: Sequence[ChatMessage], provider: str = "") -> int:
    return sum(message_tokens(message, provider) for message in messages)


def message_tokens(message: ChatMessage, provider: str = "") -> int:
    """A message's text and the images it carries, as `provider` ("anthropic", "openai") counts them."""
    return estimate_tokens(message.content) + sum(image_tokens(image, provider) for image in message.images)


def image_tokens(image: Image, provider: str = "") -> int:
    if provider == "anthropic":
        return _anthropic_image_tokens(image.width, image.height)
    if provider == "openai":
        return _openai_image_tokens(image.width, image.height)
    return max(_anthropic_image_tokens(image.width, image.height), _openai_image_tokens(image.width, image.height))


def _anthropic_image_tokens(width: float, height: float) -> int:
    scale = min(1.0, 1568 / max(width, height))
    return math.ceil(width * scale * height * scale / 750)


def _openai_image_tokens(width: float, height: float) -> int:
    box = min(1.0, 2048 / max(width, height))
    width, height = width * box, height * box
    short = min(1.0, 768 / min(width, height))
    width, height = width * short, height * short
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def with_summary(summary: str | None, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """`messages` opened by `summary` (of the turns before them), if there is one."""
    if not summary:
        return list(messages)
    opening = f"{SUMMARY_OPENING}\n{summary.strip()}\n{SUMMARY_CLOSING}"
    if messages and messages[0].role == "user":
        return [ChatMessage("user", f"{opening}\n\n{messages[0].content}"), *messages[1:]]
    return [ChatMessage("user", opening), *messages]


def trim_to_budget(messages: Sequence[ChatMessage], budget_tokens: int, provider: str = "") -> list[ChatMessage]:
    kept: list[ChatMessage] = []
    used = 0
    for message in reversed(messages):
        cost = message_tokens(message, provider)
        if kept and used + cost > budget_tokens:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    # A conversation must open with the user's turn.
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept
