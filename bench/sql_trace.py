"""Every SQL statement one chat message costs, in order, and which of them the user waits for.

One question in a new private chat, answered by the local paced server (bench/_paced_llm.py)
through the real app on the fake Telegram client (as bench/latency.py runs it). SQLite's trace
callback lists each statement as it runs, timed from Telegram handing the update to the bot;
statements are counted before the first draft, before the final text and after it. Only the
statements of this message are shown (the app's start and a warm-up question come before).

Run: .venv/bin/python bench/sql_trace.py [--shape 3000,0.3,24]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _paced_llm  # noqa: E402
from bench._reply_harness import start_bot  # noqa: E402
from bot.telegram.flood_governor import FloodGovernor  # noqa: E402
from integrations.clock import SystemClock  # noqa: E402


async def trace(base_url: str, model: str) -> list[tuple[float, str]]:
    statements: list[tuple[float, str]] = []
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, base_url, model, FloodGovernor(SystemClock(), private_interval=0.0))
        bot.ask([1], _paced_llm.WARM_UP)
        await bot.settle()
        # The callback runs in aiosqlite's thread; list.append is atomic.
        await bot.app.database._conn.set_trace_callback(lambda sql: statements.append((time.monotonic(), sql)))
        bot.ask([2])
        await bot.settle()
        await bot.app.database._conn.set_trace_callback(None)
        asked = bot.asked_at[2]
        first = bot.first_visible(2) or asked
        final = bot.final_landed(2)
    print(f"first draft at Telegram +{(first - asked) * 1000:.1f} ms, final text +{(final - asked) * 1000:.1f} ms")
    phases = {"before the first draft": 0, "before the final text": 0, "after the final text": 0}
    for moment, sql in statements:
        phase = "before the first draft" if moment < first else "before the final text" if moment < final else "after the final text"
        phases[phase] += 1
        print(f"  +{(moment - asked) * 1000:8.2f} ms  {' '.join(sql.split())[:150]}")
    print(f"{len(statements)} statements: " + ", ".join(f"{n} {phase}" for phase, n in phases.items()))
    return statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="3000,0.3,24", help="characters,seconds,chunks of the reply")
    args = parser.parse_args()
    characters, seconds, chunks = args.shape.split(",")
    with _paced_llm.start() as base_url:
        asyncio.run(trace(base_url, _paced_llm.model_name(int(characters), float(seconds), int(chunks))))


if __name__ == "__main__":
    main()
