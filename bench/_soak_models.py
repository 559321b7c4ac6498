"""The crash soak's model: a strict fake Anthropic that answers each question with its own token, paced in real time.

A question carries a token (`q17 please`); its answer is `answer q17 w1 w2 … done.`, so any text
the user sees names the question it belongs to, and only a whole answer ends with "done.". The
answer's length is drawn per token from the seed, and every event of the stream is sent 20-50 ms
after the one before, so a reply takes about half a second to a second and a kill can land in
the middle of it.
"""
from __future__ import annotations

import asyncio
import random
import re
import sys
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator

# `make bench` runs every bench/*.py, this helper too: it then only imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes import anthropic_server as anth  # noqa: E402
from tests.fakes.http_server import Fault, RecordedRequest, Response  # noqa: E402

MODEL = "claude-test"
API_KEY = "sk-ant-soak-0000000000000000000000000000"
TOKEN = re.compile(r"\bq\d+\b")
EVENT_GAP = (0.02, 0.05)  # seconds between stream events
WORDS = (6, 18)  # filler words per answer
# Limits the bot reads from the response headers: generous, so the bot's own limiter never waits.
LIMITS = {"requests": (100_000, 99_999, 1.0), "tokens": (100_000_000, 99_999_000, 1.0)}


def answer_text(token: str, words: int) -> str:
    return f"answer {token} " + " ".join(f"w{i}" for i in range(1, words + 1)) + " done."


def question_token(body: Any) -> str | None:
    """The last token of the last user turn in a Messages API request body (the adapter merges
    neighbouring user messages into one turn, e.g. an unanswered question before this one)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        text = content if isinstance(content, str) else " ".join(
            block.get("text", "") for block in content or [] if isinstance(block, dict)
        )
        found = TOKEN.findall(text)
        return found[-1] if found else None
    return None


class TokenAnswers(anth.FakeAnthropic):
    """`async with TokenAnswers(seed) as models:` then point the bot at `models.base_url`."""

    def __init__(self, seed: int) -> None:
        super().__init__(api_key=API_KEY, models=(MODEL,), limits=LIMITS)
        self._seed = seed

    def _messages(self, request: RecordedRequest, headers: dict[str, str], request_id: str) -> Response | Fault:
        token = question_token(request.json) or "q?"
        draws = random.Random(f"{self._seed}:{token}")
        text = answer_text(token, draws.randint(*WORDS))
        self.script(anth.Reply(text, chunks=len(text.split())))
        try:
            response = super()._messages(request, headers, request_id)
        finally:
            self._script.clear()  # a refused request leaves its answer unused
        if isinstance(response, Response) and not isinstance(response.body, bytes):
            response.body = _paced(response.body, draws)
        return response


async def _paced(events: AsyncIterable[bytes | Fault], draws: random.Random) -> AsyncIterator[bytes | Fault]:
    async for event in events:
        await asyncio.sleep(draws.uniform(*EVENT_GAP))
        yield event
