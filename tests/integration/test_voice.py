"""Voice and audio messages, from the user's side: transcribed through the real openai SDK against a
fake `/v1/audio/transcriptions`, the transcript shown, then answered as if typed; and every way it
can go wrong (too long, too large, not set up, over budget, transcription down, a restart)."""
import asyncio
from contextlib import AsyncExitStack
from dataclasses import replace

from telethon import types

from bot.config import Secret, SttSettings
from handlers import voice
from integrations.llm import Usage
from integrations.prices import format_usd
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import rate_limited, server_error
from tests.fakes.telegram import audio_file, new_message_event, voice_note
from tests.fakes.transcription_server import FakeTranscription, Heard, too_large
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, USER, kill, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
STT_KEY = "sk-sentinel-stt-key-00000000000000000000"
HEARD = "What is the capital of France?"
POLL = 0.05


def spoken(media=None, *, text: str = "", message_id: int | None = None):
    """A voice note (or other media) as the user sends it."""
    return new_message_event(
        chat_id=USER, sender_id=USER, text=text, message_id=message_id or next(MESSAGE_IDS), media=media or voice_note()
    )


async def upstreams(stack: AsyncExitStack, *, heard=Heard(HEARD, seconds=7)) -> tuple[FakeAnthropic, FakeTranscription]:
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Paris.")))
    stt = await stack.enter_async_context(FakeTranscription(api_key=STT_KEY, default=heard))
    return claude, stt


def voice_settings(tmp_path, claude, stt, **overrides):
    stt_settings = SttSettings("whisper-1", Secret(STT_KEY), base_url=stt.base_url, **overrides)
    return settings_for(tmp_path, anthropic=claude, models=[CLAUDE], stt=stt_settings)


async def send(bot, event) -> None:
    await bot.clock.run_until_complete(bot.client.deliver(event))
    await bot.settle()


async def test_a_voice_note_is_transcribed_the_transcript_shown_and_then_answered(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        bot = await start_telegram_bot(stack, voice_settings(tmp_path, claude, stt))
        await send(bot, spoken(voice_note(7)))

        assert bot.texts() == [f"🎤 {HEARD}", "Paris."]
        quote = bot.client.messages(USER)[0]
        assert any(isinstance(entity, types.MessageEntityBlockquote) for entity in quote.entities)
        # Uploaded as the SDK sends it: Telegram's OGG under a name that says so.
        [upload] = stt.uploads
        assert (upload.model, upload.file_name, upload.content_type) == ("whisper-1", "voice.ogg", "audio/ogg")
        # The model was asked the transcript, as if typed, and the history keeps it as the user's words.
        assert claude.message_requests[0].json["messages"] == [{"role": "user", "content": HEARD}]
        await bot.user_says("And of Italy?")
        assert claude.message_requests[1].json["messages"][:2] == [
            {"role": "user", "content": HEARD},
            {"role": "assistant", "content": "Paris."},
        ]
        assert await bot.statuses() == ["answered", "answered"]


async def test_an_audio_file_is_uploaded_under_its_own_name_and_answered(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack, heard=Heard("Play it again."))
        bot = await start_telegram_bot(stack, voice_settings(tmp_path, claude, stt))
        await send(bot, spoken(audio_file(40, name="memo.m4a", mime_type="audio/mp4")))
        assert bot.texts() == ["🎤 Play it again.", "Paris."]
        assert stt.uploads[0].file_name == "memo.m4a"


async def test_a_caption_goes_with_the_transcript_also_after_a_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack, heard=Heard("Bonjour à tous."))
        settings = voice_settings(tmp_path, claude, stt)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            await send(bot, spoken(text="Translate this, please."))
            bot.app.router.stop_accepting()  # the next one waits for the restart
            await send(bot, spoken(audio_file(20), text="And this one?"))
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert bot.texts() == ["🎤 Bonjour à tous.", "Paris.", "🎤 Bonjour à tous.", "Paris."]
        asked = [request.json["messages"][-1]["content"] for request in claude.message_requests]
        assert asked == ["Bonjour à tous.\n\nTranslate this, please.", "Bonjour à tous.\n\nAnd this one?"]


async def test_a_long_transcript_is_quoted_short_but_the_model_gets_all_of_it(tmp_path):
    words = " ".join(f"word{i}" for i in range(400))
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack, heard=Heard(words))
        bot = await start_telegram_bot(stack, voice_settings(tmp_path, claude, stt))
        await send(bot, spoken())
        quote, answer = bot.texts()
        assert quote.startswith("🎤 word0 word1") and quote.endswith(" …") and len(quote) < 800
        assert answer == "Paris."
        assert claude.message_requests[0].json["messages"] == [{"role": "user", "content": words}]


async def test_a_voice_note_too_long_is_refused_before_anything_is_downloaded(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        bot = await start_telegram_bot(stack, voice_settings(tmp_path, claude, stt, max_seconds=600))
        await send(bot, spoken(voice_note(601)))
        [reply] = bot.texts()
        assert reply.startswith("This voice message is 10 min 1 s long; I can transcribe up to 10 min.")
        assert bot.client.downloads(USER) == 0 and stt.transcription_calls == 0 and claude.calls == 0


async def test_a_file_larger_than_the_limit_is_refused_before_anything_is_downloaded(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        bot = await start_telegram_bot(stack, voice_settings(tmp_path, claude, stt))
        await send(bot, spoken(voice_note(60, size=30 * 2**20)))  # as Telegram's metadata says
        [reply] = bot.texts()
        assert reply.startswith("This voice message is 30.0 MB; I can transcribe files of up to 25.0 MB.")
        assert bot.client.downloads(USER) == 0 and stt.transcription_calls == 0


async def test_a_file_the_service_finds_too_large_gets_a_clear_reply(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        stt.script_transcriptions(too_large(27_000_000))
        bot = await start_telegram_bot(stack, voice_settings(tmp_path, claude, stt))
        await send(bot, spoken())
        [reply] = bot.texts()
        assert "couldn't read this voice message (it is too large for it)" in reply
        assert claude.calls == 0 and await bot.statuses() == ["failed"]


async def test_without_speech_to_text_a_voice_note_gets_a_reply_saying_it_is_not_set_up(tmp_path):
    async with AsyncExitStack() as stack:
        claude, _ = await upstreams(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await send(bot, spoken())
        assert bot.texts() == [voice.NOT_SET_UP.format(what="voice message")]
        assert bot.client.downloads(USER) == 0 and claude.calls == 0
        assert await bot.statuses() == ["answered"]


async def test_without_speech_to_text_a_captioned_voice_note_has_its_caption_answered(tmp_path):
    async with AsyncExitStack() as stack:
        claude, _ = await upstreams(stack)
        bot = await start_telegram_bot(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]))
        await send(bot, spoken(text="What is the capital of France?"))
        [reply] = bot.texts()
        assert "voice message" in reply and reply.endswith("Paris.")
        assert bot.client.downloads(USER) == 0


async def test_a_user_over_budget_is_refused_before_the_transcription_is_paid_for(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        settings = voice_settings(tmp_path, claude, stt)
        settings = replace(settings, limits=replace(settings.limits, user_daily_budget_usd=0.05))
        bot = await start_telegram_bot(stack, settings)
        # Ten minutes of audio earlier today: $0.06 of a $0.05 budget.
        await bot.app.services.features.usage.record_audio(USER, "whisper-1", 600)
        await send(bot, spoken())
        [reply] = bot.texts()
        assert reply.startswith("You've used $0.06 of your $0.05 daily budget")
        assert stt.transcription_calls == 0 and bot.client.downloads(USER) == 0 and claude.calls == 0
        assert await bot.statuses() == ["failed"]


async def test_the_transcription_cost_shows_in_usage(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack, heard=Heard(HEARD, seconds=90))
        settings = replace(voice_settings(tmp_path, claude, stt), admin_ids=frozenset({USER}))
        bot = await start_telegram_bot(stack, settings)
        await send(bot, spoken(voice_note(88)))
        await bot.user_says("/usage")
        # 90 s as OpenAI billed them, at $0.006 a minute (the chat model has no price).
        assert "$0.0090" in bot.texts()[-1]
        lines = await bot.app.services.features.usage.lines(days=1, user_id=USER)
        [line] = [line for line in lines if line.model.startswith("stt:")]
        assert (line.model, line.requests, round(line.cost_usd, 4), line.unpriced) == ("stt:whisper-1", 1, 0.009, 0)
        assert line.audio_seconds == 90


async def test_usage_shows_speech_to_text_as_minutes_of_audio_beside_the_tokens(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack, heard=Heard(HEARD, seconds=90))
        settings = replace(voice_settings(tmp_path, claude, stt), llm_prices=(("claude-test", 3.0, 15.0),))
        bot = await start_telegram_bot(stack, settings)
        await send(bot, spoken(voice_note(88)))
        await bot.user_says("/usage")
        today = bot.texts()[-1].splitlines()[0]
        [(_, answer)] = [(ref, used) for ref, used in await _chat_usage(bot)]
        tokens_cost = (answer.input_tokens * 3.0 + answer.output_tokens * 15.0) / 1e6
        assert today == (
            f"Today (26 November, UTC): {answer.input_tokens:,} tokens in and {answer.output_tokens:,} out, "
            f"{format_usd(tokens_cost)}; 1 min 30 s of audio transcribed, $0.0090."
        )
        assert "0 tokens" not in bot.texts()[-1]


async def test_usage_of_someone_who_only_sent_voice_notes_says_minutes_not_tokens(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack, heard=Heard(HEARD, seconds=45))
        settings = replace(voice_settings(tmp_path, claude, stt), admin_ids=frozenset({USER}))
        bot = await start_telegram_bot(stack, settings)
        await bot.app.services.features.usage.record_audio(USER, "whisper-1", 45)
        await bot.user_says("/usage")
        assert bot.texts()[-1].startswith("Today (26 November, UTC): 45 s of audio transcribed, $0.0045.")
        await bot.user_says("/usage all")
        assert "• stt:whisper-1: today 45 s of audio, $0.0045; 7 days 45 s of audio, $0.0045" in bot.texts()[-1]


async def _chat_usage(bot):
    lines = await bot.app.services.features.usage.lines(days=1, user_id=USER)
    return [(line.model, Usage(line.input_tokens, line.output_tokens)) for line in lines if not line.model.startswith("stt:")]


async def test_transcription_down_tells_the_user_once_and_answers_when_it_is_back(tmp_path, caplog):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        stt.script_transcriptions(*[server_error()] * 3)  # every retry of the first attempt
        bot = await start_telegram_bot(stack, voice_settings(tmp_path, claude, stt))
        await send(bot, spoken())
        assert bot.texts() == [voice.NOT_NOW.format(what="voice message", reason="the transcription service isn't answering")]
        assert claude.calls == 0
        assert await bot.statuses() == ["answering"]  # nothing lost: left for the next try

        safety_net = asyncio.ensure_future(bot.app.router.keep_resuming(every=300, older_than=120))
        await bot.clock.run_until(lambda: len(bot.texts()) == 3, poll=POLL)
        await bot.settle()
        safety_net.cancel()
        assert bot.texts()[1:] == [f"🎤 {HEARD}", "Paris."]
        assert stt.transcription_calls == 4 and claude.calls == 1
        assert await bot.statuses() == ["answered"]
        assert "nobody was working on" not in caplog.text


async def test_transcription_down_for_good_is_given_up_with_a_note_after_the_last_try(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack, heard=rate_limited(retry_after="1"))
        bot = await start_telegram_bot(stack, voice_settings(tmp_path, claude, stt))
        await send(bot, spoken())
        safety_net = asyncio.ensure_future(bot.app.router.keep_resuming(every=300, older_than=120))
        await bot.clock.run_until(lambda: len(bot.texts()) == 2, poll=POLL)
        await bot.settle()
        safety_net.cancel()
        busy = "the transcription service is busy"
        assert bot.texts() == [
            voice.NOT_NOW.format(what="voice message", reason=busy),
            voice.GAVE_UP.format(what="voice message", attempts=3, reason=busy),
        ]
        assert claude.calls == 0 and await bot.statuses() == ["failed"]


async def test_a_refused_transcription_key_is_the_operators_to_fix(tmp_path, caplog):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        settings = voice_settings(tmp_path, claude, stt)
        settings = replace(settings, stt=replace(settings.stt, api_key=Secret("sk-wrong-key-000000000000000000")))
        bot = await start_telegram_bot(stack, settings)
        await send(bot, spoken())
        assert bot.texts() == [voice.NEEDS_OPERATOR]
        assert "stt refused STT_API_KEY" in caplog.text and "sk-wrong-key" not in caplog.text
        assert claude.calls == 0 and await bot.statuses() == ["failed"]


async def test_a_voice_note_sent_while_the_bot_was_stopped_is_answered_after_start_once(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        settings = voice_settings(tmp_path, claude, stt)
        note = spoken()
        bot = await start_telegram_bot(stack, settings, offline_updates=[note])
        await bot.settle()
        assert bot.texts() == [f"🎤 {HEARD}", "Paris."]
        await send(bot, note)  # Telegram hands it out again
        assert bot.texts() == [f"🎤 {HEARD}", "Paris."]
        assert stt.transcription_calls == 1 and claude.calls == 1


async def test_a_voice_note_taken_during_a_shutdown_is_fetched_again_and_answered_after_the_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        settings = voice_settings(tmp_path, claude, stt)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            bot.app.router.stop_accepting()
            await send(bot, spoken(voice_note(5)))
            assert bot.texts() == [] and await bot.statuses() == ["pending"]
        client, clock = bot.client, bot.clock
        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        assert bot.texts() == [f"🎤 {HEARD}", "Paris."]
        assert [call.kind for call in client.calls].count("get_messages") >= 1


async def test_a_voice_note_deleted_before_the_restart_gets_a_note_instead(tmp_path):
    async with AsyncExitStack() as stack:
        claude, stt = await upstreams(stack)
        settings = voice_settings(tmp_path, claude, stt)
        note = spoken()
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            bot.app.router.stop_accepting()
            await send(bot, note)
        bot.client.user_deletes(USER, note.message.id)
        bot = await start_telegram_bot(stack, settings, clock=bot.clock, client=bot.client)
        await bot.settle()
        assert bot.texts() == [voice.GONE.format(what="voice message")]
        assert stt.transcription_calls == 0 and await bot.statuses() == ["failed"]


async def test_a_restart_after_the_transcription_answers_without_transcribing_again(tmp_path):
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Paris.")))
        claude.script(anth.stall_after(1, "Paris is the capital."))
        stt = await stack.enter_async_context(FakeTranscription(api_key=STT_KEY, default=Heard(HEARD)))
        settings = voice_settings(tmp_path, claude, stt)
        crashed_run = AsyncExitStack()
        bot = await start_telegram_bot(crashed_run, settings)
        await bot.client.deliver(spoken())
        await bot.clock.run_until(lambda: claude.calls == 1 and bool(bot.client.drafts(USER)), poll=POLL)
        client, clock = bot.client, bot.clock
        await kill(bot, crashed_run)  # killed mid-answer

        bot = await start_telegram_bot(stack, settings, clock=clock, client=client)
        await bot.settle()
        assert bot.texts() == [f"🎤 {HEARD}", "Paris."]
        assert stt.transcription_calls == 1 and claude.calls == 2
        assert await bot.statuses() == ["answered"]

