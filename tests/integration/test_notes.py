"""/note, /save and /notes, through the real notion-client SDK against a strict fake Notion.

Time is a ManualClock shared by the bot, its policies and the fake's rate limit.
"""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from bot.app import build_notes
from bot.config import NotionSettings, Secret
from handlers.basic import basic_commands
from handlers.notes import NotesFeature, chat_notifier, notes_commands, numbered_sources
from handlers.router import Router
from handlers.services import Features
from integrations.clock import ManualClock
from integrations.errors import AuthFailed, BadRequest, RateLimited, Unavailable
from integrations.notion import NotionApi
from integrations.notion_blocks import markdown_to_blocks, request_batches
from integrations.notion_schema import hashtags
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.compose import Upstream
from integrations.resilience.ratelimit import RateLimiter
from integrations.resilience.retry import RetryPolicy
from tests.fakes.notion_server import LOSE_RESPONSE, FakeNotion, Refuse, rate_limited, unavailable
from tests.harness import USER, Bot, start_bot

TOKEN = "secret_notion-sentinel-token-000000000000000000"
GROUP = -1001234567890


@dataclass
class NotesBot:
    bot: Bot
    notes: NotesFeature
    limiter: RateLimiter

    async def say(self, text: str, **kwargs) -> None:
        await self.bot.say(text, **kwargs)

    def replies(self, chat_id: int = USER) -> list[str]:
        return self.bot.replies(chat_id)

    async def deliver_due(self) -> int:
        return await self.bot.clock.run_until_complete(self.notes.delivery.deliver_due())


async def start_notes_bot(
    stack: AsyncExitStack, state_dir: Path, clock: ManualClock, fake: FakeNotion, *, rate: float = 3, burst: int = 1
) -> NotesBot:
    bot = await start_bot(stack, state_dir, [], clock=clock, allowed=frozenset({USER}))
    limiter = RateLimiter("notion requests", rate, 1.0, clock, burst=burst)
    upstream = Upstream(
        "notion",
        clock,
        breaker=CircuitBreaker("notion", clock, failure_threshold=5, window=60, cooldown=30),
        limiter=limiter,
        retry=RetryPolicy(max_attempts=3, max_total=30, retry_after_cap=20),
    )
    settings = NotionSettings(Secret(TOKEN), fake.database_id.replace("-", ""), fake.base_url)
    notes = build_notes(
        settings,
        upstream,
        schema_ttl=3600,
        clock=clock,
        database=bot.database,
        notify=chat_notifier(bot.services),
        stack=stack,
    )
    bot.services = replace(bot.services, features=Features(notes=notes))
    bot.router = Router(bot.services, [*basic_commands(), *notes_commands()])
    return NotesBot(bot, notes, limiter)


async def fake_notion(stack: AsyncExitStack, clock: ManualClock, **kwargs) -> FakeNotion:
    return await stack.enter_async_context(FakeNotion(token=TOKEN, clock=clock, **kwargs))


async def test_note_creates_a_page_with_title_tags_source_and_key_and_replies_with_its_link(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)

        await notes.say("/note Buy oat milk #errands\nAlso *bread* for #Errands and #home", chat_id=GROUP, private=False, message_id=77)

        [page] = fake.pages
        assert fake.title_of(page) == "Buy oat milk #errands"
        assert [o["name"] for o in page.properties["Tags"]["multi_select"]] == ["errands", "home"]
        assert page.properties["Source"]["url"] == "https://t.me/c/1234567890/77"
        assert page.properties["Switchboard ID"]["rich_text"][0]["plain_text"].startswith(f"{GROUP}:77:")
        assert fake.page_lines(page) == ["Also bread for #Errands and #home"]
        [create] = fake.requests_to("POST", "/v1/pages")
        assert create.json["parent"] == {"type": "data_source_id", "data_source_id": fake.data_source_id}
        assert notes.replies(GROUP) == [f"Saved to Notion: {page.url}"]
        assert await notes.notes.depth() == 0


async def test_long_note_is_split_across_valid_requests_and_the_page_holds_all_of_it(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        paragraphs = [f"Paragraph {n} " + "lorem ipsum " * 20 for n in range(230)]
        essay = "x" * 4500  # one paragraph over 2000 characters: several rich text items
        code = "\n".join(f"print({n})" for n in range(400))  # a code block over 2000 characters
        text = "Long read\n" + "\n\n".join([*paragraphs, essay, f"```python\n{code}\n```", "- a\n  - b\n    - c"])

        await notes.say("/note " + text)

        [page] = fake.pages
        assert fake.refusals == []
        [create] = fake.requests_to("POST", "/v1/pages")
        appends = fake.requests_to("PATCH", "/v1/blocks/")
        assert len(create.json["children"]) == 100
        assert [len(r.json["children"]) for r in appends] == [100, 33]
        lines = fake.page_lines(page)
        assert lines[:230] == [p.strip() for p in paragraphs]
        assert lines[230] == essay and lines[231] == code and lines[232:] == ["a", "b", "c"]
        essay_block = page.children[230]["paragraph"]["rich_text"]
        assert [len(item["text"]["content"]) for item in essay_block] == [2000, 2000, 500]
        assert notes.replies() == [f"Saved to Notion: {page.url}"]


async def note_queued_while_notion_is_down(stack: AsyncExitStack, tmp_path) -> tuple[NotesBot, FakeNotion, ManualClock, str]:
    """A note sent while Notion answers 503: queued, and the user told so."""
    clock = ManualClock()
    fake = await fake_notion(stack, clock)
    notes = await start_notes_bot(stack, tmp_path, clock, fake)
    fake.down = unavailable(503)
    await notes.say("/note Call the plumber")
    assert fake.pages == []
    [queued] = notes.replies()
    assert "queued" in queued
    return notes, fake, clock, queued


async def test_notion_down_then_back_queues_the_note_and_tells_the_user_once_when_saved(tmp_path):
    async with AsyncExitStack() as stack:
        notes, fake, clock, queued = await note_queued_while_notion_is_down(stack, tmp_path)
        assert await notes.notes.depth() == 1

        await clock.advance(5)
        assert await notes.deliver_due() == 0  # not due yet: backing off
        fake.down = None
        await clock.advance(60)
        assert await notes.deliver_due() == 1
        assert await notes.deliver_due() == 0

        [page] = fake.pages
        assert notes.replies() == [queued, f"Saved to Notion: {page.url}"]
        assert await notes.notes.depth() == 0


async def test_lost_create_response_does_not_make_a_duplicate_page(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        fake.script(LOSE_RESPONSE, method="POST", path="/v1/pages")

        await notes.say("/note Only once please\n- one\n- two")

        assert len(fake.requests_to("POST", "/v1/pages")) == 1
        [page] = fake.pages
        assert fake.page_lines(page) == ["one", "two"]
        assert notes.replies() == [f"Saved to Notion: {page.url}"]


async def test_lost_create_response_followed_by_an_outage_is_delivered_later_without_a_duplicate(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        await notes.say("/notes")  # the schema is cached; the next requests are the note's own
        fake.script(LOSE_RESPONSE, method="POST", path="/v1/pages")
        fake.script(unavailable(503), unavailable(503))

        await notes.say("/note Written while Notion wobbles")
        assert "queued" in notes.replies()[-1]
        assert len(fake.pages) == 1  # the page exists; we never heard so

        await clock.advance(60)
        assert await notes.deliver_due() == 1
        [page] = fake.pages
        assert len(fake.requests_to("POST", "/v1/pages")) == 1
        assert notes.replies()[-1] == f"Saved to Notion: {page.url}"


async def test_lost_append_response_does_not_duplicate_blocks(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        fake.script(LOSE_RESPONSE, method="PATCH", path="/v1/blocks/")

        await notes.say("/note Many lines\n" + "\n\n".join(f"line {n}" for n in range(150)))

        [page] = fake.pages
        assert fake.page_lines(page) == [f"line {n}" for n in range(150)]
        assert len(fake.requests_to("PATCH", "/v1/blocks/")) == 1
        assert notes.replies() == [f"Saved to Notion: {page.url}"]


async def test_queued_notes_survive_a_restart_and_are_delivered_once(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        fake.down = unavailable(500)
        async with AsyncExitStack() as first_run:
            before = await start_notes_bot(first_run, tmp_path, clock, fake)
            await before.say("/note First idea")
            await before.say("/note Second idea")
            assert all("queued" in text for text in before.replies())
        fake.down = None

        async with AsyncExitStack() as second_run:
            after = await start_notes_bot(second_run, tmp_path, clock, fake)
            assert await after.notes.depth() == 2
            worker = after.notes.delivery
            running = asyncio.ensure_future(worker.run())
            await clock.run_until(lambda: len(after.replies()) == 2)
            await clock.advance(600)  # more passes of the worker: nothing is delivered or said twice
            await worker.stop()
            await running
            assert await after.notes.depth() == 0

        assert sorted(fake.title_of(p) for p in fake.pages) == ["First idea", "Second idea"]
        assert sorted(after.replies()) == sorted(f"Saved to Notion: {p.url}" for p in fake.pages)


async def test_retry_after_from_notion_is_honoured(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        fake.script(rate_limited(retry_after=5), method="POST", path="/v1/pages")

        await notes.say("/note Patience")

        refused = next(i for i, a in enumerate(fake.arrivals) if a.status == 429)
        following = fake.arrivals[refused + 1]
        assert following.at - fake.arrivals[refused].at >= 5
        [page] = fake.pages
        assert notes.replies() == [f"Saved to Notion: {page.url}"]


async def test_bursts_over_three_requests_a_second_are_refused_and_the_bot_waits_as_told(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock, rate_limit_retry_after=2)
        # A limiter that allows bursts, as a misconfigured bot might: Notion's own limit still holds.
        notes = await start_notes_bot(stack, tmp_path, clock, fake, rate=10, burst=10)

        await notes.say("/note Burst\n" + "\n\n".join(f"p{n}" for n in range(700)))

        refused = [i for i, a in enumerate(fake.arrivals) if a.status == 429]
        assert refused, "the fake should have refused the burst"
        for index in refused:
            waited = fake.arrivals[index + 1].at - fake.arrivals[index].at
            assert waited >= 2, f"a request came {waited:.2f} s after a 429 asking for 2 s"
        [page] = fake.pages
        assert len(fake.page_lines(page)) == 700
        assert notes.replies() == [f"Saved to Notion: {page.url}"]


ORDINARY = {"Name": "title", "Tags": "multi_select"}  # a database as the Notion app makes it, plus tags


async def test_the_first_note_in_an_ordinary_database_adds_the_key_property_and_is_saved_once(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock, properties=dict(ORDINARY))
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        fake.script(LOSE_RESPONSE, method="POST", path="/v1/pages")  # and the first create's answer is lost

        await notes.say("/note First contact #hello")

        [patch] = fake.requests_to("PATCH", "/v1/data_sources/")
        assert patch.json == {"properties": {"Switchboard ID": {"rich_text": {}}}}
        assert fake.properties["Switchboard ID"]["type"] == "rich_text"
        [page] = fake.pages  # found by its key after the lost answer, not created twice
        assert page.properties["Switchboard ID"]["rich_text"][0]["plain_text"].startswith(f"{USER}:")
        assert notes.replies() == [f"Saved to Notion: {page.url}"]
        health = await clock.run_until_complete(notes.notes.check())
        assert health.ok, health.detail
        assert len(fake.requests_to("PATCH", "/v1/data_sources/")) == 1  # added once, not at every look


async def test_without_the_update_content_capability_notes_are_still_saved_and_the_fix_is_named(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock, properties=dict(ORDINARY), update_content=False)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)

        await notes.say("/notes")
        [empty] = notes.replies()
        assert empty.startswith("There are no notes in the Notion database yet.")
        assert "may be saved twice" in empty and '"Update content"' in empty and "Switchboard ID" in empty
        await notes.say("/note Saved anyway")

        assert (403, "restricted_resource", "Insufficient permissions for this endpoint.") in fake.refusals
        [page] = fake.pages
        assert fake.title_of(page) == "Saved anyway" and "Switchboard ID" not in page.properties
        assert notes.replies()[-1] == f"Saved to Notion: {page.url}"
        health = await clock.run_until_complete(notes.notes.check())
        assert not health.ok
        assert "may be saved twice" in health.detail and "my-integrations" in health.detail

        fake.update_content = True  # the owner ticks the capability; the next look adds the property
        health = await clock.run_until_complete(notes.notes.check())
        assert health.ok, health.detail
        await notes.say("/note Now with a key")
        assert fake.title_of(fake.pages[-1]) == "Now with a key"
        assert fake.pages[-1].properties["Switchboard ID"]["rich_text"]


async def test_a_switchboard_id_property_of_another_type_is_left_alone_and_notes_are_saved(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock, properties={"Name": "title", "Switchboard ID": "number"})
        notes = await start_notes_bot(stack, tmp_path, clock, fake)

        await notes.say("/note Still saved")

        assert fake.requests_to("PATCH", "/v1/data_sources/") == []
        assert fake.properties["Switchboard ID"]["type"] == "number"
        [page] = fake.pages
        assert notes.replies() == [f"Saved to Notion: {page.url}"]
        health = await clock.run_until_complete(notes.notes.check())
        assert not health.ok and "of type Number, not Text" in health.detail and "Type → Text" in health.detail


async def test_a_delivery_cut_short_after_an_append_landed_resumes_without_duplicating_blocks(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        text = "Resumable\n" + "\n\n".join(f"line {n}" for n in range(250))
        fake.script(unavailable(503), unavailable(503), unavailable(503), method="PATCH")
        async with AsyncExitStack() as first_run:
            before = await start_notes_bot(first_run, tmp_path, clock, fake)
            await before.say("/note " + text)
            assert "queued" in before.replies()[-1]
            [page] = fake.pages
            assert len(page.children) == 100
            # The next append reached Notion, then the bot died before recording it.
            second_batch = request_batches(markdown_to_blocks(text.partition("\n")[2]))[1]
            api = NotionApi(token=TOKEN, base_url=fake.base_url)
            await clock.advance(1)  # clear of Notion's rate window
            await api.append_children(page.id, second_batch)
            await api.aclose()

        async with AsyncExitStack() as second_run:
            after = await start_notes_bot(second_run, tmp_path, clock, fake)
            await clock.advance(60)
            assert await after.deliver_due() == 1

        assert fake.page_lines(page) == [f"line {n}" for n in range(250)]
        assert after.replies() == [f"Saved to Notion: {page.url}"]


async def test_a_validation_error_marks_the_note_failed_and_says_why(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        fake.script(Refuse(400, "validation_error", "body failed validation: body.properties.Name is wrong."), method="POST", path="/v1/pages")

        await notes.say("/note Doomed")

        [answer] = notes.replies()
        assert answer.startswith("Couldn't save your note “Doomed” to Notion") and "validation_error" in answer
        assert await notes.notes.depth() == 0
        await clock.advance(3600)
        assert await notes.deliver_due() == 0
        assert len(notes.replies()) == 1


async def test_notes_lists_the_newest_first_across_pages_of_results(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock, requests_per_second=None)
        for n in range(150):
            fake.add_page(f"Note {n}")
        notes = await start_notes_bot(stack, tmp_path, clock, fake)

        await notes.say("/notes 120")

        listing = "\n".join(notes.replies()).splitlines()
        items = [line for line in listing if line[:1].isdigit()]
        assert len(items) == 120
        assert items[0] == f"1. Note 149 — {fake.pages[149].url}"
        assert items[-1] == f"120. Note 30 — {fake.pages[30].url}"
        queries = [r.json for r in fake.requests_to("POST", "/v1/data_sources/")]
        assert [q.get("start_cursor") for q in queries] == [None, fake.pages[49].id]
        assert all(q["page_size"] <= 100 and q["sorts"] == [{"timestamp": "created_time", "direction": "descending"}] for q in queries)

        await notes.say("/notes")
        latest = [line for line in notes.replies()[-1].splitlines() if line[:1].isdigit()]
        assert [line.split(" — ")[0] for line in latest] == [f"{i}. Note {149 - i + 1}" for i in range(1, 11)]


async def test_save_stores_the_last_answer_with_its_sources(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        answer = (
            "Oat milk is made from oats and water [1][2].\n\n"
            "It foams well for coffee.\n\n"
            "Sources:\n1. [How oat milk is made](https://example.com/oat)\n2. [Barista tips](https://coffee.example.org/foam)"
        )
        await notes.bot.services.history.record_exchange(USER, USER, "what is oat milk?", answer, "perplexity:sonar")

        await notes.say("/save #food")

        [page] = fake.pages
        assert fake.title_of(page) == "Oat milk is made from oats and water."  # no citation markers
        assert page.properties["Source"]["url"] == "https://example.com/oat"
        assert [o["name"] for o in page.properties["Tags"]["multi_select"]] == ["food"]
        links = [
            item["text"]["link"]["url"]
            for block in page.children
            for item in block[block["type"]].get("rich_text", [])
            if item["text"].get("link")
        ]
        assert links == ["https://example.com/oat", "https://coffee.example.org/foam"]
        assert "It foams well for coffee." in fake.page_lines(page)
        assert notes.replies() == [f"Saved to Notion: {page.url}"]


async def test_save_with_no_answer_yet_says_so(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        await notes.say("/save")
        assert fake.pages == [] and "no answer to save" in notes.replies()[0]


async def test_empty_note_shows_usage_and_saves_nothing(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        await notes.say("/note   ")
        assert notes.replies()[0].startswith("Usage: /note <text>")
        assert fake.server.requests == [] and await notes.notes.depth() == 0


async def test_without_notion_settings_the_commands_explain_the_setup(tmp_path):
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [])
        bot.router = Router(bot.services, notes_commands())
        for command in ("/note hello", "/save", "/notes"):
            await bot.say(command)
        assert len(bot.replies()) == 3
        assert all("NOTION_TOKEN" in text and "NOTION_DATABASE_ID" in text for text in bot.replies())


async def test_the_same_telegram_message_delivered_twice_saves_one_note(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        await notes.say("/note Once", message_id=500)
        await notes.say("/note Once", message_id=500)  # Telegram redelivers the update
        [page] = fake.pages
        assert notes.replies() == [f"Saved to Notion: {page.url}"]


async def test_a_revoked_token_keeps_notes_queued_until_it_works_again(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        fake.token = "secret_rotated-in-notion"

        await notes.say("/note Keep me")
        assert "NOTION_TOKEN" in notes.replies()[0] and "queued" in notes.replies()[0]

        fake.token = TOKEN  # the operator shares the integration again
        await clock.advance(120)
        assert await notes.deliver_due() == 0  # refused tokens are retried rarely, not in a loop
        await clock.advance(900)
        assert await notes.deliver_due() == 1
        [page] = fake.pages
        assert notes.replies()[-1] == f"Saved to Notion: {page.url}"


async def test_a_note_notion_cannot_take_for_a_day_is_given_up_and_the_user_told(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        fake.down = unavailable(503)
        await notes.say("/note Lost cause")
        await clock.advance(86_400)
        await notes.deliver_due()
        assert "gave up" in notes.replies()[-1] and "Lost cause" in notes.replies()[-1]
        assert await notes.notes.depth() == 0
        fake.down = None
        await clock.advance(3600)
        assert await notes.deliver_due() == 0 and fake.pages == []


async def test_a_note_opening_with_a_list_keeps_the_whole_list_on_the_page(tmp_path):
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        fake = await fake_notion(stack, clock)
        notes = await start_notes_bot(stack, tmp_path, clock, fake)
        await notes.say("/note - **eggs**\n- [flour](https://example.com/flour)\n- sugar")
        [page] = fake.pages
        assert fake.title_of(page) == "eggs"
        assert fake.page_lines(page) == ["eggs", "flour", "sugar"]


@pytest.mark.parametrize(
    "text, tags",
    [
        ("#idea about #Work and #work", ("idea", "Work")),
        ("C# and https://x.org/#frag and &#35; are not tags", ()),
        ("# Heading is not a tag, #this-one is", ("this-one",)),
    ],
)
def test_hashtags_become_tags(text, tags):
    assert hashtags(text) == tags


def test_numbered_sources_prefer_the_sources_section():
    answer = "Steps:\n1. Go to https://not-a-source.example\n\n**Sources**\n[1] Title — https://a.example/x.\n2. [B](https://b.example/y)"
    assert numbered_sources(answer) == ["https://a.example/x", "https://b.example/y"]


# --- The adapter's error translation, against the same fake ---------------------------------------


@pytest.mark.parametrize(
    "refusal, expected, detail",
    [
        (Refuse(529, "service_overload", "Overloaded.", retry_after=7), RateLimited, 7.0),
        (rate_limited(retry_after=3), RateLimited, 3.0),
        (unavailable(503), Unavailable, None),
        (unavailable(500), Unavailable, None),
        (Refuse(409, "conflict_error", "Conflict."), Unavailable, None),
        (Refuse(400, "validation_error", "body failed validation."), BadRequest, None),
        (Refuse(403, "restricted_resource", "No access."), BadRequest, None),
        (LOSE_RESPONSE, Unavailable, None),
    ],
)
async def test_adapter_translates_notion_failures_into_project_errors(refusal, expected, detail):
    clock = ManualClock()
    async with FakeNotion(token=TOKEN, clock=clock, requests_per_second=None) as fake:
        api = NotionApi(token=TOKEN, base_url=fake.base_url)
        try:
            fake.script(refusal)
            with pytest.raises(expected) as caught:
                await api.retrieve_database(fake.database_id)
            assert caught.value.retry_after == detail
            assert TOKEN not in str(caught.value)
            assert (await api.retrieve_database(fake.database_id))["id"] == fake.database_id
        finally:
            await api.aclose()


async def test_adapter_explains_a_wrong_token_and_an_unshared_database_without_leaking_the_token():
    clock = ManualClock()
    async with FakeNotion(token=TOKEN, clock=clock, requests_per_second=None) as fake:
        wrong = NotionApi(token="secret_wrong-token-1234567890", base_url=fake.base_url)
        right = NotionApi(token=TOKEN, base_url=fake.base_url)
        try:
            with pytest.raises(AuthFailed) as refused:
                await wrong.retrieve_database(fake.database_id)
            assert "NOTION_TOKEN" in str(refused.value) and "secret_wrong" not in str(refused.value)
            with pytest.raises(BadRequest) as missing:
                await right.retrieve_database("0" * 32)
            assert "Connections" in str(missing.value) and "NOTION_DATABASE_ID" in str(missing.value)
            assert TOKEN not in repr(right)
        finally:
            await wrong.aclose()
            await right.aclose()


async def test_the_fake_refuses_requests_without_a_notion_version():
    clock = ManualClock()
    async with FakeNotion(token=TOKEN, clock=clock) as fake:
        async with httpx.AsyncClient(base_url=fake.base_url) as client:
            answer = await client.get(f"/v1/databases/{fake.database_id}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 400
        body = answer.json()
        assert body["object"] == "error" and body["code"] == "missing_version" and body["request_id"]


async def test_the_fake_updates_a_data_source_schema_as_notion_does():
    clock = ManualClock()
    async with FakeNotion(token=TOKEN, clock=clock, properties={"Name": "title"}, requests_per_second=None) as fake:
        api = NotionApi(token=TOKEN, base_url=fake.base_url)
        try:
            added = await api.update_data_source(fake.data_source_id, properties={"Key": {"rich_text": {}}})
            assert added["object"] == "data_source" and added["properties"]["Key"]["type"] == "rich_text"
            again = await api.update_data_source(fake.data_source_id, properties={"Key": {"rich_text": {}}})
            assert again["properties"] == added["properties"]  # adding what is there changes nothing
            renamed = await api.update_data_source(fake.data_source_id, properties={"Key": {"name": "Id"}})
            assert set(renamed["properties"]) == {"Name", "Id"}
            with pytest.raises(BadRequest, match="title"):
                await api.update_data_source(fake.data_source_id, properties={"Name": None})
            fake.update_content = False
            with pytest.raises(BadRequest) as refused:
                await api.update_data_source(fake.data_source_id, properties={"Other": {"url": {}}})
            assert refused.value.status == 403 and set(fake.properties) == {"Name", "Id"}
        finally:
            await api.aclose()


async def test_a_link_that_could_not_be_sent_is_sent_at_the_next_round(tmp_path):
    async with AsyncExitStack() as stack:
        notes, fake, clock, queued = await note_queued_while_notion_is_down(stack, tmp_path)
        fake.down = None
        await clock.advance(60)
        # Telegram refuses the notice this time, through all its retries (the user hears nothing yet)...
        for _ in range(notes.bot.services.pacing.final_attempts):
            notes.bot.transport.fail_next("send", Unavailable("telegram is down", upstream="telegram"))
        assert await notes.deliver_due() == 1
        assert notes.replies() == [queued]
        # ...and the next round tells them, once.
        await notes.deliver_due()
        await notes.deliver_due()
        [page] = fake.pages
        assert notes.replies() == [queued, f"Saved to Notion: {page.url}"]


async def test_a_link_sent_just_before_a_crash_is_not_sent_again(tmp_path):
    async with AsyncExitStack() as stack:
        notes, fake, clock, queued = await note_queued_while_notion_is_down(stack, tmp_path)
        fake.down = None
        await clock.advance(60)
        outbox = notes.notes.outbox
        mark_told = outbox.mark_told

        async def lost_in_the_crash(entry_id: int) -> None:
            """The process died after the link went out, before the note was marked told."""

        outbox.mark_told = lost_in_the_crash  # type: ignore[method-assign]
        assert await notes.deliver_due() == 1
        outbox.mark_told = mark_told  # type: ignore[method-assign]
        await notes.deliver_due()  # the next round (or the next start) tells it again...
        await notes.deliver_due()

        [page] = fake.pages
        assert notes.replies() == [queued, f"Saved to Notion: {page.url}"]  # ...and the chat shows it once
        assert await outbox.untold() == []
