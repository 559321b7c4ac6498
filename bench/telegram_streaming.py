"""50 chats streaming at once against a fake Telegram that punishes any excess with FloodWait.

The fake enforces 1 call a second per chat (edits and drafts count), 20 a minute per group and 30
a second overall, raising Telethon's FloodWaitError on any violation. Every reply goes through the
real pieces: ReplyStream (latest-text pump) -> GovernedTransport (flood governor) ->
TelegramTransport -> the fake client. Time is virtual (ManualClock), so the numbers are exact and
the run takes a few seconds.

Prints, for groups (streamed by edits) and private chats (streamed as drafts): FloodWaits caused
(target 0), preview updates per reply, and the delay from the end of generation until the final
text has landed (p50/p95/max; target p95 < 1.5 s).

Run: .venv/bin/python bench/telegram_streaming.py
"""
from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.telegram import TelegramTransport  # noqa: E402
from handlers.stream import ReplyStream  # noqa: E402
from integrations.resilience.clock import ManualClock  # noqa: E402
from integrations.resilience.governor import FloodGovernor, GovernedTransport  # noqa: E402
from tests.fakes.telegram import FakeTelegramClient  # noqa: E402

CHATS = 50
WORDS = 120
WORD_GAP = 0.08  # ~12 words a second: a fast model, about 10 s per reply


async def one_reply(clock, transport, chat_id, delays, is_private):
    stream = ReplyStream(transport, clock, chat_id, use_drafts=is_private)
    stream.start()
    text = ""
    # Stagger starts a little, as real messages arrive spread out.
    await clock.sleep((abs(chat_id) % 17) * 0.05)
    for i in range(WORDS):
        text += f"word{i} "
        stream.update(text)
        await clock.sleep(WORD_GAP)
    generated_at = clock.monotonic()
    await stream.finish(text)
    delays.append(clock.monotonic() - generated_at)


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


async def run(is_private: bool) -> dict[str, float]:
    clock = ManualClock()
    client = FakeTelegramClient(clock)
    client.enforce_limits(per_chat_interval=1.0, global_per_second=30, group_per_minute=20)
    transport = GovernedTransport(TelegramTransport(client), FloodGovernor(clock))
    delays: list[float] = []
    chat_ids = [1000 + i if is_private else -(1000 + i) for i in range(CHATS)]
    await drive(clock, [one_reply(clock, transport, c, delays, is_private) for c in chat_ids])
    finals_ok = all(client.final_text(c).strip() == " ".join(f"word{i}" for i in range(WORDS)) for c in chat_ids)
    if is_private:
        updates = [len(client.drafts(c)) for c in chat_ids]
    else:
        updates = [sum(len(m.edits) for m in client.messages(c)) + len(client.messages(c)) for c in chat_ids]
    delays.sort()
    return {
        "flood_waits": client.violation_count,
        "finals_ok": finals_ok,
        "updates_per_reply": statistics.mean(updates),
        "p50": statistics.median(delays),
        "p95": delays[int(0.95 * (len(delays) - 1))],
        "max": delays[-1],
    }


def main() -> None:
    print(f"{CHATS} chats, {WORDS} words each at {1 / WORD_GAP:.0f} words/s (~{WORDS * WORD_GAP:.0f} s of generation)")
    for label, private in (("groups (edits)", False), ("private (drafts)", True)):
        r = asyncio.run(run(private))
        print(
            f"{label:17} FloodWaits caused: {r['flood_waits']}  final texts intact: {r['finals_ok']}  "
            f"updates per reply: {r['updates_per_reply']:.1f}  "
            f"final-text delay p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, max {r['max']:.2f} s"
        )


if __name__ == "__main__":
    main()
