"""What a group of model calls cost, however each ended (integrations/usage_meter.py), on the real
chain with scripted providers and a manual clock."""
import math

from integrations.chain import AllModelsFailed, ChainModel, ChainTimeouts, ModelChain
from integrations.clock import ManualClock, wait_for
from integrations.context_window import CHARS_PER_TOKEN, estimate_tokens
from integrations.errors import BadRequest, Unavailable
from integrations.llm import ChatMessage, ModelRef, Usage
from integrations.usage_meter import UsageMeter
from tests.fakes.providers import Script, ScriptedProvider

A = ModelRef("anthropic", "a-model")
B = ModelRef("openai", "b-model")
QUESTION = [ChatMessage("user", "hello there")]
ASKED = estimate_tokens("hello there") + estimate_tokens("sys")


def metered_chain(clock, meter, *providers, timeouts=ChainTimeouts(first_token=5, idle=10, total=100)):
    chain = ModelChain([ChainModel(ref, p) for ref, p in zip([A, B], providers)], clock, timeouts)
    return meter.chain(chain)


async def drain(chain):
    async for _ in chain.stream(QUESTION, system="sys", max_tokens=100):
        pass


async def test_a_finished_call_costs_what_it_reported_and_a_refused_one_nothing():
    clock, meter = ManualClock(), UsageMeter()
    refused = ScriptedProvider("a", [Script(("x",), error=BadRequest("no", upstream="a"))])
    answers = ScriptedProvider("b", [Script(("Hel", "lo"), usage=Usage(30, 2))])
    await drain(metered_chain(clock, meter, refused, answers))
    assert meter.spent() == ((B, Usage(30, 2)),)


async def test_a_call_that_failed_mid_answer_costs_its_input_and_the_text_it_sent():
    clock, meter = ManualClock(), UsageMeter()
    dies = ScriptedProvider("a", [Script(("one ", "two ", "three"), error=Unavailable("cut", upstream="a"), fail_after=2)])
    finishes = ScriptedProvider("b", [Script(("three",), usage=Usage(40, 1))])
    await drain(metered_chain(clock, meter, dies, finishes))
    assert meter.spent() == ((A, Usage(ASKED, math.ceil(len("one two ") / CHARS_PER_TOKEN))), (B, Usage(40, 1)))


async def test_a_stream_cut_by_a_deadline_costs_its_input_and_what_it_sent():
    clock, meter = ManualClock(), UsageMeter()
    stalls = ScriptedProvider("a", [Script(("one ", "two ", "three"), stall_after=1)])
    chain = metered_chain(clock, meter, stalls, timeouts=ChainTimeouts(first_token=500, idle=500, total=1000))
    try:
        await clock.run_until_complete(wait_for(clock, drain(chain), 20))
    except TimeoutError:
        pass
    assert meter.spent() == ((A, Usage(ASKED, math.ceil(len("one ") / CHARS_PER_TOKEN))),)


async def test_every_model_failing_before_its_first_token_costs_nothing():
    clock, meter = ManualClock(), UsageMeter()
    a = ScriptedProvider("a", [Script(("x",), error=Unavailable("down", upstream="a"))])
    b = ScriptedProvider("b", [Script(("x",), error=Unavailable("down", upstream="b"))])
    try:
        await clock.run_until_complete(drain(metered_chain(clock, meter, a, b)))
    except AllModelsFailed:
        pass
    assert meter.spent() == ()
