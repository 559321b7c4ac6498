"""The crash soak's model: a strict fake Anthropic that answers each question with its own token, paced in real time.

A question carries a token (`q17 please`); its answer is `answer q17 w1 w2 … done.`, so any text
the user sees names the question it belongs to, and only a whole answer ends with "done.". The
answer's length is drawn per token from the seed, and every event of the stream is sent 20-50 ms
after the one before, so a reply takes about half a second to a second and a kill can land in
the middle of it.

With `requests_per_minute` it also enforces the account's request limit as Anthropic documents it
(a token bucket of that many requests, refilled continuously): a request finding less than one
left is refused with 429 `rate_limit_error` and a Retry-After, and every answer reports the
bucket in `anthropic-ratelimit-requests-*` headers. Several bot processes sharing one key share
the one bucket, so the refusals count what they sent beyond the limit together.
"""
from __future__ import annotations

import asyncio
import bisect
import math
import random
import re
import sys
import time
from datetime import datetime, timedelta, timezone
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


class RequestBucket:
    """A request limit as Anthropic enforces it: `per_minute` requests in a bucket refilled continuously.

    `take()` admits a request (None) or says how long until one would be admitted. Refused requests
    take nothing. The times of admitted requests are kept to find the busiest minute."""

    def __init__(self, per_minute: int) -> None:
        self.limit = per_minute
        self._rate = per_minute / 60.0  # requests earned a second
        self._level = float(per_minute)
        self._at = time.monotonic()
        self.admitted_at: list[float] = []
        self.refused = 0

    def take(self) -> float | None:
        self._refill()
        if self._level >= 1.0 - 1e-9:
            self._level -= 1.0
            self.admitted_at.append(self._at)
            return None
        self.refused += 1
        return (1.0 - self._level) / self._rate

    def headers(self) -> dict[str, str]:
        """anthropic-ratelimit-requests-*: what is left now, and when the bucket is full again."""
        self._refill()
        full_at = datetime.now(timezone.utc) + timedelta(seconds=(self.limit - self._level) / self._rate)
        return {
            "anthropic-ratelimit-requests-limit": str(self.limit),
            "anthropic-ratelimit-requests-remaining": str(math.floor(self._level + 1e-9)),
            "anthropic-ratelimit-requests-reset": full_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }

    def busiest_minute(self) -> int:
        """The most requests admitted within any 60 s (at most twice the limit: a full bucket spent,
        then a minute's refill)."""
        times = self.admitted_at
        return max((i + 1 - bisect.bisect_left(times, at - 60.0, 0, i + 1) for i, at in enumerate(times)), default=0)

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(float(self.limit), self._level + (now - self._at) * self._rate)
        self._at = now


class TokenAnswers(anth.FakeAnthropic):
    """`async with TokenAnswers(seed) as models:` then point the bot at `models.base_url`."""

    def __init__(self, seed: int, *, requests_per_minute: int | None = None) -> None:
        super().__init__(api_key=API_KEY, models=(MODEL,), limits=LIMITS)
        self._seed = seed
        self.bucket = RequestBucket(requests_per_minute) if requests_per_minute else None

    def limit_headers(self) -> dict[str, str]:
        headers = super().limit_headers()
        if self.bucket is not None:
            headers.update(self.bucket.headers())
        return headers

    def _messages(self, request: RecordedRequest, headers: dict[str, str], request_id: str) -> Response | Fault:
        token = question_token(request.json) or "q?"
        draws = random.Random(f"{self._seed}:{token}")
        text = answer_text(token, draws.randint(*WORDS))
        wait = self.bucket.take() if self.bucket is not None else None
        if wait is not None:
            assert self.bucket is not None
            message = f"This request would exceed the rate limit for your organization of {self.bucket.limit} requests per minute."
            self.script(anth.Fail(429, "rate_limit_error", message, {"retry-after": str(math.ceil(wait))}))
        else:
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
