"""/search end to end: the official openai SDK against a strict local Perplexity Agent API,
through the resilience layer and the SQLite cache, to what the user sees and the chat history."""
from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace

import httpx
import openai
import pytest

from handlers.basic import basic_commands
from handlers.router import Router
from handlers.search import SearchConfig, SearchService, search_commands
from handlers.services import Features
from integrations.clock import ManualClock
from integrations.errors import AuthFailed, BadRequest, MalformedResponse, RateLimited, Unavailable
from integrations.perplexity import PerplexitySearch, SearchAnswer, SearchQuery, SearchRunFailed, TextDelta
from integrations.resilience.compose import Upstream
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.registry import ResilienceRegistry
from integrations.resilience.retry import RetryPolicy
from state.cache import SqliteCache
from tests.fakes import perplexity_server as pplx
from tests.fakes.http_server import RESET
from tests.fakes.perplexity_server import FakePerplexity
from tests.fakes.providers import Script, ScriptedProvider
from tests.harness import USER, Bot, start_bot

KEY = "pplx-test-0123456789abcdef"
ANSWER = pplx.Answer().text
SOURCES_SEEN = "Sources\n\n1. Tokio tutorial\n2. Asynchronous Programming in Rust"


@dataclass
class Search:
    fake: FakePerplexity
    clock: ManualClock
    service: SearchService
    upstream: Upstream
    bot: Bot
    llm: ScriptedProvider

    async def run(self, query: str) -> SearchAnswer | Exception:
        """The service's answer (or error) for a query, with virtual time running."""
        parsed = self.service.parse(query)
        assert parsed is not None
        try:
            return (await self.clock.run_until_complete(self.service.search(parsed))).answer
        except Exception as error:  # noqa: BLE001 - the test inspects it
            return error

    async def cached_entries(self) -> int:
        return (await self.service.cache.stats()).entries


async def start_search(
    stack: AsyncExitStack,
    tmp_path,
    fake: FakePerplexity,
    *,
    max_attempts: int = 3,
    # Off unless a test drives it: run_until_complete jumps to the next deadline whenever real I/O
    # takes a few milliseconds, which would fire a per-attempt timeout at random.
    attempt_timeout: float | None = None,
    preset: str | None = None,
) -> Search:
    clock = ManualClock()
    llm = ScriptedProvider("openai", default=Script(("Sure, ", "more on that.")))
    bot = await start_bot(stack, tmp_path, [("openai:gpt-test", llm)], clock=clock)
    registry = ResilienceRegistry(clock)
    upstream = registry.register_upstream(
        Upstream(
            "perplexity",
            clock,
            breaker=registry.breaker("perplexity"),
            limiter=RateLimiter("perplexity requests", 50, 60, clock, burst=5),
            retry=RetryPolicy(max_attempts=max_attempts, max_total=60, base=0.5, cap=2, retry_after_cap=20),
            attempt_timeout=attempt_timeout,
        )
    )
    client = PerplexitySearch(api_key=KEY, base_url=fake.base_url, preset=preset, now=clock.now)
    stack.push_async_callback(client.aclose)
    cache = SqliteCache(bot.database, clock, max_entries=100)
    service = SearchService(client, cache, upstream, SearchConfig(cache_ttl=300, bot_username="switchbot"))
    bot.services = replace(bot.services, features=Features(search=service))
    bot.router = Router(bot.services, [*basic_commands(), *search_commands()])
    return Search(fake, clock, service, upstream, bot, llm)


@pytest.fixture
async def stack():
    async with AsyncExitStack() as stack:
        yield stack


async def fake_with(stack: AsyncExitStack, *script, default=pplx.Answer()) -> FakePerplexity:
    fake = await stack.enter_async_context(FakePerplexity(api_key=KEY, default=default))
    fake.script(*script)
    return fake


# What the user sees


async def test_answer_streams_then_ends_with_numbered_source_links(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, pplx.Answer(chunks=4)))
    await s.bot.say("/search rust async")
    assert s.bot.replies() == [f"{ANSWER}\n\n{SOURCES_SEEN}"]
    [final] = s.bot.transport.messages[USER].values()
    links = [(final.text[e.offset : e.offset + e.length], e.url) for e in final.entities if e.kind == "text_url"]
    assert links == [
        ("Tokio tutorial", "https://tokio.rs/tokio/tutorial"),
        ("Asynchronous Programming in Rust", "https://rust-lang.github.io/async-book/"),
    ]
    drafts = [c.text.text for c in s.bot.transport.calls if c.kind == "draft"]
    assert drafts and all(ANSWER.startswith(d) for d in drafts), "the answer streams before the sources appear"


async def test_same_search_again_is_answered_from_the_cache_saying_how_old_it_is(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    await s.bot.say("/search rust async")
    await s.clock.advance(120)
    await s.bot.say("/search   Rust   ASYNC ")
    first, second = s.bot.replies()
    assert second == f"{first}\n\ncached 2 min ago"
    assert s.fake.calls == 1


async def test_cached_answer_expires_after_the_ttl(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    assert isinstance(await s.run("rust async"), SearchAnswer)
    await s.clock.advance(301)
    assert isinstance(await s.run("rust async"), SearchAnswer)
    assert s.fake.calls == 2


async def test_different_filters_are_different_searches(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    await s.run("rust async")
    await s.run("week: rust async")
    assert s.fake.calls == 2


async def test_answer_without_sources_says_it_has_none(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, pplx.no_results("It depends on the runtime.")))
    await s.bot.say("/search rust async")
    assert s.bot.replies() == [
        "It depends on the runtime.\n\nNo sources were returned for this answer, so check it elsewhere."
    ]


async def test_empty_text_and_no_sources_is_nothing_found_and_not_kept(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, pplx.nothing_found()))
    await s.bot.say("/search zxqv flurb")
    assert s.bot.replies() == ["🔎 Nothing found for “zxqv flurb”. Try other words or fewer filters."]
    assert await s.cached_entries() == 0
    assert await s.bot.services.history.last_answer(USER) is None


async def test_failed_run_is_reported_not_shown_as_an_answer_and_not_cached(stack, tmp_path):
    fake = await fake_with(stack, default=pplx.failed_run("The agent crashed."))
    s = await start_search(stack, tmp_path, fake, max_attempts=2)
    await s.bot.say("/search rust async")
    assert s.bot.replies() == [
        "⚠️ The search did not finish: Perplexity reported the run as failed. "
        "Nothing was saved; please try again in a minute."
    ]
    assert fake.calls == 2, "a failed run is worth one more try"
    assert await s.cached_entries() == 0
    assert await s.bot.services.history.last_answer(USER) is None
    fake.default = pplx.Answer()
    assert isinstance(await s.run("rust async"), SearchAnswer)
    assert fake.calls == 3


async def test_cancelled_run_is_reported(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, default=pplx.cancelled_run()), max_attempts=1)
    error = await s.run("rust async")
    assert isinstance(error, SearchRunFailed) and error.run_status == "cancelled"
    assert await s.cached_entries() == 0


async def test_an_answer_cut_at_its_length_limit_says_so_and_continue_finishes_it(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, pplx.incomplete_run("Tokio is the most used runtime and")))
    await s.bot.say("/search rust async")
    [reply] = s.bot.replies()
    assert "Tokio is the most used runtime and" in reply
    assert reply.endswith("This answer reached its length limit. Send /continue for the rest.)")
    assert await s.cached_entries() == 0, "a cut answer is never cached"
    await s.bot.say("/continue")
    assert s.bot.replies()[-1] == "Sure, more on that."
    asked = [m.content for m in s.llm.requests[-1].messages]
    assert asked[0] == "Web search: rust async" and "Tokio is the most used runtime and" in asked[1]
    assert asked[-1].startswith("Continue your previous answer")


async def test_an_answer_cut_for_another_reason_is_marked_incomplete_and_not_remembered(stack, tmp_path):
    cut = pplx.Answer(text="Tokio is the most used runtime and", status="incomplete", incomplete_reason="content_filter")
    s = await start_search(stack, tmp_path, await fake_with(stack, cut))
    await s.bot.say("/search rust async")
    [reply] = s.bot.replies()
    assert reply.startswith("⚠️ The search stopped before the answer was complete (content_filter)")
    assert await s.cached_entries() == 0
    assert await s.bot.services.history.last_answer(USER) is None


async def test_search_is_not_configured_says_how_to_set_it_up(stack, tmp_path):
    bot = await start_bot(stack, tmp_path, [("openai:gpt-test", ScriptedProvider("openai"))])
    bot.router = Router(bot.services, [*basic_commands(), *search_commands()])
    await bot.say("/search rust async")
    [reply] = bot.replies()
    assert "not set up" in reply and "PERPLEXITY_API_KEY" in reply


async def test_empty_query_shows_how_to_search(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    await s.bot.say("/search   week: ")
    [reply] = s.bot.replies()
    assert reply.startswith("Search the web: /search <question>") and "site:example.com" in reply
    assert s.fake.calls == 0


# Follow-ups


async def test_follow_up_question_in_chat_sees_the_search_in_its_history(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    await s.bot.say("/search week: rust async")
    await s.bot.say("Which of those is easier to learn?")
    messages = [(m.role, m.content) for m in s.llm.requests[-1].messages]
    assert messages == [
        ("user", "Web search: rust async (week:)"),
        (
            "assistant",
            f"{ANSWER}\n\n**Sources**\n1. [Tokio tutorial](https://tokio.rs/tokio/tutorial)\n"
            "2. [Asynchronous Programming in Rust](https://rust-lang.github.io/async-book/)",
        ),
        ("user", "Which of those is easier to learn?"),
    ]


# The request on the wire


async def test_query_is_normalised_and_filters_reach_the_request_body(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    await s.bot.say("/search week:  rust\n async @SwitchBot site:tokio.rs -site:spam.com")
    [body] = s.fake.bodies
    assert body == {
        "model": "perplexity/sonar",
        "input": "rust async",
        "instructions": s.service.client.instructions,
        "max_output_tokens": 1024,
        "stream": True,
        "tools": [
            {
                "type": "web_search",
                "max_results": 5,
                "filters": {"search_recency_filter": "week", "search_domain_filter": ["tokio.rs", "-spam.com"]},
            }
        ],
        "tool_choice": {"type": "web_search"},
    }
    assert s.fake.agent_requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_preset_requests_pass_the_strict_api(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack), preset="fast")
    assert isinstance(await s.run("rust async site:tokio.rs"), SearchAnswer)
    assert isinstance(await s.run("python async"), SearchAnswer)
    first, second = s.fake.bodies
    assert first["preset"] == "fast" and "model" not in first
    assert first["tools"][0]["filters"] == {"search_domain_filter": ["tokio.rs"]}
    assert "tools" not in second


async def test_fake_refuses_unknown_fields_with_the_documented_envelope(stack):
    fake = await fake_with(stack)
    async with httpx.AsyncClient(base_url=fake.server.url, headers={"authorization": f"Bearer {KEY}"}) as http:
        top = await http.post("/v1/agent", json={"model": "perplexity/sonar", "input": "q", "temperature_x": 1})
        nested = await http.post(
            "/v1/responses",
            json={
                "model": "perplexity/sonar",
                "input": "q",
                "tools": [{"type": "web_search", "filters": {"search_recency_filter": "week", "country": "us"}}],
            },
        )
        fine = await http.post("/v1/agent", json={"model": "perplexity/sonar", "input": "q"})
    assert top.status_code == 400
    assert top.json() == {
        "error": {
            "message": 'invalid request body: json: unknown field "temperature_x"',
            "type": "invalid_request",
            "code": 400,
            "param": "temperature_x",
        }
    }
    assert nested.status_code == 400 and nested.json()["error"]["param"] == "country"
    assert fine.status_code == 200 and fine.json()["status"] == "completed"


class SloppySearch(PerplexitySearch):
    """Sends a field the Agent API does not know (the Sonar API's old `web_search_options`)."""

    def request(self, query: SearchQuery):
        arguments, extra = super().request(query)
        return arguments, {**extra, "web_search_options": {"search_context_size": "high"}}


async def test_request_with_an_unknown_field_is_a_bad_request_and_not_retried(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    s.service.client = SloppySearch(api_key=KEY, base_url=s.fake.base_url)
    stack.push_async_callback(s.service.client.aclose)
    error = await s.run("rust async")
    assert isinstance(error, BadRequest)
    assert 'unknown field "web_search_options"' in str(error)
    assert s.fake.calls == 1
    assert s.upstream.breaker.state == "closed", "a refused request says nothing about Perplexity's health"


async def test_fake_sees_fields_the_sdk_sends_for_openai_only(stack):
    fake = await fake_with(stack)
    async with openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.responses.create(model="perplexity/sonar", input="q", store=False)
    assert refused.value.body["param"] == "store"


async def test_fake_answers_without_stream_as_one_json_response(stack):
    fake = await fake_with(stack)
    async with openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0) as sdk:
        response = await sdk.responses.create(model="perplexity/sonar", input="rust async")
    assert response.status == "completed" and response.output_text == ANSWER
    assert response.to_dict(warnings=False)["output"][0]["type"] == "search_results"


async def test_fake_requires_a_bearer_key(stack):
    fake = await fake_with(stack)
    async with httpx.AsyncClient(base_url=fake.server.url) as http:
        refused = await http.post("/v1/agent", json={"model": "perplexity/sonar", "input": "q"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == 401


# Streaming, as the adapter reads it


async def test_adapter_streams_text_deltas_then_the_answer_with_sources_and_cost(stack):
    fake = await fake_with(stack, pplx.Answer(chunks=3))
    client = PerplexitySearch(api_key=KEY, base_url=fake.base_url)
    stack.push_async_callback(client.aclose)
    events = [event async for event in client.stream(SearchQuery("rust async"))]
    *deltas, answer = events
    assert len(deltas) == 3 and all(isinstance(d, TextDelta) for d in deltas)
    assert "".join(d.text for d in deltas) == ANSWER
    assert isinstance(answer, SearchAnswer) and answer.complete and answer.text == ANSWER
    assert [s.url for s in answer.sources] == ["https://tokio.rs/tokio/tutorial", "https://rust-lang.github.io/async-book/"]
    assert answer.model == "perplexity/sonar" and answer.response_id.startswith("resp_")
    assert answer.usage.cost == pytest.approx(0.005012 + 0.000001 * len(ANSWER.split()))
    assert answer.usage.currency == "USD"


# Failures through the resilience layer


async def test_rate_limit_with_retry_after_is_waited_out_then_answered(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, pplx.rate_limited(retry_after="7")))
    started = s.clock.monotonic()
    answer = await s.run("rust async")
    assert isinstance(answer, SearchAnswer) and answer.text == ANSWER
    assert s.clock.monotonic() - started == pytest.approx(7.0)
    assert s.fake.calls == 2


async def test_rate_limit_without_retry_after_waits_for_the_reset_header(stack, tmp_path):
    fake = await fake_with(stack, pplx.rate_limited(reset="4"))
    s = await start_search(stack, tmp_path, fake)
    started = s.clock.monotonic()
    assert isinstance(await s.run("rust async"), SearchAnswer)
    assert s.clock.monotonic() - started == pytest.approx(4.0)


async def test_rate_limit_longer_than_the_cap_is_reported_with_the_wait(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, pplx.rate_limited(retry_after="90")))
    await s.bot.say("/search rust async")
    assert s.bot.replies() == ["Perplexity is limiting how often I can search right now; please try again in 90 s."]
    assert s.fake.calls == 1


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_error_then_success_is_answered(stack, tmp_path, status):
    s = await start_search(stack, tmp_path, await fake_with(stack, pplx.server_error(status)))
    answer = await s.run("rust async")
    assert isinstance(answer, SearchAnswer) and answer.text == ANSWER
    assert s.fake.calls == 2


async def test_connection_reset_then_success_is_answered(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, RESET))
    assert isinstance(await s.run("rust async"), SearchAnswer)
    assert s.fake.calls == 2


@pytest.mark.parametrize(
    "broken",
    [pplx.cut_after(2), pplx.cut_after(2, abortive=False), pplx.end_early(2)],
    ids=["reset", "hang-up", "clean-end-without-terminal"],
)
async def test_cut_stream_is_retried_and_the_full_answer_shown(stack, tmp_path, broken):
    s = await start_search(stack, tmp_path, await fake_with(stack, broken))
    await s.bot.say("/search rust async")
    assert s.bot.replies() == [f"{ANSWER}\n\n{SOURCES_SEEN}"]
    assert s.fake.calls == 2


async def test_stalled_stream_times_out_and_is_retried(stack, tmp_path):
    fake = await fake_with(stack, pplx.stall_after(1))
    s = await start_search(stack, tmp_path, fake, attempt_timeout=30)
    search = asyncio.ensure_future(s.service.search(SearchQuery("rust async")))
    await fake.server.stall_began.wait()
    await s.clock.advance(29)
    assert not search.done(), "still within the attempt's time"
    await s.clock.advance(1)
    await s.clock.advance(2)  # the retry's backoff (at most 2 s)
    outcome = await asyncio.wait_for(search, timeout=5)  # the second attempt is real local I/O only
    assert outcome.answer.text == ANSWER
    assert fake.calls == 2


async def test_every_attempt_cut_is_reported_as_unavailable_and_not_cached(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack, default=pplx.cut_after(1)))
    await s.bot.say("/search rust async")
    assert s.bot.replies() == ["Perplexity is not answering right now. Please try again in a minute."]
    assert s.fake.calls == 3
    assert await s.cached_entries() == 0


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
async def test_bare_error_event_is_an_upstream_error(stack, tmp_path, nested):
    fake = await fake_with(stack, default=pplx.error_event_after(1, nested=nested))
    s = await start_search(stack, tmp_path, fake, max_attempts=1)
    error = await s.run("rust async")
    assert isinstance(error, Unavailable) and "Something went wrong." in str(error)


async def test_rate_limit_error_event_is_rate_limited(stack, tmp_path):
    fake = await fake_with(stack, default=pplx.error_event_after(0, code="rate_limit_exceeded", message="slow down"))
    s = await start_search(stack, tmp_path, fake, max_attempts=1)
    assert isinstance(await s.run("rust async"), RateLimited)


@pytest.mark.parametrize("broken", [pplx.malformed_after(1), pplx.malformed_final()], ids=["bad-json", "bad-final"])
async def test_malformed_answer_gives_a_clear_message_and_no_crash(stack, tmp_path, broken):
    s = await start_search(stack, tmp_path, await fake_with(stack, default=broken))
    assert isinstance(await s.run("python async"), MalformedResponse)
    await s.bot.say("/search rust async")
    assert s.bot.replies() == [
        "Perplexity sent an answer I could not read, so I cannot show it. Please try again in a minute."
    ]
    assert await s.cached_entries() == 0


async def test_refused_key_is_reported_without_the_key_and_opens_the_breaker(stack, tmp_path):
    fake = await stack.enter_async_context(FakePerplexity(api_key="the-right-key"))
    s = await start_search(stack, tmp_path, fake)
    error = await s.run("rust async")
    assert isinstance(error, AuthFailed) and KEY not in str(error) and KEY[:4] not in str(error)
    assert s.upstream.breaker.state == "open"
    await s.bot.say("/search rust async")
    assert s.bot.replies() == ["Web search is paused after repeated Perplexity failures; please try again in a minute."]
    assert fake.calls == 1


async def test_user_cancel_stops_the_search_and_keeps_nothing(stack, tmp_path):
    fake = await fake_with(stack, default=pplx.stall_after(2))
    s = await start_search(stack, tmp_path, fake, attempt_timeout=None)

    async def cancel_once_text_is_shown() -> None:
        await fake.server.stall_began.wait()
        while not any(call.kind == "draft" for call in s.bot.transport.calls):
            await asyncio.sleep(0)  # real I/O: the client is still reading the deltas
        assert s.bot.services.lanes.cancel(USER)

    canceller = asyncio.ensure_future(cancel_once_text_is_shown())
    await s.bot.say("/search rust async")
    await canceller
    [reply] = s.bot.replies()
    assert reply.endswith("(stopped)") and reply.startswith("Most Rust async")
    assert await s.cached_entries() == 0


async def test_cached_answer_survives_json_round_trip_exactly(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    fresh = await s.run("rust async")
    cached = await s.run("rust async")
    assert fresh == cached
    [row] = await s.bot.database.fetchall("SELECT kind, key, value FROM cache_entries")
    assert row["kind"] == "search" and json.loads(row["key"])["q"] == "rust async"
    assert str(USER) not in row["key"], "the cache key holds nothing about who asked"


async def test_a_search_question_longer_than_a_chat_message_is_refused_before_any_call(stack, tmp_path):
    s = await start_search(stack, tmp_path, await fake_with(stack))
    await s.bot.say("/search " + "rust async " * 10_000)
    [reply] = s.bot.replies()
    assert "the limit is 16,000" in reply
    assert s.fake.calls == 0
