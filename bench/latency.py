"""Time to the first visible token and to the final text: the whole bot beside the raw SDK, interleaved.

One question at a time, each in a new private chat, answered with a 3 kB Markdown reply streamed
in 24 chunks over 0.3 s by the local paced server (bench/_paced_llm.py, its own process). Raw:
the openai SDK, timed from the request to its first content chunk and to the end of the stream.
Bot: the real app (`build_app`, Telegram transport, flood governor, SQLite, real clock) on the
fake Telegram client, timed from handing Telegram's update to the bot until the first draft, and
until the final text, reached Telegram. Raw and bot runs alternate (which goes first alternates
too), so both see the same machine.

The governor's pace of one call a second per chat is set to 0 here: with it the final text waits
up to a second after the last draft, Telegram's limit rather than the bot's overhead (measured in
bench/telegram_streaming.py). Previews keep their own pace of one a second.

Run: .venv/bin/python bench/latency.py [--runs 30]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _paced_llm  # noqa: E402
from bench._reply_harness import percentile, raw_client, raw_reply, start_bot  # noqa: E402
from bot.telegram.flood_governor import FloodGovernor  # noqa: E402
from integrations.clock import SystemClock  # noqa: E402

SHAPE = (3000, 0.3, 24)


# What is timed, each from the moment its side was asked (Telegram handing the update to the bot,
# or the SDK call) and from the server's own moments (time.monotonic() is the same clock in
# every process of the machine): the request arriving, and the stream's last byte sent.
MEASURES = ("asked -> request", "request -> first visible", "last byte -> final text", "asked -> final text")


async def measure(base_url: str, runs: int) -> dict[str, dict[str, list[float]]]:
    model = _paced_llm.model_name(*SHAPE)
    timings: dict[str, dict[str, list[float]]] = {side: {m: [] for m in MEASURES} for side in ("raw", "bot")}
    client = raw_client(base_url)

    def note(side: str, asked: float, first: float, final: float) -> None:
        arrived, _, last_sent = _paced_llm.timings(base_url)[-1]
        for what, seconds in zip(MEASURES, (arrived - asked, first - arrived, final - last_sent, final - asked)):
            timings[side][what].append(seconds)

    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, base_url, model, FloodGovernor(SystemClock(), private_interval=0.0))
        await raw_reply(client, model, _paced_llm.WARM_UP)
        bot.ask([1], _paced_llm.WARM_UP)
        await bot.settle()

        async def raw_once() -> None:
            timing = await raw_reply(client, model)
            note("raw", timing.started, timing.started + timing.first, timing.started + timing.end)

        async def bot_once(chat: int) -> None:
            bot.ask([chat])
            await bot.settle()
            first = bot.first_visible(chat)
            assert first is not None
            note("bot", bot.asked_at[chat], first, bot.final_landed(chat))

        for run in range(runs):
            if run % 2:
                await raw_once()
                await bot_once(100 + run)
            else:
                await bot_once(100 + run)
                await raw_once()
    await client.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print(f"{SHAPE[0]} characters in {SHAPE[2]} chunks over {SHAPE[1]:g} s; {args.runs} runs each, interleaved")
    began = time.perf_counter()
    with _paced_llm.start() as base_url:
        timings = asyncio.run(measure(base_url, args.runs))
    for what in MEASURES:
        raw, bot = timings["raw"][what], timings["bot"][what]
        print(
            f"{what:25} raw median {statistics.median(raw) * 1000:7.2f} ms, p90 {percentile(raw, 0.9) * 1000:7.2f}   "
            f"bot median {statistics.median(bot) * 1000:7.2f} ms, p90 {percentile(bot, 0.9) * 1000:7.2f}   "
            f"added (medians) {(statistics.median(bot) - statistics.median(raw)) * 1000:+7.2f} ms"
        )
    print(f"({time.perf_counter() - began:.0f} s real)")


if __name__ == "__main__":
    main()
