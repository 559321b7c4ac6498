"""Speech to text in pieces: its settings, its price, what Telegram says of a recording, the name it
is uploaded under, and how the transcript is quoted."""
from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings
from bot.telegram.transport import BotIdentity, TelegramMedia, describe_media, incoming_from_event
from handlers.render import render_markdown
from handlers.transport import Media
from handlers.voice import TRANSCRIPT_SHOWN_CHARS, transcript_quote
from integrations.clock import ManualClock
from integrations.errors import BadRequest
from integrations.prices import PriceTable
from integrations.transcription import upload_name
from tests.fakes.telegram import FakeTelegramClient, audio_file, new_message_event, photo, voice_note

SENTINEL_KEY = "sk-SENTINEL-stt-9c1d"
USER = 4242


def settings(tmp_path: Path, **environ: str):
    return load_settings(environ, cwd=tmp_path)


def problems(tmp_path: Path, **environ: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, cwd=tmp_path)
    return caught.value.problems


# --- settings -------------------------------------------------------------------------------------


def test_speech_to_text_is_off_without_a_model(tmp_path):
    assert settings(tmp_path, OPENAI_API_KEY="sk-chat").stt is None


def test_on_openai_the_key_falls_back_to_the_chat_key_and_is_reloaded_from_there(tmp_path):
    stt = settings(tmp_path, STT_MODEL="whisper-1", OPENAI_API_KEY=SENTINEL_KEY).stt
    assert stt is not None
    assert (stt.model, stt.base_url, stt.key_setting) == ("whisper-1", "https://api.openai.com/v1", "OPENAI_API_KEY")
    assert stt.api_key.reveal() == SENTINEL_KEY
    assert (stt.max_seconds, stt.max_bytes, stt.price_per_minute) == (600.0, 25 * 2**20, None)


def test_an_own_key_wins_and_is_kept_out_of_sight(tmp_path):
    loaded = settings(tmp_path, STT_MODEL="whisper-1", STT_API_KEY=SENTINEL_KEY, OPENAI_API_KEY="sk-chat")
    assert loaded.stt.key_setting == "STT_API_KEY" and loaded.stt.api_key.reveal() == SENTINEL_KEY
    assert SENTINEL_KEY in loaded.secret_values()
    assert SENTINEL_KEY not in repr(loaded)


def test_a_self_hosted_server_needs_no_key(tmp_path):
    stt = settings(
        tmp_path, STT_MODEL="Systran/faster-whisper-small", STT_BASE_URL="http://127.0.0.1:8000/v1",
        STT_MAX_SECONDS="1800", STT_MAX_MB="100", STT_PRICE_PER_MINUTE="0",
    ).stt  # fmt: skip
    assert stt.api_key is None
    assert (stt.max_seconds, stt.max_bytes, stt.price_per_minute) == (1800.0, 100 * 2**20, 0.0)


def test_openai_without_any_key_is_a_problem_naming_both_settings(tmp_path):
    assert problems(tmp_path, STT_MODEL="whisper-1") == [
        "STT_API_KEY (or OPENAI_API_KEY) is needed to transcribe with OpenAI (STT_MODEL is set); set one, "
        "or point STT_BASE_URL at a server that needs no key."
    ]


def test_bad_values_are_named_each_and_other_stt_settings_need_the_model(tmp_path):
    found = problems(
        tmp_path, STT_MAX_SECONDS="ten", STT_MAX_MB="-1", STT_PRICE_PER_MINUTE="cheap", STT_API_KEY=SENTINEL_KEY
    )
    assert found == [
        "STT_MAX_SECONDS must be a positive number of seconds, not 'ten'.",
        "STT_MAX_MB must be a positive number of megabytes, not '-1'.",
        "STT_PRICE_PER_MINUTE must be a number of US dollars per minute (0 or more), not 'cheap'.",
        "STT_MODEL is needed for voice messages (STT_API_KEY, STT_MAX_SECONDS, STT_MAX_MB, STT_PRICE_PER_MINUTE set); "
        "set it (e.g. whisper-1) or unset them.",
    ]
    assert not any(SENTINEL_KEY in problem for problem in found)


def test_a_mistyped_stt_setting_is_warned_about(tmp_path):
    assert settings(tmp_path, STT_MODLE="whisper-1").warnings == (
        "STT_MODLE (in the environment) is not a Switchboard setting, so it is ignored: did you mean STT_MODEL?",
    )


# --- price ----------------------------------------------------------------------------------------


def test_transcription_is_priced_per_minute_by_the_second():
    prices = PriceTable()
    assert prices.audio_cost("whisper-1", 90).usd == pytest.approx(0.009)
    assert prices.audio_cost("whisper-large-v3-turbo", 3600).usd == pytest.approx(0.04)
    unknown = prices.audio_cost("my-own-whisper", 60)
    assert (unknown.usd, unknown.priced) == (0.0, False)
    assert PriceTable(audio_overrides={"my-own-whisper": 0.0}).audio_cost("my-own-whisper", 60).priced


# --- what Telegram says of a recording, before any download --------------------------------------


def test_a_voice_note_is_described_from_telegrams_metadata():
    message = new_message_event(chat_id=USER, sender_id=USER, text="", media=voice_note(42, size=9000)).message
    assert describe_media(message) == Media("voice", "voice message", duration=42.0, size=9000, mime_type="audio/ogg")


def test_an_audio_file_keeps_its_name_and_a_photo_is_not_audio():
    message = new_message_event(chat_id=USER, sender_id=USER, text="", media=audio_file(30, name="memo.mp3")).message
    media = describe_media(message)
    assert (media.kind, media.words, media.duration, media.file_name, media.is_audio) == (
        "audio", "audio file", 30.0, "memo.mp3", True,
    )  # fmt: skip
    described = describe_media(new_message_event(chat_id=USER, sender_id=USER, text="", media=photo()).message)
    assert (described.kind, described.words, described.is_audio) == ("image", "photo", False)


def test_an_incoming_voice_note_carries_its_description():
    event = new_message_event(chat_id=USER, sender_id=USER, text="", media=voice_note(3))
    incoming = incoming_from_event(event, BotIdentity(1, "bot"))
    assert incoming.attachment == "voice message" and incoming.media.duration == 3.0


async def test_media_is_fetched_again_by_id_and_downloaded_into_memory():
    client = FakeTelegramClient(ManualClock())
    event = new_message_event(chat_id=USER, sender_id=USER, text="", message_id=77, media=voice_note(2, data=b"OggS-audio"))
    await client.deliver(event)
    media = TelegramMedia(client)
    assert (await media.describe(USER, 77)).duration == 2.0
    assert await media.download(USER, 77) == b"OggS-audio"
    client.user_deletes(USER, 77)
    assert await media.describe(USER, 77) is None
    with pytest.raises(BadRequest):
        await media.download(USER, 77)


# --- upload name and quote ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mime", "expected"),
    [
        (None, "audio/ogg", "voice.ogg"),
        ("memo.m4a", "audio/mp4", "memo.m4a"),
        ("recording", "audio/mpeg", "recording.mp3"),
        (None, "audio/x-wav; codecs=1", "voice.wav"),
        (None, "audio/amr", "voice"),  # no known extension: the endpoint says what it reads
    ],
)
def test_the_upload_is_named_so_the_endpoint_knows_the_format(name, mime, expected):
    assert upload_name(name, mime) == expected


def test_the_transcript_is_quoted_literally_and_cut_short_at_a_word():
    quote = render_markdown(transcript_quote("Is *this* [a link](x)? 2. Yes_no"))
    assert quote.text == "🎤 Is *this* [a link](x)? 2. Yes_no"
    assert [entity.kind for entity in quote.entities] == ["blockquote"]
    long = render_markdown(transcript_quote("word " * 1000)).text
    assert long.endswith("word …") and len(long) <= TRANSCRIPT_SHOWN_CHARS + 5
