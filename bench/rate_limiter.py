"""Our RateLimiter against a strict 429 server, and behind a proxy whose headers say what is left.

Part 1: ours against aiolimiter, in front of a server that allows 3 requests per rolling second.

50 concurrent callers loop "acquire, then GET" through httpx for ~10 s per limiter, against a local
server that answers 429 to any request beyond 3 accepted within the last second. Prints requests
sent, 429s received, and the achieved rate (accepted per second) as a % of 3/s.
Target for ours: zero 429s and >= 95 %.

Ours runs with `burst=1`: a rolling-window upstream allows no burst on top of its rate (see
ratelimit.py). aiolimiter has no such knob: AsyncLimiter(3, 1) always allows a burst of 3.

A third run shows ours with its default burst (= rate), which a rolling window punishes the same way.

Part 2: back-to-back replies behind an OpenAI-compatible proxy that allows 50 requests per key per
60 s window and reports what is left in `x-ratelimit-*-requests` (the first answer says "49 of 50
left, resets in 60 s"). Each round streams one reply with the raw SDK (no limiter, its own key) and
one through the bot's model chain (the openai guard as the app builds it, tightened by those
headers, with its own key), one after the other. Prints time to first token for both, the bot's
added time, and the 429s each key got.

Part 3: the same proxy with a 5 s window, and 20 concurrent callers streaming replies through the
chain for `seconds`, paced by nothing but the proxy's headers (the guard's own 500 a minute is far
above 50 per 5 s). Prints the 429s (target 0: never more than the headers said was left) and the
share of the proxy's allowance the callers used.

    .venv/bin/python bench/rate_limiter.py [seconds] [rounds]    (seconds 0: part 2 only)
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

import httpx
import openai
from aiolimiter import AsyncLimiter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fake_rate_limited_server import FixedWindowProxy, RollingWindowServer  # noqa: E402
from bot.config import LimitSettings  # noqa: E402
from integrations.chain import AllModelsFailed, ChainModel, ModelChain, TextDelta  # noqa: E402
from integrations.clock import SystemClock  # noqa: E402
from integrations.llm import ChatMessage, ModelRef  # noqa: E402
from integrations.model_policy import ModelCallPolicy, ProviderGuard  # noqa: E402
from integrations.openai import OpenAIChat  # noqa: E402
from integrations.resilience.breaker import CircuitBreaker  # noqa: E402
from integrations.resilience.ratelimit import RateLimiter  # noqa: E402
from integrations.resilience.registry import ResilienceRegistry  # noqa: E402
from integrations.resilience.tokens import TokenBudget  # noqa: E402

RATE = 3
CALLERS = 50
PROXY_LIMIT = 50
PROXY_WINDOW = 60.0
MAX_TOKENS = 100
SHORT_WINDOW = 5.0
CONCURRENT = 20


async def hammer(url: str, acquire: Callable[[], Awaitable[object]], seconds: float) -> tuple[int, int]:
    """Run the callers for `seconds`; (requests sent, 429s received)."""
    sent = refused = 0
    deadline = time.monotonic() + seconds

    async def caller(client: httpx.AsyncClient) -> None:
        nonlocal sent, refused
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(acquire(), timeout=left)
            except TimeoutError:
                return
            sent += 1
            response = await client.get(url)
            refused += response.status_code == 429

    limits = httpx.Limits(max_connections=CALLERS, max_keepalive_connections=CALLERS)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        await asyncio.gather(*(caller(client) for _ in range(CALLERS)))
    return sent, refused


async def strict_429(seconds: float) -> None:
    contenders: list[tuple[str, Callable[[], Callable[[], Awaitable[object]]]]] = [
        ("ours RateLimiter(3/s, burst=1)", lambda: RateLimiter("bench", RATE, 1.0, SystemClock(), burst=1).acquire),
        ("aiolimiter AsyncLimiter(3, 1)", lambda: AsyncLimiter(RATE, 1.0).acquire),
        # For comparison: the same limiter with its default burst (= rate) overruns the window too.
        ("ours RateLimiter(3/s, burst=3)", lambda: RateLimiter("bench", RATE, 1.0, SystemClock()).acquire),
    ]
    with RollingWindowServer(limit=RATE, window=1.0) as server:
        # The first request through httpx in a process takes ~25 ms of one-off setup: that late
        # arrival would squeeze the first rolling window for either limiter, so warm up first.
        async with httpx.AsyncClient() as client:
            await client.get(server.url)
        print(f"{CALLERS} callers, {seconds:g} s each, server allows {RATE} per rolling 1 s")
        for label, make in contenders:
            server.reset()
            await asyncio.sleep(1.1)  # let the previous run's window drain
            sent, refused = await hammer(server.url, make(), seconds)
            await asyncio.sleep(0.2)
            accepted = server.tally.accepted
            achieved = accepted / seconds / RATE * 100
            print(
                f"{label:32s} sent {sent:4d}  429s {refused:4d}  accepted {accepted:4d}"
                f"  achieved {accepted / seconds:5.2f}/s = {achieved:5.1f} % of {RATE}/s"
            )


def bot_chain(base_url: str, clock: SystemClock) -> tuple[ModelChain, OpenAIChat]:
    """The openai guard and chain as `bot/app.py` builds them with the default limits."""
    rpm, tpm = LimitSettings.openai_requests_per_minute, LimitSettings.openai_tokens_per_minute
    policy = ModelCallPolicy(clock, ResilienceRegistry(clock))
    guard = policy.add_guard(ProviderGuard(
        "openai",
        CircuitBreaker("provider openai", clock),
        RateLimiter("openai requests", rpm, 60.0, clock, burst=max(1, int(rpm // 6))),
        TokenBudget("openai tokens", tpm, clock),
    ))
    provider = OpenAIChat(api_key="bot", base_url=base_url, on_limits=guard.observe_limits)
    model = ChainModel(ModelRef("openai", FixedWindowProxy.MODEL), provider)
    return ModelChain([model], clock, open_policy=policy), provider


async def raw_first_token(client: openai.AsyncOpenAI) -> float:
    started = time.perf_counter()
    first = None
    chunks = await client.chat.completions.create(
        model=FixedWindowProxy.MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_completion_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    async for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
    assert first is not None and text
    return first - started


async def bot_first_token(chain: ModelChain) -> float:
    started = time.perf_counter()
    first = None
    async for event in chain.stream([ChatMessage("user", "hello")], system=None, max_tokens=MAX_TOKENS):
        if isinstance(event, TextDelta):
            first = first or time.perf_counter()
    assert first is not None
    return first - started


def _ms(values: list[float], share: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000:7.1f} ms"


async def back_to_back(rounds: int) -> None:
    clock = SystemClock()
    with FixedWindowProxy(limit=PROXY_LIMIT, window=PROXY_WINDOW) as proxy:
        raw = openai.AsyncOpenAI(api_key="raw", base_url=proxy.base_url, max_retries=0)
        chain, provider = bot_chain(proxy.base_url, clock)
        # Connections and the SDKs' first-use costs, without spending the window (model lists are free).
        await raw.models.list()
        await provider.list_models()
        raw_times: list[float] = []
        bot_times: list[float] = []
        started = time.perf_counter()
        for _ in range(rounds):
            raw_times.append(await raw_first_token(raw))
            bot_times.append(await bot_first_token(chain))
        wall = time.perf_counter() - started
        await raw.close()
        await provider.aclose()
        print(
            f"\n{rounds} back-to-back replies each, proxy allows {PROXY_LIMIT} per key per {PROXY_WINDOW:g} s"
            " (first answer: 49 of 50 left, resets in 60 s)"
        )
        added = [bot - raw for bot, raw in zip(bot_times, raw_times)]
        for label, times, key in (("raw SDK, no limiter", raw_times, "raw"), ("bot (chain + guard)", bot_times, "bot")):
            tally = proxy.tally(key)
            print(
                f"{label:22s} first token p50 {_ms(times, 0.5)}  p95 {_ms(times, 0.95)}  max {_ms(times, 1.0)}"
                f"  sum {sum(times):6.2f} s  429s {tally.refused}"
            )
        print(
            f"{'bot added':22s}             p50 {_ms(added, 0.5)}  p95 {_ms(added, 0.95)}  max {_ms(added, 1.0)}"
            f"  rounds that waited > 50 ms: {sum(a > 0.05 for a in added)}  wall {wall:.1f} s"
        )


async def concurrent(seconds: float) -> None:
    clock = SystemClock()
    with FixedWindowProxy(limit=PROXY_LIMIT, window=SHORT_WINDOW) as proxy:
        chain, provider = bot_chain(proxy.base_url, clock)
        await provider.list_models()
        replies = refused = 0
        deadline = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal replies, refused
            while time.monotonic() < deadline:
                try:
                    await bot_first_token(chain)
                    replies += 1
                except AllModelsFailed:
                    refused += 1  # our limiter would have waited longer than a call may
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(caller() for _ in range(CONCURRENT)))
        await provider.aclose()
        tally = proxy.tally("bot")
        allowed = PROXY_LIMIT * tally.windows
        print(
            f"\n{CONCURRENT} concurrent callers for {seconds:g} s, proxy allows {PROXY_LIMIT} per {SHORT_WINDOW:g} s window,"
            f" paced only by its headers\nreplies {replies:4d}  429s {tally.refused}  accepted {tally.accepted}"
            f" = {tally.accepted / allowed * 100:5.1f} % of the {allowed} its {tally.windows} windows allowed"
            f"  refused by our limiter {refused}"
        )


async def main(seconds: float, rounds: int) -> None:
    if seconds > 0:  # 0 runs only part 2
        await strict_429(seconds)
    await back_to_back(rounds)
    if seconds > 0:
        await concurrent(seconds)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    asyncio.run(main(float(arguments[0]) if arguments else 10.0, int(arguments[1]) if len(arguments) > 1 else 40))
