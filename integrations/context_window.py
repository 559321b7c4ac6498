"""Fitting a conversation into a model's context window.

Token counts are estimated (about 3.5 characters a token for mixed prose and code, rounded up,
plus a few tokens of per-message overhead): cheap, provider-neutral, and on the safe side. The
newest messages are kept; the last message (the one being answered) always stays.

A summary of older turns (handlers/compaction.py) opens the conversation inside the first user
message, between two marker lines, rather than as a message of its own: two user messages in a
row are refused by some OpenAI-compatible servers' chat templates, and a made-up assistant reply
would put words in the model's mouth. Trimming keeps or drops it with that first question.
"""
from __future__ import annotations

from typing import Sequence

from integrations.llm import ChatMessage

CHARS_PER_TOKEN = 3.5
MESSAGE_OVERHEAD_TOKENS = 4
SUMMARY_OPENING = "[Summary of our conversation so far, written by the assistant]"
SUMMARY_CLOSING = "[End of summary; the conversation goes on from here]"


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN + 0.999) + MESSAGE_OVERHEAD_TOKENS


def estimate_conversation(messages: Sequence[ChatMessage]) -> int:
    return sum(estimate_tokens(message.content) for message in messages)


def with_summary(summary: str | None, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """`messages` opened by `summary` (of the turns before them), if there is one."""
    if not summary:
        return list(messages)
    opening = f"{SUMMARY_OPENING}\n{summary.strip()}\n{SUMMARY_CLOSING}"
    if messages and messages[0].role == "user":
        return [ChatMessage("user", f"{opening}\n\n{messages[0].content}"), *messages[1:]]
    return [ChatMessage("user", opening), *messages]


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
