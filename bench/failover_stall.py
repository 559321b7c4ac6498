"""How long a user waits for an answer when the first model never sends a first token.

Real clock, real SDKs (anthropic, openai) against the local fake servers, through the chain and
model policy exactly as the composition root builds them, with a 2 s first-token timeout. The
chain is [Claude, GPT]; each scenario is measured from the start of the request to the first
text the user could see (or to the error):

- baseline: the openai SDK called directly against the GPT fake (what GPT alone costs);
- Claude never sends a first token, GPT answers (target: first-token timeout + 2 s at most);
- both never send a first token: the error;
- Claude's token budget was tightened by its headers (0 left, reset in 10 s) on the message
  before: GPT answers.

Run: .venv/bin/python bench/failover_stall.py [repeats]
"""
from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openai import AsyncOpenAI  # noqa: E402

from bot.app import build_chain, build_model_policy, build_providers  # noqa: E402
from bot.config import Secret, Settings  # noqa: E402
from bot.logs import DeprecationSignals  # noqa: E402
from integrations.chain import AllModelsFailed, Completed, ModelChain, TextDelta  # noqa: E402
from integrations.clock import SystemClock  # noqa: E402
from integrations.llm import ChatMessage, ModelRef  # noqa: E402
from integrations.resilience.registry import ResilienceRegistry  # noqa: E402
from tests.fakes import anthropic_server as anth  # noqa: E402
from tests.fakes import openai_server as oai  # noqa: E402

FIRST_TOKEN = 2.0
TARGET = FIRST_TOKEN + 2.0
ANTHROPIC_KEY = "sk-ant-bench-0000000000000000000000000000"
OPENAI_KEY = "sk-bench-000000000000000000000000000000"
QUESTION = [ChatMessage("user", "count to six")]
TIGHT_BUDGET = {"requests": (50, 49, 1.2), "tokens": (80_000, 0, 10.0)}


Sample = tuple[float, str]  # seconds until the first text (or the error), who answered


async def first_text(chain: ModelChain) -> Sample:
    """Seconds until the chain yields its first text (or fails), and the model that answered."""
    started = time.perf_counter()
    elapsed = None
    try:
        async for event in chain.stream(QUESTION, system="Be brief.", max_tokens=64):
            if isinstance(event, TextDelta) and elapsed is None:
                elapsed = time.perf_counter() - started
            elif isinstance(event, Completed):
                assert elapsed is not None
                return elapsed, event.model.model
    except AllModelsFailed:
        return time.perf_counter() - started, "error"
    raise RuntimeError("the chain ended without an answer or an error")


async def direct_sdk(gpt: oai.FakeOpenAI) -> Sample:
    async with AsyncOpenAI(base_url=gpt.base_url, api_key=OPENAI_KEY, max_retries=0) as client:
        started = time.perf_counter()
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "count to six"}], max_tokens=64, stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                elapsed = time.perf_counter() - started
                await stream.close()
                return elapsed, "gpt-test"
    raise RuntimeError("no text from the direct call")


async def through_chain(claude: anth.FakeAnthropic, gpt: oai.FakeOpenAI, *, warm_up: bool = False) -> Sample:
    """One message through a freshly built chain (fresh breakers, budgets and clients)."""
    clock = SystemClock()
    settings = Settings(
        anthropic_api_key=Secret(ANTHROPIC_KEY),
        anthropic_base_url=claude.base_url,
        openai_api_key=Secret(OPENAI_KEY),
        openai_base_url=gpt.base_url,
        llm_models=(ModelRef.parse("anthropic:claude-test"), ModelRef.parse("openai:gpt-test")),
        llm_local="off",
        llm_first_token_timeout=FIRST_TOKEN,
    )
    async with AsyncExitStack() as stack:
        signals = DeprecationSignals(clock)
        policy = build_model_policy(settings, clock, ResilienceRegistry(clock), signals)
        chain = build_chain(settings, clock, build_providers(settings, clock, policy, stack, signals), policy)
        if warm_up:
            # A whole answer from Claude, whose headers tighten its token budget.
            async for _ in chain.stream(QUESTION, system="Be brief.", max_tokens=64):
                pass
        return await first_text(chain)


async def measure(repeats: int) -> dict[str, list[Sample]]:
    results: dict[str, list[Sample]] = {}
    async with AsyncExitStack() as stack:
        stalling = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(0)))
        tight = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, limits=TIGHT_BUDGET))
        gpt = await stack.enter_async_context(oai.FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("one two three")))
        gpt_stalling = await stack.enter_async_context(oai.FakeOpenAI(api_key=OPENAI_KEY, default=oai.stall_after(0)))
        scenarios = {
            "baseline: direct SDK call to GPT": lambda: direct_sdk(gpt),
            "Claude stalls, GPT answers": lambda: through_chain(stalling, gpt),
            "both stall: the error": lambda: through_chain(stalling, gpt_stalling),
            "Claude's budget tightened, GPT answers": lambda: through_chain(tight, gpt, warm_up=True),
        }
        for label, run in scenarios.items():
            results[label] = [await run() for _ in range(repeats)]
    return results


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    logging.disable(logging.CRITICAL)  # failover is logged as warnings; only the numbers matter here
    results = asyncio.run(measure(repeats))
    baseline = statistics.median(s for s, _ in results["baseline: direct SDK call to GPT"])
    print(f"first-token timeout {FIRST_TOKEN:g} s, {repeats} runs each; seconds until the first text (or the error)")
    print(f"{'':40} {'median':>8} {'max':>8} {'over baseline':>14}  answered by")
    for label, samples in results.items():
        seconds = [s for s, _ in samples]
        median = statistics.median(seconds)
        who = ", ".join(sorted({w for _, w in samples}))
        print(f"{label:40} {median:8.3f} {max(seconds):8.3f} {median - baseline:14.3f}  {who}")
    worst = max(s for s, _ in results["Claude stalls, GPT answers"])
    verdict = "met" if worst <= TARGET else "NOT met"
    print(f"target: GPT's answer within {TARGET:g} s when Claude stalls (worst run {worst:.3f} s): {verdict}")


if __name__ == "__main__":
    main()
