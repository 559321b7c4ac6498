import asyncio

import pytest

from integrations.chain import (
    AllModelsFailed,
    ChainModel,
    ChainTimeouts,
    Completed,
    ModelChain,
    ModelTookOver,
    TextDelta,
    drop_overlap,
)
from integrations.clock import ManualClock
from integrations.errors import BadRequest, ContextTooLong, RateLimited, Unavailable
from integrations.llm import ChatMessage, ModelRef
from integrations.model_policy import ModelCallPolicy, ProviderGuard
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.ratelimit import RateLimiter, WaitTooLong
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.tokens import TokenBudget
from tests.fakes.providers import Script, ScriptedProvider

A = ModelRef("anthropic", "a-model")
B = ModelRef("openai", "b-model")
QUESTION = [ChatMessage("user", "hello")]


def chain_of(clock, *providers, timeouts=ChainTimeouts(first_token=5, idle=10, total=100), policy=None):
    refs = [A, B]
    models = [ChainModel(ref, p) for ref, p in zip(refs, providers)]
    if policy is None:
        return ModelChain(models, clock, timeouts)
    return ModelChain(models, clock, timeouts, open_policy=policy)


def production_policy(clock):
    """The model policy as the composition root builds it by default: one retry, guards per provider."""
    policy = ModelCallPolicy(clock, ResilienceRegistry(clock))
    for name in (A.provider, B.provider):
        policy.add_guard(ProviderGuard(
            name,
            CircuitBreaker(f"provider {name}", clock),
            RateLimiter(f"{name} requests", 50, 60.0, clock, burst=8),
            TokenBudget(f"{name} tokens", 400_000, clock),
        ))
    return policy


# The default first-token timeout: short enough that the policy's retry budget (30 s) would
# allow a second attempt, which is what made two stalling models cost four timeouts.
FIRST_TOKEN = ChainTimeouts(first_token=20, idle=30, total=300)
STALL = Script(("never",), stall_after=0)


async def collect(chain, **kwargs):
    events = []
    async for event in chain.stream(QUESTION, system="sys", max_tokens=100, **kwargs):
        events.append(event)
    return events


def text_of(events):
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_first_model_answers_and_usage_is_reported():
    clock = ManualClock()
    a = ScriptedProvider("a", [Script(("Hel", "lo"))])
    b = ScriptedProvider("b")
    events = await collect(chain_of(clock, a, b))
    assert text_of(events) == "Hello"
    assert isinstance(events[-1], Completed) and events[-1].model == A
    assert events[-1].usage[0][1].output_tokens == 5
    assert b.requests == []


async def test_error_before_first_token_falls_back_silently():
    clock = ManualClock()
    a = ScriptedProvider("a", [Script(("x",), error=Unavailable("overloaded"), fail_after=0)])
    b = ScriptedProvider("b", [Script(("from b",))])
    events = await collect(chain_of(clock, a, b))
    assert text_of(events) == "from b"
    assert not any(isinstance(e, ModelTookOver) for e in events)
    assert events[-1].model == B


async def test_no_first_token_in_time_falls_back():
    clock = ManualClock()
    a = ScriptedProvider("a", [Script(("never",), stall_after=0)])
    b = ScriptedProvider("b", [Script(("late but here",))])
    events = await clock.run_until_complete(collect(chain_of(clock, a, b)))
    assert text_of(events) == "late but here"
    assert a.closed_streams == 1


async def test_preferred_model_goes_first():
    clock = ManualClock()
    a = ScriptedProvider("a")
    b = ScriptedProvider("b", [Script(("b first",))])
    events = await collect(chain_of(clock, a, b), preferred=B)
    assert text_of(events) == "b first"
    assert a.requests == []


async def test_every_model_failing_raises_with_each_reason():
    clock = ManualClock()
    a = ScriptedProvider("a", [Script((), error=RateLimited("slow down", retry_after=30))])
    b = ScriptedProvider("b", [Script((), error=BadRequest("nope"))])
    with pytest.raises(AllModelsFailed) as caught:
        await collect(chain_of(clock, a, b))
    assert [f.model for f in caught.value.failures] == [A, B]
    assert caught.value.partial_text == ""


async def test_failure_mid_stream_continues_on_next_model_without_repeating():
    clock = ManualClock()
    a = ScriptedProvider("a", [Script(("The quick brown ", "fox jumps"), error=Unavailable("cut"), fail_after=2)])
    b = ScriptedProvider("b", [Script(("fox jumps over ", "the lazy dog."))])
    events = await collect(chain_of(clock, a, b))
    assert text_of(events) == "The quick brown fox jumps over the lazy dog."
    takeover = [e for e in events if isinstance(e, ModelTookOver)]
    assert takeover and takeover[0].previous == A and takeover[0].model == B
    continued = b.requests[0].messages
    assert continued[-2] == ChatMessage("assistant", "The quick brown fox jumps")
    assert continued[-1].role == "user"


async def test_stalled_stream_mid_answer_fails_over_after_idle_timeout():
    clock = ManualClock()
    a = ScriptedProvider("a", [Script(("partial answer", " never"), stall_after=1)])
    b = ScriptedProvider("b", [Script((" and the rest",))])
    events = await clock.run_until_complete(collect(chain_of(clock, a, b)))
    assert text_of(events) == "partial answer and the rest"


async def test_mid_stream_failure_on_last_model_keeps_partial_text():
    clock = ManualClock()
    a = ScriptedProvider("a", [Script(("half an ", "answer"), error=Unavailable("cut"), fail_after=2)])
    b = ScriptedProvider("b", [Script((), error=Unavailable("down"))])
    with pytest.raises(AllModelsFailed) as caught:
        await collect(chain_of(clock, a, b))
    assert caught.value.partial_text == "half an answer"


async def test_context_too_long_trims_history_and_retries_once_then_moves_on():
    clock = ManualClock()
    long_history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i} " * 50) for i in range(20)]
    a = ScriptedProvider("a", [Script((), error=ContextTooLong("too long")), Script((), error=ContextTooLong("too long"))])
    b = ScriptedProvider("b", [Script(("fits",))])
    chain = chain_of(clock, a, b)
    events = [e async for e in chain.stream(long_history, system=None, max_tokens=100)]
    assert text_of(events) == "fits"
    assert len(a.requests) == 2
    assert len(a.requests[1].messages) < len(a.requests[0].messages)
    assert a.requests[1].messages[-1] == long_history[-1]


async def test_empty_answer_counts_as_failure():
    clock = ManualClock()
    a = ScriptedProvider("a", [Script(())])
    b = ScriptedProvider("b", [Script(("real answer",))])
    assert text_of(await collect(chain_of(clock, a, b))) == "real answer"


def test_drop_overlap_removes_repeated_tail_only():
    assert drop_overlap("I like green apples", "green apples and pears") == " and pears"
    assert drop_overlap("The end.", " Another sentence") == " Another sentence"
    # A short coincidental overlap ("e") is kept: it is more likely new text.
    assert drop_overlap("the house", "e is big") == "e is big"


async def test_two_stalling_models_fail_after_two_first_token_timeouts_not_four():
    clock = ManualClock()
    a, b = ScriptedProvider("a", default=STALL), ScriptedProvider("b", default=STALL)
    chain = chain_of(clock, a, b, timeouts=FIRST_TOKEN, policy=production_policy(clock))
    started = clock.monotonic()

    with pytest.raises(AllModelsFailed) as caught:
        await clock.run_until_complete(collect(chain))

    assert clock.monotonic() - started == pytest.approx(2 * 20)
    assert (len(a.requests), len(b.requests)) == (1, 1)
    assert [f.model for f in caught.value.failures] == [A, B]


async def test_first_model_stalling_hands_over_at_the_first_token_timeout():
    clock = ManualClock()
    a = ScriptedProvider("a", default=STALL)
    b = ScriptedProvider("b", [Script(("from b",))])
    chain = chain_of(clock, a, b, timeouts=FIRST_TOKEN, policy=production_policy(clock))
    started = clock.monotonic()

    events = await clock.run_until_complete(collect(chain))

    assert text_of(events) == "from b"
    assert clock.monotonic() - started <= 20 + 0.01
    assert len(a.requests) == 1 and a.closed_streams == 1


async def test_a_lone_stalling_model_is_retried_once_before_the_error():
    clock = ManualClock()
    a = ScriptedProvider("a", default=STALL)
    chain = chain_of(clock, a, timeouts=FIRST_TOKEN, policy=production_policy(clock))
    started = clock.monotonic()

    with pytest.raises(AllModelsFailed) as caught:
        await clock.run_until_complete(collect(chain))

    assert len(a.requests) == 2
    assert clock.monotonic() - started == pytest.approx(2 * 20)
    assert [f.model for f in caught.value.failures] == [A]  # one entry per model, the last outcome


async def test_a_lone_stall_gets_its_second_try_after_the_other_models_failed():
    clock = ManualClock()
    a = ScriptedProvider("a", [STALL, Script(("second try",))])
    b = ScriptedProvider("b", default=Script((), error=BadRequest("nope")))

    events = await clock.run_until_complete(collect(chain_of(clock, a, b, timeouts=FIRST_TOKEN)))

    assert text_of(events) == "second try"
    assert len(a.requests) == 2 and len(b.requests) == 1


@pytest.mark.parametrize("tightened", ["token budget", "request limiter"])
async def test_a_tightened_limit_on_the_first_model_fails_over_at_once(tightened):
    clock = ManualClock()
    policy = production_policy(clock)
    guard = policy.guards[A.provider]
    limit = guard.budget if tightened == "token budget" else guard.limiter
    limit.tighten(0, 60.0)  # the headers said: nothing left for a minute
    a = ScriptedProvider("a")
    b = ScriptedProvider("b", [Script(("from b",))])
    started = clock.monotonic()

    events = await clock.run_until_complete(collect(chain_of(clock, a, b, timeouts=FIRST_TOKEN, policy=policy)))

    assert text_of(events) == "from b"
    assert clock.monotonic() == started
    assert a.requests == []
    breaker = policy.model_breaker(A).snapshot()
    assert breaker["failures_in_window"] == 0 and breaker["totals"]["failures"] == 0


async def test_a_short_wait_for_the_token_budget_is_waited_out_on_the_same_model():
    clock = ManualClock()
    policy = production_policy(clock)
    # One token left for the next 3 s: the request goes when that tightening ends.
    policy.guards[A.provider].budget.tighten(1, 3.0)
    a = ScriptedProvider("a", [Script(("from a",))])
    b = ScriptedProvider("b")
    started = clock.monotonic()

    events = await clock.run_until_complete(collect(chain_of(clock, a, b, timeouts=FIRST_TOKEN, policy=policy)))

    assert text_of(events) == "from a"
    assert 0 < clock.monotonic() - started <= policy.max_wait
    assert b.requests == []


async def test_the_wait_cap_error_names_the_limit_that_refused():
    clock = ManualClock()
    policy = production_policy(clock)
    policy.guards[A.provider].budget.tighten(0, 60.0)
    chain = chain_of(clock, ScriptedProvider("a"), ScriptedProvider("b", default=Script((), error=BadRequest("nope"))), policy=policy)

    with pytest.raises(AllModelsFailed) as caught:
        await clock.run_until_complete(collect(chain))

    refused = caught.value.failures[0].error
    assert isinstance(refused, WaitTooLong) and refused.upstream == "anthropic tokens"


async def _answer_text(chain: ModelChain) -> str:
    return "".join([e.text async for e in chain.stream(QUESTION, system=None, max_tokens=50) if isinstance(e, TextDelta)])


async def test_a_question_that_finds_no_model_yet_waits_for_the_one_still_starting():
    clock = ManualClock()
    chain = ModelChain([], clock)
    starting: asyncio.Future = asyncio.get_running_loop().create_future()
    chain.models_when_started(starting)
    asking = asyncio.ensure_future(_answer_text(chain))
    await clock.advance(3)
    assert not asking.done(), "the offline model is still loading"
    starting.set_result([ChainModel(ModelRef("local", "smollm2"), ScriptedProvider("local", default=Script(("Hi!",))))])
    assert await clock.run_until_complete(asking) == "Hi!"
    assert chain.refs == [ModelRef("local", "smollm2")]


async def test_a_model_that_never_finishes_starting_ends_in_the_no_model_error():
    clock = ManualClock()
    chain = ModelChain([], clock, starting_wait=30)
    chain.models_when_started(asyncio.get_running_loop().create_future())
    asking = asyncio.ensure_future(_answer_text(chain))
    await clock.advance(29)
    assert not asking.done()
    await clock.advance(1)
    with pytest.raises(AllModelsFailed):
        await asking


async def test_a_chain_with_models_does_not_wait_for_one_still_starting():
    clock = ManualClock()
    chain = chain_of(clock, ScriptedProvider("a", default=Script(("now",))))
    chain.models_when_started(asyncio.get_running_loop().create_future())
    assert await clock.run_until_complete(_answer_text(chain)) == "now"
