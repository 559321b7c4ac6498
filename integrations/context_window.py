"""Fitting a conversation into a model's context window.

Token counts are estimated (about 3.5 characters a token for mixed prose and code, rounded up,
plus a few tokens of per-message overhead): cheap, provider-neutral, and on the safe side. The
newest messages are kept; the last message (the one being answered) always stays.
"""
from __future__ import annotations

from typing import Sequence

from integrations.llm import ChatMessage

CHARS_PER_TOKEN = 3.5
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN + 0.999) + MESSAGE_OVERHEAD_TOKENS


def trim_to_budget(messages: Sequence[ChatMessage], budget_tokens: int) -> list[ChatMessage]:
    kept: list[ChatMessage] = []
    used = 0
    for message in reversed(messages):
        cost = estimate_tokens(message.content)
        if kept and used + cost > budget_tokens:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    # A conversation must open with the user's turn.
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept
