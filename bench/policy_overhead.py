"""What the resilience layers cost on the success path.

Times `Upstream.call` (breaker + retry + limiter with a huge rate + per-attempt timeout) around a
no-op coroutine against awaiting the no-op directly, on the real clock, and prints the median and
p99 overhead in microseconds. Target: median overhead <= 50 us.

    .venv/bin/python bench/policy_overhead.py [calls]
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.clock import SystemClock  # noqa: E402
from integrations.resilience.breaker import CircuitBreaker  # noqa: E402
from integrations.resilience.compose import Upstream  # noqa: E402
from integrations.resilience.ratelimit import RateLimiter  # noqa: E402


async def noop() -> int:
    # Yields to the loop once, like any real I/O, so timer tasks are paid for inside the loop.
    await asyncio.sleep(0)
    return 1


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def time_calls(call, count: int) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        started = clock()
        await call()
        samples.append((clock() - started) / 1000)
    return samples


async def main(count: int) -> None:
    clock = SystemClock()
    upstream = Upstream(
        "bench",
        clock,
        breaker=CircuitBreaker("bench", clock),
        limiter=RateLimiter("bench", rate=1e9, per=1.0, clock=clock),
        attempt_timeout=30.0,
    )
    no_timeout = Upstream(
        "bench-no-timeout",
        clock,
        breaker=CircuitBreaker("bench-no-timeout", clock),
        limiter=RateLimiter("bench-no-timeout", rate=1e9, per=1.0, clock=clock),
    )

    async def wrapped() -> int:
        return await upstream.call(noop)

    async def wrapped_without_timeout() -> int:
        return await no_timeout.call(noop)

    for call in (noop, wrapped, wrapped_without_timeout):  # warm up
        await time_calls(call, 1000)
    direct = await time_calls(noop, count)
    full = await time_calls(wrapped, count)
    partial = await time_calls(wrapped_without_timeout, count)

    base_median, base_p99 = statistics.median(direct), percentile(direct, 0.99)
    print(f"calls: {count}")
    print(f"direct no-op:                     median {base_median:7.2f} us  p99 {base_p99:7.2f} us")
    for label, samples in (("Upstream.call (all layers)", full), ("Upstream.call (no timeout)", partial)):
        median, p99 = statistics.median(samples), percentile(samples, 0.99)
        print(
            f"{label:33s} median {median:7.2f} us  p99 {p99:7.2f} us"
            f"  -> overhead median {median - base_median:7.2f} us, p99 {p99 - base_p99:7.2f} us"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
