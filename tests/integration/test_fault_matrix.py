"""Every way an LLM upstream misbehaves, through the real SDKs: what the user sees, how many calls.

The chain is [failing model, healthy model]. The first column of each case says what the failing
model's server does; the assertions say what the user ends up reading and how often each server
was called (one retry loop: SDK retries are off).
"""
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest

from bot.config import LimitSettings
from tests.fakes import anthropic_server as anth
from tests.fakes import openai_server as oai
from tests.fakes.http_server import RESET
from tests.integration.telegram_bot import ANTHROPIC_KEY, OPENAI_KEY, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
GPT = "openai:gpt-test"
SIX_WORDS = "one two three four five six"
# The footer of an answer from a model that stood in for the first one (never for a handover mid-answer).
GPT_STOOD_IN = "GPT answers.\n\n— answered by openai:gpt-test (anthropic:claude-test was unavailable)"
CLAUDE_STOOD_IN = "Claude answers.\n\n— answered by anthropic:claude-test (openai:gpt-test was unavailable)"


@dataclass(frozen=True)
class Case:
    name: str
    claude_script: tuple
    gpt_reply: str
    expected_text: str
    claude_calls: int
    gpt_calls: int
    min_wait: float = 0.0


CLAUDE_FIRST = [
    Case("429 with Retry-After under the cap: waited out, same model answers",
         (anth.rate_limited(retry_after="7"), anth.Reply(SIX_WORDS)), "unused", SIX_WORDS, 2, 0, min_wait=7.0),
    Case("429 with Retry-After over the cap: no wait, next model answers",
         (anth.rate_limited(retry_after="600"),), "GPT answers.", GPT_STOOD_IN, 1, 1),
    Case("500 once: retried, same model answers",
         (anth.api_error(), anth.Reply(SIX_WORDS)), "unused", SIX_WORDS, 2, 0),
    Case("503 twice: next model answers",
         (anth.Fail(503, "api_error", "unavailable"), anth.Fail(503, "api_error", "unavailable")), "GPT answers.", GPT_STOOD_IN, 2, 1),
    Case("529 overloaded twice: next model answers",
         (anth.overloaded(), anth.overloaded()), "GPT answers.", GPT_STOOD_IN, 2, 1),
    Case("connection reset before any answer: retried",
         (RESET, anth.Reply(SIX_WORDS)), "unused", SIX_WORDS, 2, 0),
    Case("malformed body before the first token: retried",
         (anth.malformed_after(0), anth.Reply(SIX_WORDS)), "unused", SIX_WORDS, 2, 0),
    Case("stream cut mid-way: next model continues without repeating",
         (anth.cut_after(3),), "two three four five six.", "one two three [continued by openai:gpt-test] four five six.", 1, 1),
    Case("error event inside the stream: next model continues",
         (anth.error_event_after(2),), "four five six.", "one two [continued by openai:gpt-test] four five six.", 1, 1),
    Case("stall mid-stream: idle timeout, next model continues",
         (anth.stall_after(4),), "five six.", "one two three four [continued by openai:gpt-test] five six.", 1, 1),
    Case("stall before the first token: next model answers at once, the stalled one is not retried",
         (anth.stall_after(0),), "GPT answers.", GPT_STOOD_IN, 1, 1, min_wait=60.0),
]


@pytest.mark.parametrize("case", CLAUDE_FIRST, ids=[c.name for c in CLAUDE_FIRST])
async def test_anthropic_fault_then_fallback(tmp_path, case):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropicScripted(case.claude_script))
        gpt = await stack.enter_async_context(oai.FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply(case.gpt_reply)))
        settings = settings_for(
            tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT],
            llm_first_token_timeout=60.0, llm_idle_timeout=60.0,
        )
        bot = await start_telegram_bot(stack, settings)
        started = bot.clock.monotonic()
        await bot.user_says("count to six")
        assert bot.texts() == [case.expected_text]
        assert (claude.calls, gpt.calls) == (case.claude_calls, case.gpt_calls)
        assert bot.clock.monotonic() - started >= case.min_wait
        if case.gpt_calls and "continued" in case.expected_text:
            continued = gpt.chat_requests[-1].json["messages"]
            assert continued[-2]["role"] == "assistant" and continued[-1]["role"] == "user"


GPT_FIRST = [
    Case("429 with retry-after-ms: waited out exactly, same model answers",
         (oai.rate_limited(retry_after_ms="1500"), oai.Reply(SIX_WORDS)), "unused", SIX_WORDS, 2, 0, min_wait=1.5),
    Case("insufficient_quota: never retried, next model answers",
         (oai.insufficient_quota(),), "Claude answers.", CLAUDE_STOOD_IN, 1, 1),
    Case("500 then 503: next model answers",
         (oai.server_error(500), oai.server_error(503)), "Claude answers.", CLAUDE_STOOD_IN, 2, 1),
    Case("529: retried, same model answers",
         (oai.server_error(529), oai.Reply(SIX_WORDS)), "unused", SIX_WORDS, 2, 0),
    Case("connection reset: retried",
         (RESET, oai.Reply(SIX_WORDS)), "unused", SIX_WORDS, 2, 0),
    Case("malformed chunk mid-stream: next model continues",
         (oai.malformed_after(2),), "three four five six.", "one two [continued by anthropic:claude-test] three four five six.", 1, 1),
    Case("error object inside the stream: next model continues",
         (oai.error_in_stream(3),), "four five six.", "one two three [continued by anthropic:claude-test] four five six.", 1, 1),
    Case("stream cut mid-way: next model continues",
         (oai.cut_after(5),), "six.", "one two three four five [continued by anthropic:claude-test] six.", 1, 1),
]


@pytest.mark.parametrize("case", GPT_FIRST, ids=[c.name for c in GPT_FIRST])
async def test_openai_fault_then_fallback(tmp_path, case):
    async with AsyncExitStack() as stack:
        gpt = await stack.enter_async_context(FakeOpenAIScripted(case.claude_script))
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(case.gpt_reply)))
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[GPT, CLAUDE])
        bot = await start_telegram_bot(stack, settings)
        started = bot.clock.monotonic()
        await bot.user_says("count to six")
        assert bot.texts() == [case.expected_text]
        assert (gpt.calls, claude.calls) == (case.claude_calls, case.gpt_calls)
        assert bot.clock.monotonic() - started >= case.min_wait


async def test_stall_before_the_first_token_hands_over_even_when_the_retry_budget_would_allow_a_retry(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropicScripted((anth.stall_after(0),)))
        gpt = await stack.enter_async_context(oai.FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("GPT answers.")))
        # A retry budget of 70 s would fit a second 60 s wait for the same model.
        settings = settings_for(
            tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT],
            llm_first_token_timeout=60.0, limits=LimitSettings(retry_after_cap=60.0),
        )
        bot = await start_telegram_bot(stack, settings)
        started = bot.clock.monotonic()
        await bot.user_says("hello")
        assert bot.texts() == [GPT_STOOD_IN]
        assert (claude.calls, gpt.calls) == (1, 1)
        assert 60.0 <= bot.clock.monotonic() - started < 2 * 60.0


@pytest.mark.parametrize(
    "models, calls", [([CLAUDE, GPT], (1, 1)), ([CLAUDE], (2, 0))], ids=["two models: each asked once", "a lone model: asked twice"]
)
async def test_models_without_a_first_token_give_one_error_after_two_timeouts(tmp_path, models, calls):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(0)))
        gpt = await stack.enter_async_context(oai.FakeOpenAI(api_key=OPENAI_KEY, default=oai.stall_after(0)))
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=models, llm_first_token_timeout=20.0)
        bot = await start_telegram_bot(stack, settings)
        started = bot.clock.monotonic()
        await bot.user_says("hello")
        [text] = bot.texts()
        assert text.startswith("Sorry, I could not get an answer")
        assert (claude.calls, gpt.calls) == calls
        assert 2 * 20.0 <= bot.clock.monotonic() - started < 3 * 20.0


async def test_open_breaker_fails_fast_so_fallback_starts_without_calling(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.overloaded()))
        gpt = await stack.enter_async_context(oai.FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("GPT answers.")))
        limits = LimitSettings(breaker_failures=5, breaker_cooldown=600.0)
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT], limits=limits)
        bot = await start_telegram_bot(stack, settings)
        for _ in range(5):
            await bot.user_says("hello")
        calls_when_open = claude.calls
        # Each message: two attempts (one retry); an exhausted retry counts once against the breaker.
        assert calls_when_open == 10
        await bot.user_says("hello again")
        assert claude.calls == calls_when_open
        assert bot.texts()[-1] == GPT_STOOD_IN
        breakers = bot.app.services.features.resilience.snapshot()["breakers"]
        assert breakers["model anthropic:claude-test"]["state"] == "open"
        assert breakers["provider openai"]["state"] == "closed"


async def test_rotated_key_is_picked_up_after_a_401_without_restart(tmp_path):
    new_key = "sk-ant-rotated-key-1111111111111111111111"
    env_file = tmp_path / ".env"
    env_file.write_text(f"ANTHROPIC_API_KEY={new_key}\n")
    from bot.config import CredentialSource

    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=new_key, default=anth.Reply("Hello with the new key.")))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], credentials=CredentialSource({}, env_file))
        bot = await start_telegram_bot(stack, settings)  # started with the old sentinel key
        await bot.user_says("hi")
        assert bot.texts() == ["Hello with the new key."]
        assert claude.calls == 2


class FakeAnthropicScripted(anth.FakeAnthropic):
    def __init__(self, script):
        super().__init__(api_key=ANTHROPIC_KEY, default=anth.Reply("unscripted"))
        self.script(*script)


class FakeOpenAIScripted(oai.FakeOpenAI):
    def __init__(self, script):
        super().__init__(api_key=OPENAI_KEY, default=oai.Reply("unscripted"))
        self.script(*script)


async def test_account_faults_on_every_model_get_an_apology_not_a_retry_hint(tmp_path):
    """Out of credit on one provider, a refused key on the other: waiting cannot help the user."""
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(anth.FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.billing_error()))
        gpt = await stack.enter_async_context(oai.FakeOpenAI(api_key="sk-not-the-one-the-bot-has-000000000000"))
        admin = 555
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, GPT], admin_ids=frozenset({admin}))
        bot = await start_telegram_bot(stack, settings)
        bot.client.known_chats.add(admin)
        await bot.user_says("hello")
        await bot.clock.run_until_complete(bot.app.operator_alerts.settle())
        [text] = bot.texts()
        assert text.startswith("Sorry, I can't answer right now") and "minute" not in text
        assert (claude.calls, gpt.calls) == (1, 1)  # neither fault is worth a retry
        told = "\n".join(bot.texts(admin))
        assert "anthropic says the account of ANTHROPIC_API_KEY is out of credit" in told
        assert "openai refused OPENAI_API_KEY" in told
