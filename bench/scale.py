"""10, 100 and 1,000 conversations at once: the whole bot beside the raw SDK streaming the same answers.

Every conversation is one question in its own private chat, answered with a 3 kB Markdown reply
streamed over 8 s (about 8 previews, as drafts) by a local paced OpenAI-compatible server in its
own process (bench/_paced_llm.py). The bot is the real one (`build_app`, Telegram transport, flood
governor with Telegram's limits, SQLite, real clock) on the fake Telegram client; raw is the
openai SDK reading the same streams and accumulating their text, nothing else. Each side and size
runs in a fresh child process, one after the other, so CPU time and peak memory are its own.

Printed per size, bot beside raw and as a ratio:
- CPU per reply: the process's CPU time (all threads, SQLite's included) over the run / replies;
- event-loop lag p50 / p99 of a 10 ms timer while the answers were being generated;
- wall: from the questions until the last answer was fully generated (the bot: asked for its
  final text). The bot's final texts then still wait for Telegram's pace, 30 a second overall:
  "finals landed" says when the last one was delivered;
- peak RSS, and its growth per extra conversation between the smallest and largest size.
`--long` runs the other case of issue 12 instead: 10 conversations of 10 kB streamed over 30 s
(about 30 previews each).

Run: .venv/bin/python bench/scale.py [--sizes 10,100,1000] [--long] [--shape 300,0.5,1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _paced_llm  # noqa: E402
from bench._reply_harness import LoopLag, percentile, raw_client, raw_reply, start_bot  # noqa: E402
from handlers.render import render_markdown  # noqa: E402

# characters, seconds, chunks. Chunks of ~125 characters: the SDK's own cost per chunk (~0.3 ms
# here) would otherwise hide the bot's cost per reply (`--chunks` to try others).
SHORT = (3000, 8.0, 24)
LONG = (10000, 30.0, 80)


async def raw_run(base_url: str, model: str, conversations: int) -> dict[str, float]:
    client = raw_client(base_url)
    await raw_reply(client, model, _paced_llm.WARM_UP)
    cpu, started = time.process_time(), time.monotonic()
    with LoopLag() as lag:
        timings = await asyncio.gather(*(raw_reply(client, model) for _ in range(conversations)))
        generated = time.monotonic()
    assert all(t.text == _paced_llm.answer(int(model.split("-")[1])) for t in timings), "raw text differs"
    result = {"cpu": time.process_time() - cpu, "wall": generated - started, "lag": lag.until(generated)}
    await client.close()
    return result


async def bot_run(base_url: str, model: str, conversations: int) -> dict[str, float]:
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, base_url, model)
        bot.ask([1], _paced_llm.WARM_UP)
        await bot.settle()
        chats = list(range(10_000, 10_000 + conversations))
        cpu, started = time.process_time(), time.monotonic()
        with LoopLag() as lag:
            bot.ask(chats)
            await bot.settle()
        cpu = time.process_time() - cpu
        generated = max(bot.transport.final_asked[chat] for chat in chats)
        landed = max(bot.final_landed(chat) for chat in chats)
        previews = sum(len(bot.client.drafts(chat)) for chat in chats)
        expected = "".join(render_markdown(_paced_llm.answer(int(model.split("-")[1]))).text.split())
        intact = sum("".join(bot.client.final_text(chat).split()) == expected for chat in chats)
        return {
            "cpu": cpu,
            "wall": generated - started,
            "landed": landed - started,
            "lag": lag.until(generated),
            "previews": previews / conversations,
            "finals_intact": intact / conversations,
            "flood_waits": bot.client.violation_count,
        }


def child(side: str, base_url: str, model: str, conversations: int) -> None:
    run = raw_run if side == "raw" else bot_run
    result = asyncio.run(run(base_url, model, conversations))
    lags = result.pop("lag")
    result.update(
        cpu_per_reply=result["cpu"] / conversations,
        lag_p50=percentile(lags, 0.5),
        lag_p99=percentile(lags, 0.99),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print(json.dumps(result))


def measure(side: str, base_url: str, model: str, conversations: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", side, base_url, model, str(conversations)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--long", action="store_true", help="10 kB over 30 s, 10 conversations")
    parser.add_argument("--chunks", type=int, help="chunks per reply (default 24, or 80 with --long)")
    parser.add_argument("--shape", help="characters,seconds,chunks of each reply, e.g. 300,0.5,1")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, base_url, model, conversations = args.child
        child(side, base_url, model, int(conversations))
        return
    shape = LONG if args.long else SHORT
    if args.chunks:
        shape = (shape[0], shape[1], args.chunks)
    if args.shape:
        characters, seconds, chunks = args.shape.split(",")
        shape = (int(characters), float(seconds), int(chunks))
    sizes = [10] if args.long else [int(size) for size in args.sizes.split(",")]
    model = _paced_llm.model_name(*shape)
    print(f"{shape[0]} characters in {shape[2]} chunks over {shape[1]:g} s per reply, private chats (drafts)")
    rows = []
    with _paced_llm.start() as base_url:
        for size in sizes:
            began = time.perf_counter()
            raw = measure("raw", base_url, model, size)
            bot = measure("bot", base_url, model, size)
            rows.append((size, raw, bot))
            print(
                f"{size:5} conversations  CPU/reply bot {bot['cpu_per_reply'] * 1000:6.1f} ms, raw "
                f"{raw['cpu_per_reply'] * 1000:5.1f} ms ({bot['cpu_per_reply'] / raw['cpu_per_reply']:.2f}x)  "
                f"loop lag p50 bot {bot['lag_p50'] * 1000:5.1f} / raw {raw['lag_p50'] * 1000:5.1f} ms, "
                f"p99 bot {bot['lag_p99'] * 1000:6.1f} / raw {raw['lag_p99'] * 1000:6.1f} ms "
                f"(+{(bot['lag_p99'] - raw['lag_p99']) * 1000:.1f})  "
                f"wall bot {bot['wall']:5.2f} s, raw {raw['wall']:5.2f} s ({bot['wall'] / raw['wall']:.2f}x)  "
                f"finals landed {bot['landed']:5.1f} s  previews/reply {bot['previews']:4.1f}  "
                f"peak RSS bot {bot['peak_rss_mb']:6.1f} MB, raw {raw['peak_rss_mb']:6.1f} MB  "
                f"FloodWaits {bot['flood_waits']}, finals intact {bot['finals_intact']:.0%}  "
                f"({time.perf_counter() - began:.0f} s real)",
                flush=True,
            )
    if len(rows) > 1:
        (small, raw_small, bot_small), (large, raw_large, bot_large) = rows[0], rows[-1]
        bot_slope = (bot_large["peak_rss_mb"] - bot_small["peak_rss_mb"]) / (large - small)
        raw_slope = (raw_large["peak_rss_mb"] - raw_small["peak_rss_mb"]) / (large - small)
        print(
            f"peak RSS per extra conversation ({small} -> {large}): bot {bot_slope:.3f} MB, raw {raw_slope:.3f} MB, "
            f"bot's extra {bot_slope - raw_slope:+.3f} MB"
        )


if __name__ == "__main__":
    main()
