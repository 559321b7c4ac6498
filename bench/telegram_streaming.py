"""50, 200 and 1,000 chats streaming at once against a fake Telegram that answers any excess with FloodWait.

The fake enforces 1 call a second per chat (edits and drafts count), 20 a minute per group and 30
a second overall, raising Telethon's FloodWaitError on any violation, and judges each call when it
lands: every call travels 30-150 ms each way (seeded), so calls in flight count. Every reply goes
through the real pieces: ReplyStream (latest-text pump) -> GovernedTransport (flood governor) ->
TelegramTransport -> the fake client. Half the chats are groups (streamed by edits), half private
(streamed as drafts). Time is virtual (ManualClock), so the numbers are exact and repeatable.

Each size runs twice in the same process: with the governor as it is, and with the baseline that
counted a call from its start only, as if it landed at once, and queued typing like any call (the
governor before issue 10).
Prints FloodWaits caused (target 0), the calls made (refused ones included), and the delay from the
end of generation until the final text has landed at the server, where the user sees it (p50/p95/max).

Run: .venv/bin/python bench/telegram_streaming.py
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable, Sequence, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.telegram.flood_governor import (  # noqa: E402
    FloodGovernor,
    GovernedTransport,
    _ChatScope,
    _SlidingWindow,
)
from bot.telegram.transport import TelegramTransport  # noqa: E402
from handlers.stream import ReplyStream  # noqa: E402
from integrations.clock import ManualClock  # noqa: E402
from tests.fakes.telegram import FakeTelegramClient  # noqa: E402

T = TypeVar("T")

CHAT_COUNTS = (50, 200, 1000)
WORDS = 120
WORD_GAP = 0.08  # ~12 words a second: a fast model, about 10 s per reply
LATENCY = (0.03, 0.15)  # each way, seconds


class StartsOnlyGovernor(FloodGovernor):
    """The governor before issue 10: a call's places and its chat's pace ran from its start, as if it
    landed at once, and typing queued for the global budget like any other call."""

    async def _make(
        self, call: Callable[[], Awaitable[T]], windows: Sequence[_SlidingWindow], scope: _ChatScope | None
    ) -> T:
        if scope is not None:
            scope.next_slot = self._clock.monotonic() + scope.interval
        for window in windows:
            window.release()
        return await call()

    async def _run_typing(self, chat_id: int, scope: _ChatScope, call: Callable[[], Awaitable[object]]) -> None:
        if self._is_paused(scope):
            self._typing_dropped += 1
            return
        await self._global.acquire()
        if self._is_paused(scope):
            self._global.release(used=False)
            self._typing_dropped += 1
            return
        await self._make_typing(chat_id, scope, call)


async def one_reply(clock, transport, chat_id, generated, is_private):
    stream = ReplyStream(transport, clock, chat_id, use_drafts=is_private)
    stream.start()
    text = ""
    # Stagger starts a little, as real messages arrive spread out.
    await clock.sleep((abs(chat_id) % 17) * 0.05)
    for i in range(WORDS):
        text += f"word{i} "
        stream.update(text)
        await clock.sleep(WORD_GAP)
    generated[chat_id] = clock.monotonic()
    await stream.finish(text)


async def drive(clock: ManualClock, tasks) -> None:
    """Advance virtual time to each next deadline until every reply is done (no real I/O here)."""
    gathered = asyncio.gather(*tasks)
    while not gathered.done():
        await clock.settle(50)
        deadline = clock.next_deadline()
        if deadline is None:
            await asyncio.sleep(0)
            continue
        await clock.advance(max(0.0, deadline - clock.monotonic()))
    await gathered


async def run(chats: int, governor_class: type[FloodGovernor]) -> dict[str, float]:
    clock = ManualClock()
    client = FakeTelegramClient(clock, knows_every_chat=True)
    client.enforce_limits(per_chat_interval=1.0, global_per_second=30, group_per_minute=20)
    client.add_latency(*LATENCY, seed=chats)
    transport = GovernedTransport(TelegramTransport(client), governor_class(clock))
    generated: dict[int, float] = {}
    chat_ids = [(1000 + i) * (1 if i % 2 else -1) for i in range(chats)]
    await drive(clock, [one_reply(clock, transport, c, generated, c > 0) for c in chat_ids])
    expected = " ".join(f"word{i}" for i in range(WORDS))
    # Until the user sees the final text: when its last call landed at the server.
    delays = sorted(
        max(m.edits[-1].at if m.edits else m.sent_at for m in client.messages(c)) - generated[c] for c in chat_ids
    )
    return {
        "flood_waits": client.violation_count,
        "finals_ok": all(client.final_text(c).strip() == expected for c in chat_ids),
        "calls": len(client.calls),
        "p50": statistics.median(delays),
        "p95": delays[int(0.95 * (len(delays) - 1))],
        "max": delays[-1],
    }


GOVERNORS = (("starts only (baseline)", StartsOnlyGovernor), ("in flight counted", FloodGovernor))


def main() -> None:
    print(
        f"{WORDS} words a reply at {1 / WORD_GAP:.0f} words/s (~{WORDS * WORD_GAP:.0f} s of generation), "
        f"half groups, half private; {LATENCY[0] * 1000:.0f}-{LATENCY[1] * 1000:.0f} ms each way"
    )
    for chats in CHAT_COUNTS:
        for label, governor_class in GOVERNORS:
            began = time.perf_counter()
            r = asyncio.run(run(chats, governor_class))
            print(
                f"{chats:5} chats  {label:22}  FloodWaits caused: {r['flood_waits']:4}  calls: {r['calls']:6}  "
                f"final texts intact: {r['finals_ok']}  final-text delay p50 {r['p50']:5.2f} s, "
                f"p95 {r['p95']:5.2f} s, max {r['max']:5.2f} s  ({time.perf_counter() - began:.1f} s real)"
            )


if __name__ == "__main__":
    main()
