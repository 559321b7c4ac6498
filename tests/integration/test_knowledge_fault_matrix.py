"""Every way Perplexity and Notion misbehave, through the composition root: what the user sees, how many calls.

The bot is the one `bot.app` builds, with /search and /note both configured, on a fake Telegram,
the official SDKs (openai for Perplexity, notion-client) and strict local fakes. Each case scripts
the upstream, drives the bot as a user would, and asserts the messages the user ends up with and
the requests the fake received (one retry loop: SDK retries are off; `knowledge_retry` allows 3
attempts).

Not applicable here: an error event inside a stream and a stream cut mid-way are Perplexity-only
cases, because Notion answers with one JSON body and never streams.

Time is a ManualClock shared with the fake Notion. Per-attempt timeouts are out of reach (10 000 s,
beyond what `run_until_complete` jumps to) except in the stall tests, which set them to 20 s or
60 s and move the clock by hand, so a slow machine never fires a timeout no test asked for.

A timed-out attempt is retried (the retry budget leaves room for a whole timeout), and a
timed-out page creation that Notion carried out is found by its key rather than repeated.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.config import LimitSettings, NotionSettings, PerplexitySettings, Secret
from integrations.clock import ManualClock
from tests.fakes import perplexity_server as pplx
from tests.fakes.http_server import RESET, Fault, RecordedRequest, Response
from tests.fakes.notion_server import (
    LOSE_RESPONSE,
    MALFORMED_RESPONSE,
    STALL_RESPONSE,
    FakeNotion,
    Refuse,
    rate_limited,
    unavailable,
)
from tests.fakes.perplexity_server import ENDPOINTS, FakePerplexity
from tests.fakes.telegram import new_message_event
from tests.integration.telegram_bot import MESSAGE_IDS, USER, TelegramBot, settings_for, start_telegram_bot

PERPLEXITY_KEY = "pplx-sentinel-fault-matrix-key-0000000000"
NOTION_TOKEN = "secret_fault-matrix-sentinel-notion-token-00000000"
OUT_OF_REACH = 10_000.0
# knowledge_retry allows retry_after_cap + 10 = 30 s in all: a 20 s attempt that times out leaves
# room for a retry, a 60 s one does not.
WITHIN_BUDGET = 20.0
BEYOND_BUDGET = 60.0
RETRY_LOG = "integrations.resilience.retry"

QUESTION = "/search rust async runtime"
ANSWERED = f"{pplx.Answer().text}\n\nSources\n\n1. Tokio tutorial\n2. Asynchronous Programming in Rust"
SEARCH_FAILED = "Perplexity is not answering right now. Please try again in a minute."

NOTE = "/note Call the plumber #home\nAbout the kitchen tap"
SAVED = "Saved to Notion: {url}"
QUEUED_SLOW_DOWN = "Notion asked me to slow down, so your note is queued. I'll send the link once it's saved."
QUEUED_UNREACHABLE = "Notion is unreachable right now, so your note is queued. I'll send the link once it's saved."
QUEUED_TOKEN_REFUSED = (
    "Notion refused the bot's token, so your note is queued until the operator fixes NOTION_TOKEN. "
    "I'll send the link once it's saved."
)



class TimedPerplexity(FakePerplexity):
    """The strict fake, also noting when (on the test's clock) each search request arrived."""

    def __init__(self, clock: ManualClock, **kwargs) -> None:
        super().__init__(api_key=PERPLEXITY_KEY, **kwargs)
        self.clock = clock
        self.arrived_at: list[float] = []

    async def _handle(self, request: RecordedRequest) -> Response | Fault:
        if request.path in ENDPOINTS:
            self.arrived_at.append(self.clock.monotonic())
        return await super()._handle(request)


@dataclass
class Knowledge:
    bot: TelegramBot
    search: TimedPerplexity
    notion: FakeNotion

    @property
    def clock(self) -> ManualClock:
        return self.bot.clock

    def creates(self) -> list[RecordedRequest]:
        return self.notion.requests_to("POST", "/v1/pages")

    def lookups(self) -> list[RecordedRequest]:
        """Queries for a note's page by its key (the data source's only POST)."""
        return self.notion.requests_to("POST", "/v1/data_sources/")

    def link_sent(self) -> bool:
        return any(text.startswith("Saved to Notion: ") for text in self.bot.texts())

    def send_without_time(self, text: str) -> asyncio.Task[None]:
        """Deliver a message, leaving the clock to the test: for cases that time out on purpose."""
        event = new_message_event(chat_id=USER, sender_id=USER, text=text, message_id=next(MESSAGE_IDS), mentioned=False)

        async def deliver_and_wait() -> None:
            await self.bot.client.deliver(event)
            await self.bot.app.services.lanes.wait_all_idle()

        return asyncio.ensure_future(deliver_and_wait())

    async def time_passes(self, seconds: float) -> None:
        """Let the worker and every timer run for `seconds` of the clock, real I/O included."""
        await self.clock.run_until_complete(self.clock.sleep(seconds))


async def start_knowledge_bot(
    stack: AsyncExitStack, state_dir: Path, *, knowledge_timeout: float = OUT_OF_REACH
) -> Knowledge:
    clock = ManualClock()
    search = await stack.enter_async_context(TimedPerplexity(clock))
    notion = await stack.enter_async_context(FakeNotion(token=NOTION_TOKEN, clock=clock))
    settings = settings_for(
        state_dir,
        perplexity=PerplexitySettings(Secret(PERPLEXITY_KEY), base_url=search.base_url),
        notion=NotionSettings(Secret(NOTION_TOKEN), notion.database_id.replace("-", ""), notion.base_url),
        limits=LimitSettings(knowledge_timeout=knowledge_timeout),
    )
    bot = await start_telegram_bot(stack, settings, clock)
    return Knowledge(bot, search, notion)


def retry_waits(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The waits the retry loop chose between attempts, as it logged them ("7.00")."""
    return [r.getMessage().rsplit("retrying in ", 1)[1].split()[0] for r in caplog.records if r.name == RETRY_LOG]


# --- /search through Perplexity -----------------------------------------------------------------


@dataclass(frozen=True)
class SearchCase:
    name: str
    script: tuple
    expected: str
    calls: int
    # A Retry-After the retry loop must wait exactly (never less, and not a backoff of its own).
    retry_after: float | None = None


SEARCH_CASES = [
    SearchCase("429 with Retry-After under the cap: waited out exactly, then answered with sources",
               (pplx.rate_limited(retry_after="7"),), ANSWERED, 2, retry_after=7.0),
    SearchCase("429 with Retry-After over the cap: no wait, the user is told the search is rate limited",
               (pplx.rate_limited(retry_after="600"),),
               "Perplexity is limiting how often I can search right now; please try again in 600 s.", 1),
    SearchCase("500 once: retried, answered", (pplx.server_error(500),), ANSWERED, 2),
    SearchCase("503 on every attempt: the user is told the search failed after 3 calls",
               (pplx.server_error(503),) * 3, SEARCH_FAILED, 3),
    SearchCase("529 overloaded once: retried, answered", (pplx.server_error(529),), ANSWERED, 2),
    SearchCase("connection reset before any answer: retried, answered", (RESET,), ANSWERED, 2),
    SearchCase("malformed event mid-stream: retried, answered", (pplx.malformed_after(2),), ANSWERED, 2),
    SearchCase("malformed final response: retried, answered", (pplx.malformed_final(),), ANSWERED, 2),
    SearchCase("stream cut mid-way: retried from scratch, the answer shown once", (pplx.cut_after(3),), ANSWERED, 2),
    SearchCase("error event inside the stream: retried, answered", (pplx.error_event_after(2),), ANSWERED, 2),
]


@pytest.mark.parametrize("case", SEARCH_CASES, ids=[c.name for c in SEARCH_CASES])
async def test_search_fault(tmp_path, caplog, case):
    caplog.set_level(logging.INFO, logger=RETRY_LOG)
    async with AsyncExitStack() as stack:
        k = await start_knowledge_bot(stack, tmp_path)
        k.search.script(*case.script)

        await k.bot.user_says(QUESTION)

        assert k.bot.texts() == [case.expected]
        assert k.search.calls == case.calls
        # Previews restart with the retry; none ever shows text twice.
        assert all(ANSWERED.startswith(draft.text) for draft in k.bot.client.drafts(USER))
        waits = retry_waits(caplog)
        assert len(waits) == case.calls - 1
        if case.retry_after is not None:
            assert waits == [f"{case.retry_after:.2f}"]
            assert k.search.arrived_at[1] - k.search.arrived_at[0] >= case.retry_after


@pytest.mark.parametrize(
    "timeout",
    [
        pytest.param(WITHIN_BUDGET, id="20 s timeout: a retry still fits the budget"),
        pytest.param(BEYOND_BUDGET, id="60 s timeout: the budget leaves room for one more attempt"),
    ],
)
async def test_search_stall_times_out_per_attempt_and_the_retry_answers(tmp_path, timeout):
    async with AsyncExitStack() as stack:
        k = await start_knowledge_bot(stack, tmp_path, knowledge_timeout=timeout)
        k.search.script(pplx.stall_after(1))

        searching = await stalled(k, QUESTION, k.search.server.stall_began, timeout)
        assert k.search.calls == 1
        await k.clock.advance(1)
        # The retry's backoff and the limiter's spacing only: its own timer stays out of reach.
        await k.clock.run_until_complete(searching, limit=timeout / 2)

        assert k.bot.texts() == [ANSWERED]
        assert k.search.calls == 2
        assert k.search.arrived_at[1] - k.search.arrived_at[0] >= timeout


# --- /note through Notion -----------------------------------------------------------------------


@dataclass(frozen=True)
class NoteCase:
    name: str
    script: tuple  # for the next page creations
    replies: tuple[str, ...]  # "{url}" stands for the page's link
    creates: int
    lookups: int
    # A Retry-After the note must not be retried before.
    retry_after: float | None = None


NOTE_CASES = [
    NoteCase("429 with Retry-After under the cap: waited out in the first pass, no queued notice",
             (rate_limited(retry_after=5),), (SAVED,), creates=2, lookups=0, retry_after=5.0),
    NoteCase("429 with Retry-After over the cap: queued at once, delivered by the worker after the wait",
             (rate_limited(retry_after=90),), (QUEUED_SLOW_DOWN, SAVED), creates=2, lookups=1, retry_after=90.0),
    NoteCase("500 once: looked for the page first, then created it",
             (unavailable(500),), (SAVED,), creates=2, lookups=1),
    NoteCase("503 once: looked for the page first, then created it",
             (unavailable(503),), (SAVED,), creates=2, lookups=1),
    NoteCase("503 on every attempt: queued, then delivered once Notion is up",
             (unavailable(503),) * 3, (QUEUED_UNREACHABLE, SAVED), creates=4, lookups=3),
    NoteCase("529 with Retry-After: waited out, created",
             (Refuse(529, "service_overload", "Overloaded.", retry_after=3),), (SAVED,), creates=2, lookups=0, retry_after=3.0),
    NoteCase("529 without Retry-After: retried as unavailable, created",
             (Refuse(529, "service_overload", "Overloaded."),), (SAVED,), creates=2, lookups=1),
    NoteCase("connection reset after the page was created: found by its key, not created again",
             (LOSE_RESPONSE,), (SAVED,), creates=1, lookups=1),
    NoteCase("malformed body after the page was created: found by its key, not created again",
             (MALFORMED_RESPONSE,), (SAVED,), creates=1, lookups=1),
]


@pytest.mark.parametrize("case", NOTE_CASES, ids=[c.name for c in NOTE_CASES])
async def test_note_fault(tmp_path, caplog, case):
    caplog.set_level(logging.INFO, logger=RETRY_LOG)
    async with AsyncExitStack() as stack:
        k = await start_knowledge_bot(stack, tmp_path)
        k.notion.script(*case.script, method="POST", path="/v1/pages")

        await k.bot.user_says(NOTE)
        await k.clock.run_until(k.link_sent)
        await k.time_passes(600)  # more passes of the delivery worker: nothing is sent or said twice

        [page] = k.notion.pages
        assert k.notion.title_of(page) == "Call the plumber #home"
        assert k.notion.page_lines(page) == ["About the kitchen tap"]
        assert k.bot.texts() == [reply.format(url=page.url) for reply in case.replies]
        assert (len(k.creates()), len(k.lookups())) == (case.creates, case.lookups)
        assert await k.bot.app.services.features.notes.outbox.depth() == 0
        if case.retry_after is not None:
            queued = len(case.replies) > 1  # past the cap: no wait in the first pass, the worker waits
            assert retry_waits(caplog) == ([] if queued else [f"{case.retry_after:.2f}"])
            refused = next(a for a in k.notion.arrivals if a.status in (429, 529))
            created = next(a for a in k.notion.arrivals if a.path == "/v1/pages" and a.status == 200)
            assert created.at - refused.at >= case.retry_after


@pytest.mark.parametrize(
    ("timeout", "replies"),
    [
        # The retry after the timeout looks for the page by its key before creating another.
        pytest.param(BEYOND_BUDGET, (SAVED,), id="60 s timeout: retried in the same pass"),
        pytest.param(WITHIN_BUDGET, (SAVED,), id="20 s timeout: retried in the same pass"),
    ],
)
async def test_note_stall_after_the_page_was_created_times_out_and_makes_no_second_page(tmp_path, timeout, replies):
    async with AsyncExitStack() as stack:
        k = await start_knowledge_bot(stack, tmp_path, knowledge_timeout=timeout)
        k.notion.script(STALL_RESPONSE, method="POST", path="/v1/pages")

        saving = await stalled(k, NOTE, k.notion.server.stall_began, timeout)
        assert k.bot.texts() == []
        await k.clock.advance(1)
        await k.clock.run_until_complete(saving, limit=timeout / 2)
        await k.clock.run_until(k.link_sent)
        await k.time_passes(600)

        assert len(k.notion.pages) == 1, "the page created before the stall was created again"
        [page] = k.notion.pages
        assert k.bot.texts() == [reply.format(url=page.url) for reply in replies]
        assert len(k.creates()) == 1


async def stalled(k: Knowledge, text: str, stall_began: asyncio.Event, timeout: float) -> asyncio.Task[None]:
    """Send `text`, wait (in real time) for the fake to stall, and run the clock to 1 s before the timeout."""
    await k.time_passes(5)  # every limiter has a token again, so nothing before the stall waits on the clock
    handling = k.send_without_time(text)
    await asyncio.wait_for(stall_began.wait(), timeout=10)
    await k.clock.advance(timeout - 1)
    assert not handling.done(), "still within the attempt's time"
    return handling


async def test_note_stall_on_an_append_that_landed_does_not_append_the_blocks_twice(tmp_path):
    long_note = "/note Long note\n" + "\n\n".join(f"Paragraph {i}." for i in range(150))
    async with AsyncExitStack() as stack:
        k = await start_knowledge_bot(stack, tmp_path, knowledge_timeout=20.0)
        k.notion.script(STALL_RESPONSE, method="PATCH", path="/v1/blocks")

        await k.time_passes(5)
        saving = k.send_without_time(long_note)
        # The create lands, then the append waits its turn at 3 a second and stalls.
        await k.clock.run_until(k.notion.server.stall_began.is_set, limit=5.0)
        await k.clock.advance(20.0)
        await k.clock.run_until_complete(saving, limit=10.0)
        await k.clock.run_until(k.link_sent)
        await k.time_passes(600)

        [page] = k.notion.pages
        paragraphs = [b for b in page.children if b.get("type") == "paragraph"]
        assert len(paragraphs) == 150, f"{len(paragraphs)} paragraphs: an append that landed was sent again"


async def test_a_refused_token_is_named_in_every_answer_even_once_the_breaker_is_open(tmp_path):
    async with AsyncExitStack() as stack:
        k = await start_knowledge_bot(stack, tmp_path)
        k.notion.token = "secret_revoked-in-notion"
        await k.time_passes(5)  # the look at the database after start-up is refused too: the breaker opens

        await k.bot.user_says(NOTE)
        await k.bot.user_says("/note Second thought")
        await k.bot.user_says("/notes")

        assert k.bot.texts() == [
            QUEUED_TOKEN_REFUSED,
            QUEUED_TOKEN_REFUSED,
            "I couldn't list your notes: Notion refused the bot's token, so the operator needs to check NOTION_TOKEN.",
        ]
        k.notion.token = NOTION_TOKEN  # the operator fixes it
        await k.clock.run_until(lambda: len(k.notion.pages) == 2, limit=2000)
        await k.time_passes(5)
        assert sorted(k.notion.title_of(p) for p in k.notion.pages) == ["Call the plumber #home", "Second thought"]
        assert sum(text.startswith("Saved to Notion: ") for text in k.bot.texts()) == 2
