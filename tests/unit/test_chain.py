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
from integrations.errors import BadRequest, ContextTooLong, RateLimited, Unavailable
from integrations.llm import ChatMessage, ModelRef
from integrations.resilience.clock import ManualClock
from tests.fakes.providers import Script, ScriptedProvider

A = ModelRef("anthropic", "a-model")
B = ModelRef("openai", "b-model")
QUESTION = [ChatMessage("user", "hello")]


def chain_of(clock, *providers, timeouts=ChainTimeouts(first_token=5, idle=10, total=100)):
    refs = [A, B]
    return ModelChain([ChainModel(ref, p) for ref, p in zip(refs, providers)], clock, timeouts)


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
