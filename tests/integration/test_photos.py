"""Photos, albums and image files, from the user's side: through the real handlers, the real
anthropic and openai SDKs against fakes that check image blocks as the APIs do, and a fake
Telegram that delivers Telethon's own photo and document media; and every way it can go wrong
(no model can see, too many or too large, a download that fails, a restart mid-album or mid-answer)."""
import asyncio
from contextlib import AsyncExitStack
from dataclasses import replace

from telethon import errors

from bot.config import PhotoSettings
from handlers import photos
from integrations.llm import ModelRef
from tests.fakes import anthropic_server as anth
from tests.fakes import openai_server as oai
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram import image_bytes, image_document, new_message_event, photo
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, OPENAI_KEY, USER, kill, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
BLIND = "openai:gpt-test"
VISION_GPT = "openai:gpt-5.1"
POLL = 0.05


def sent(media, *, text: str = "", album: int | None = None, message_id: int | None = None, reply_to: int | None = None):
    """A photo (or other media) as the user sends it; an album's photos share `album`."""
    return new_message_event(
        chat_id=USER, sender_id=USER, text=text, message_id=message_id or next(MESSAGE_IDS), media=media, grouped_id=album,
        reply_to=reply_to,
    )


async def claude_upstream(stack: AsyncExitStack, text: str = "A cat on a mat.") -> FakeAnthropic:
    return await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply(text)))


async def send(bot, *events) -> None:
    """Each event delivered as its own update (an album's photos arrive one by one, within
    moments, as Telegram sends them: the clock stands still meanwhile), then everything the bot
    started, album waits included, finished."""
    for event in events:
        await bot.client.deliver(event)
    await bot.settle()


def user_content(request) -> list:
    """The last user message's content blocks of a recorded Anthropic request."""
    return request.json["messages"][-1]["content"]


async def test_a_photo_with_a_caption_is_answered_with_the_caption_as_the_question(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await send(bot, sent(photo(800, 600), text="What animal is this?"))

        assert bot.texts() == ["A cat on a mat."]
        image, question = user_content(claude.message_requests[0])
        assert image["type"] == "image" and image["source"]["media_type"] == "image/jpeg"
        assert question == {"type": "text", "text": "[photo]\nWhat animal is this?"}
        # Usage counts the image as the API does: 800 x 600 / 750 = 640 tokens, plus the text's 12.
        [(width, height)] = [(i.width, i.height) for i in claude.images]
        assert (width, height) == (800, 600)
        lines = await bot.app.services.features.usage.lines(days=1, user_id=USER)
        assert [line.input_tokens for line in lines] == [640 + 12]
        # A follow-up carries the placeholder, not the image again.
        await bot.user_says("And its colour?")
        assert claude.message_requests[1].json["messages"][0] == {"role": "user", "content": "[photo]\nWhat animal is this?"}
        assert await bot.statuses() == ["answered", "answered"]


async def test_a_photo_without_a_caption_gets_a_default_question(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await send(bot, sent(photo()))
        assert bot.texts() == ["A cat on a mat."]
        assert user_content(claude.message_requests[0])[-1]["text"] == f"[photo]\n{photos.DEFAULT_QUESTION}"


async def test_an_album_is_answered_once_with_all_its_photos(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack, "Three views of one cat.")
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        album = 5_550_001
        parts = [sent(photo(640, 480), album=album, text="Which is the best shot?"), sent(photo(480, 640), album=album), sent(photo(500, 500), album=album)]
        await send(bot, *parts)

        assert bot.texts() == ["Three views of one cat."]
        assert claude.calls == 1
        blocks = user_content(claude.message_requests[0])
        assert [b["type"] for b in blocks] == ["image", "image", "image", "text"]
        assert blocks[-1]["text"] == "[3 photos]\nWhich is the best shot?"
        assert [(i.width, i.height) for i in claude.images] == [(640, 480), (480, 640), (500, 500)]
        assert await bot.statuses() == ["answered", "answered", "answered"]


async def test_an_image_sent_as_a_file_is_looked_at_too(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack, "A scanned page.")
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await send(bot, sent(image_document(1000, 700, name="scan.png"), text="Read it"))
        assert bot.texts() == ["A scanned page."]
        image, text = user_content(claude.message_requests[0])
        assert image["source"]["media_type"] == "image/png" and text["text"] == "[image]\nRead it"


async def test_an_over_size_image_is_downscaled_to_each_providers_limit(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Fail(529, "overloaded_error", "Overloaded")))
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, models=["gpt-5.1"], default=oai.Reply("Wide.")))
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, VISION_GPT])
        bot = await start_telegram_bot(stack, settings)
        await send(bot, sent(image_document(4000, 3000, name="big.png"), text="What is it?"))

        assert bot.texts()[0].startswith("Wide.")
        # Anthropic got it at 1568 px on the long edge, OpenAI at 768 px on the short one.
        [image] = gpt.images
        assert (image.width, image.height) == (1024, 768)
        request = claude.message_requests[0]
        assert user_content(request)[0]["source"]["media_type"] == "image/png"
        from tests.fakes.vision import decode
        seen = decode(user_content(request)[0]["source"]["data"], "image/png")
        assert (seen.width, seen.height) == (1568, 1176)


async def test_a_model_that_cannot_see_is_skipped_and_the_footer_says_so(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("Text only.")))
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[BLIND, CLAUDE])
        bot = await start_telegram_bot(stack, settings)
        await send(bot, sent(photo(), text="What is it?"))
        [answer] = bot.texts()
        assert answer.startswith("A cat on a mat.")
        assert answer.endswith(f"— answered by {CLAUDE} ({BLIND} can't see images)")
        assert gpt.calls == 0  # never asked: it would refuse the image
        # Text questions still go to the first model.
        await bot.user_says("Hello")
        assert bot.texts()[-1] == "Text only."


async def test_the_fake_openai_refuses_an_image_for_a_model_that_cannot_see_like_the_api(tmp_path):
    """What the chain avoids: LLM_VISION_MODELS wrongly naming a blind model gets the API's 400."""
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("Text only.")))
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[BLIND, CLAUDE])
        settings = replace(settings, photos=PhotoSettings(vision_models=frozenset({ModelRef.parse(BLIND), ModelRef.parse(CLAUDE)})))
        bot = await start_telegram_bot(stack, settings)
        await send(bot, sent(photo(), text="What is it?"))
        assert gpt.calls == 1 and claude.calls == 1
        assert bot.texts()[0].startswith("A cat on a mat.")


async def test_with_no_model_that_can_see_the_user_gets_a_clear_reply(tmp_path):
    async with AsyncExitStack() as stack:
        gpt = await stack.enter_async_context(FakeOpenAI(api_key=OPENAI_KEY, default=oai.Reply("Text only.")))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, openai=gpt, models=[BLIND]))
        await send(bot, sent(photo(), text="What is it?"))
        assert bot.texts() == [photos.NO_VISION.format(what="photo", offline="")]
        assert gpt.calls == 0 and bot.client.downloads(USER) == 0


async def test_an_album_over_the_count_limit_gets_one_clear_reply(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        settings = replace(settings_for(tmp_path, anthropic=claude, models=[CLAUDE]), photos=PhotoSettings(max_images=2))
        bot = await start_telegram_bot(stack, settings)
        album = 5_550_002
        await send(bot, *[sent(photo(), album=album) for _ in range(3)])
        assert bot.texts() == [photos.TOO_MANY.format(count=3, limit=2)]
        assert claude.calls == 0 and bot.client.downloads(USER) == 0
        assert await bot.statuses() == ["failed", "failed", "failed"]


async def test_an_image_larger_than_the_limit_is_refused_before_download(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        settings = replace(settings_for(tmp_path, anthropic=claude, models=[CLAUDE]), photos=PhotoSettings(max_bytes=2**20))
        bot = await start_telegram_bot(stack, settings)
        await send(bot, sent(image_document(size=3 * 2**20)))
        assert bot.texts() == [photos.TOO_LARGE.format(what="image", size="3.0 MB", limit="1.0 MB")]
        assert claude.calls == 0 and bot.client.downloads(USER) == 0


async def test_a_file_that_is_no_image_gets_a_clear_reply(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await send(bot, sent(image_document(data=b"not a png at all", name="x.png")))
        assert bot.texts() == [photos.UNREADABLE.format(what="image")]
        assert claude.calls == 0 and await bot.statuses() == ["failed"]


async def test_a_failed_download_is_told_once_and_tried_again_nothing_lost(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        # Telegram's file servers fail every retry of the first attempt.
        bot.client.fail_next("download", errors.ServerError(request=None, message="RPC_CALL_FAIL", code=500), times=10)
        await send(bot, sent(photo(), text="What is it?"))
        assert bot.texts() == [photos.NOT_NOW.format(what="photo")]
        assert claude.calls == 0 and await bot.statuses() == ["answering"]

        bot.client._faults["download"].clear()  # Telegram is back
        safety_net = asyncio.ensure_future(bot.app.router.keep_resuming(every=300, older_than=120))
        await bot.clock.run_until(lambda: len(bot.texts()) == 2, poll=POLL)
        await bot.settle()
        safety_net.cancel()
        assert bot.texts()[1] == "A cat on a mat."
        assert await bot.statuses() == ["answered"]


async def test_a_restart_mid_album_loses_no_photo_and_answers_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack, "Two cats.")
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        album = 5_550_003
        first, second = sent(photo(640, 480), album=album, text="Compare"), sent(photo(320, 240), album=album)
        async with AsyncExitStack() as crashed_run:
            bot = await start_telegram_bot(crashed_run, settings)
            await bot.client.deliver(first)
            # Killed while waiting for the rest of the album.
        client, clock = bot.client, bot.clock
        bot = await start_telegram_bot(stack, settings, clock=clock, client=client, offline_updates=[second])
        await bot.settle()
        assert bot.texts() == ["Two cats."]
        assert claude.calls == 1 and [(i.width, i.height) for i in claude.images] == [(640, 480), (320, 240)]
        await send(bot, first, second)  # Telegram hands them out again
        assert claude.calls == 1 and await bot.statuses() == ["answered", "answered"]


async def test_a_restart_mid_answer_fetches_the_photo_again_and_answers_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        claude.script(anth.stall_after(1, "A cat on a mat, sitting."))
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        crashed_run = AsyncExitStack()
        bot = await start_telegram_bot(crashed_run, settings)
        await bot.client.deliver(sent(photo(), text="What is it?"))
        await bot.clock.run_until(lambda: claude.calls == 1 and bool(bot.client.drafts(USER)), poll=POLL)
        client, clock = bot.client, bot.clock
        await kill(bot, crashed_run)  # killed mid-answer

        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        assert bot.texts() == ["A cat on a mat."]
        assert claude.calls == 2 and client.downloads(USER) == 2
        assert user_content(claude.message_requests[1])[0]["type"] == "image"
        assert await bot.statuses() == ["answered"]


async def test_the_fake_anthropic_refuses_what_the_api_refuses():
    """Unsupported media type, over 5 MB, over 8000 px, a mismatched type, a model without vision."""
    import anthropic

    async with FakeAnthropic(api_key=ANTHROPIC_KEY, blind_models=["claude-test-haiku"]) as claude:
        client = anthropic.AsyncAnthropic(api_key=ANTHROPIC_KEY, base_url=claude.base_url, max_retries=0)
        png = __import__("base64").b64encode(image_bytes(10, 10, kind="PNG")).decode()

        async def ask(media_type: str, data: str, model: str = "claude-test") -> str:
            block = {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
            try:
                await client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": [block]}])
            except anthropic.BadRequestError as error:
                return error.body["error"]["message"]
            return "ok"

        assert await ask("image/png", png) == "ok"
        assert "media_type: Input should be" in await ask("image/bmp", png)
        assert "does not match the provided media type image/jpeg" in await ask("image/jpeg", png)
        assert "image exceeds 5 MB maximum" in await ask("image/png", "A" * (5 * 2**20 + 4))
        huge = __import__("base64").b64encode(image_bytes(8001, 10, kind="PNG")).decode()
        assert "exceed max allowed size: 8000 pixels" in await ask("image/png", huge)
        assert "does not support image input" in await ask("image/png", png, model="claude-test-haiku")
        await client.close()


async def test_retry_asks_about_the_photo_again_with_the_image(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(
            FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("A dog."))
        )
        claude.script(anth.Reply("A cat."))
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await send(bot, sent(photo(), text="What animal?"))
        await bot.user_says("/retry")
        assert bot.texts() == ["A cat.", "A dog."]
        image, question = user_content(claude.message_requests[1])
        assert image["type"] == "image" and question["text"] == "[photo]\nWhat animal?"
        assert bot.client.downloads(USER) == 2  # Telegram keeps it: fetched again, never stored


def test_the_reply_without_a_model_that_can_see_names_the_offline_model():
    from integrations.chain import ChainModel, ModelChain
    from integrations.clock import ManualClock
    from integrations.local_model.bundle import LOCAL_MARKER

    offline = ChainModel(ModelRef("local", "smollm2"), provider=None, marker=LOCAL_MARKER, sees_images=False)
    claude = ChainModel(ModelRef.parse(CLAUDE), provider=None)
    assert photos.no_vision_note(ModelChain([offline], ManualClock()), "photo") == photos.NO_VISION.format(
        what="photo", offline=photos.OFFLINE_CANNOT
    )
    assert "offline" in photos.no_vision_note(ModelChain([offline], ManualClock()), "album")
    assert photos.no_vision_note(ModelChain([offline, claude], ManualClock()), "photo") is None


async def test_the_fake_openai_refuses_what_the_api_refuses():
    """An unreadable image, a model without vision: the API's 400s, which the SDK raises."""
    import base64

    import openai

    async with FakeOpenAI(api_key=OPENAI_KEY, models=["gpt-test", "gpt-5.1"]) as gpt:
        client = openai.AsyncOpenAI(api_key=OPENAI_KEY, base_url=gpt.base_url, max_retries=0)
        png = base64.b64encode(image_bytes(600, 1600, kind="PNG")).decode()

        async def ask(url: str, model: str = "gpt-5.1") -> str:
            part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
            try:
                done = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": [part]}])
            except openai.BadRequestError as error:
                return f"{error.code}: {error.message}"
            return f"ok {done.usage.prompt_tokens}"

        # 600 x 1600 fits 2048 as it is, then 768 x 2048: 2 x 4 tiles, 85 + 8 x 170 tokens, plus the text's 12.
        assert await ask(f"data:image/png;base64,{png}") == f"ok {85 + 8 * 170 + 12}"
        assert (await ask("data:image/png;base64,bm90IGFuIGltYWdl")).startswith("invalid_image_format")
        assert "only supported by certain models" in await ask(f"data:image/png;base64,{png}", model="gpt-test")
        await client.close()


async def test_in_a_group_an_album_whose_caption_names_the_bot_is_answered_with_all_its_photos(tmp_path):
    group = -1001234567890
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack, "Three cats.")
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        album = 5_550_004

        def part(caption: str = "", *, mentioned: bool = False):
            return new_message_event(
                chat_id=group, sender_id=USER, text=caption, message_id=next(MESSAGE_IDS),
                media=photo(), grouped_id=album, mentioned=mentioned,
            )

        # The caption is on the second photo here; the first and third do not name the bot.
        await send(bot, part(), part("@switchboard_bot which is the best?", mentioned=True), part())
        assert bot.texts(group) == ["Three cats."]
        blocks = user_content(claude.message_requests[0])
        assert [b["type"] for b in blocks] == ["image", "image", "image", "text"]
        assert blocks[-1]["text"] == "[3 photos]\nwhich is the best?"
        # An album that never names the bot is not answered (nor stored).
        await send(bot, *[new_message_event(chat_id=group, sender_id=USER, text="", message_id=next(MESSAGE_IDS), media=photo(), grouped_id=5_550_005) for _ in range(2)])
        assert bot.texts(group) == ["Three cats."] and claude.calls == 1
        assert await bot.statuses(group) == ["answered", "answered", "answered"]


QUOTED_CAT = "[Replying to your earlier message:]\n> A cat on a mat.\n\n"


async def answered_once(stack: AsyncExitStack, tmp_path):
    """Claude, a bot that has answered one question, and the Telegram id of that answer."""
    claude = await claude_upstream(stack)
    bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
    await bot.user_says("What sits on a mat?")
    return claude, bot, bot.client.messages(USER)[-1].id


async def test_a_captioned_photo_replying_to_the_bots_answer_is_asked_with_the_quote(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot, answer_id = await answered_once(stack, tmp_path)
        await send(bot, sent(photo(), text="Is it this one?", reply_to=answer_id))

        assert bot.texts() == ["A cat on a mat.", "A cat on a mat."]
        image, question = user_content(claude.message_requests[1])
        assert image["type"] == "image"
        # The placeholder still opens the question; the quote sits next to the caption.
        assert question == {"type": "text", "text": f"[photo]\n{QUOTED_CAT}Is it this one?"}
        # A follow-up carries the quoted question in words, not the image again.
        await bot.user_says("Thanks")
        assert claude.message_requests[2].json["messages"][2] == {"role": "user", "content": f"[photo]\n{QUOTED_CAT}Is it this one?"}
        assert len(claude.images) == 1
        assert await bot.statuses() == ["answered", "answered", "answered"]


async def test_an_album_whose_captioned_photo_replies_is_one_question_with_the_quote(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot, answer_id = await answered_once(stack, tmp_path)
        album = 5_550_014
        # The caption (and the reply) on the second photo: the job belongs to the first.
        await send(bot, sent(photo(640, 480), album=album), sent(photo(320, 240), album=album, text="Which one?", reply_to=answer_id))

        assert claude.calls == 2 and bot.texts() == ["A cat on a mat.", "A cat on a mat."]
        blocks = user_content(claude.message_requests[1])
        assert [b["type"] for b in blocks] == ["image", "image", "text"]
        assert blocks[-1]["text"] == f"[2 photos]\n{QUOTED_CAT}Which one?"
        assert await bot.statuses() == ["answered", "answered", "answered"]


async def test_a_photo_reply_keeps_its_quote_after_a_restart_mid_answer(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        crashed_run = AsyncExitStack()
        bot = await start_telegram_bot(crashed_run, settings)
        await bot.user_says("What sits on a mat?")
        answer_id = bot.client.messages(USER)[-1].id
        claude.script(anth.stall_after(1, "A cat on a mat, sitting."))
        await bot.client.deliver(sent(photo(), text="Is it this one?", reply_to=answer_id))
        await bot.clock.run_until(lambda: claude.calls == 2 and bool(bot.client.drafts(USER)), poll=POLL)
        client, clock = bot.client, bot.clock
        await kill(bot, crashed_run)  # killed mid-answer

        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        assert bot.texts() == ["A cat on a mat.", "A cat on a mat."]
        expected = f"[photo]\n{QUOTED_CAT}Is it this one?"
        assert [user_content(claude.message_requests[i])[-1]["text"] for i in (1, 2)] == [expected, expected]
        assert user_content(claude.message_requests[2])[0]["type"] == "image"
        assert claude.calls == 3 and await bot.statuses() == ["answered", "answered"]


async def test_a_photo_reply_taken_during_a_shutdown_is_quoted_after_the_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await claude_upstream(stack)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            await bot.user_says("What sits on a mat?")
            answer_id = bot.client.messages(USER)[-1].id
            bot.app.router.stop_accepting()  # stored, looked at after the restart
            await send(bot, sent(photo(), text="Is it this one?", reply_to=answer_id))
            assert await bot.statuses() == ["answered", "pending"]
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert user_content(claude.message_requests[-1])[-1]["text"] == f"[photo]\n{QUOTED_CAT}Is it this one?"
        assert claude.calls == 2 and await bot.statuses() == ["answered", "answered"]
