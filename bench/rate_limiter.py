"""Our RateLimiter against aiolimiter, in front of a server that allows 3 requests per rolling second.

50 concurrent callers loop "acquire, then GET" through httpx for ~10 s per limiter, against a local
server that answers 429 to any request beyond 3 accepted within the last second. Prints requests
sent, 429s received, and the achieved rate (accepted per second) as a % of 3/s.
Target for ours: zero 429s and >= 95 %.

Ours runs with `burst=1`: a rolling-window upstream allows no burst on top of its rate (see
ratelimit.py). aiolimiter has no such knob: AsyncLimiter(3, 1) always allows a burst of 3.

A third run shows ours with its default burst (= rate), which a rolling window punishes the same way.

    .venv/bin/python bench/rate_limiter.py [seconds]
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

import httpx
from aiolimiter import AsyncLimiter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fake_rate_limited_server import RollingWindowServer  # noqa: E402
from integrations.resilience.clock import SystemClock  # noqa: E402
from integrations.resilience.ratelimit import RateLimiter  # noqa: E402

RATE = 3
CALLERS = 50


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


async def main(seconds: float) -> None:
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


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))
