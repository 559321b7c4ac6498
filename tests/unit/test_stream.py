import asyncio

from handlers.richtext import RichText
from handlers.stream import ReplyStream, StreamPacing
from integrations.clock import ManualClock
from integrations.errors import BadRequest, RateLimited
from tests.fakes.transport import RecordingTransport
from tests.unit.test_watchdog import CountingTasks

CHAT = 42


def plain(text: str) -> RichText:
    return RichText.plain(text)


async def stream_words(clock, stream, words, gap):
    text = ""
    for word in words:
        text += word
        stream.update(text)
        await clock.advance(gap)
    return text


async def test_group_reply_edits_one_message_at_most_once_a_second():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, -CHAT, use_drafts=False, render=plain)
    stream.start()
    final = await stream_words(clock, stream, [f"w{i} " for i in range(30)], gap=0.1)
    ids = await stream.finish(final)
    calls = [c for c in transport.calls if c.kind in ("send", "edit")]
    assert len(ids) == 1
    assert transport.texts(-CHAT) == [final.strip()]
    gaps = [b.at - a.at for a, b in zip(calls, calls[1:])]
    assert all(gap >= 1.0 for gap in gaps[:-1])
    assert 2 <= len(calls) <= 5


async def test_private_reply_streams_as_draft_then_lands_as_real_message():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, CHAT, use_drafts=True, render=plain)
    stream.start()
    final = await stream_words(clock, stream, ["Hello ", "there ", "friend"], gap=1.0)
    await stream.finish(final)
    kinds = transport.kinds(CHAT)
    assert "draft" in kinds
    assert kinds[-1] == "send"
    assert "edit" not in kinds
    assert transport.texts(CHAT) == ["Hello there friend"]


async def test_refused_drafts_fall_back_to_edits():
    clock = ManualClock()
    transport = RecordingTransport(clock, drafts_supported=False)
    stream = ReplyStream(transport, clock, CHAT, use_drafts=True, render=plain)
    stream.start()
    final = await stream_words(clock, stream, ["one ", "two ", "three"], gap=1.0)
    await stream.finish(final)
    assert "edit" in transport.kinds(CHAT)
    assert transport.texts(CHAT) == ["one two three"]


async def test_typing_shows_until_first_text():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, CHAT, use_drafts=True, render=plain)
    stream.start()
    await clock.advance(10)
    typing_before = transport.kinds(CHAT).count("typing")
    stream.update("first")
    await clock.advance(10)
    assert typing_before >= 2
    assert transport.kinds(CHAT).count("typing") == typing_before
    await stream.finish("first")


async def test_long_reply_continues_in_further_messages():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, -CHAT, use_drafts=False, render=plain)
    stream.start()
    paragraph = ("word " * 150).strip()
    final = "\n\n".join([paragraph] * 12)
    stream.update(final[:3000])
    await clock.advance(1)
    ids = await stream.finish(final)
    texts = transport.texts(-CHAT)
    assert len(ids) == len(texts) >= 2
    assert all(len(t) <= 4096 for t in texts)
    assert "".join(texts).replace("\n", "").replace(" ", "") == final.replace("\n", "").replace(" ", "")


async def test_final_text_lands_even_when_a_preview_failed():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    transport.fail_next("edit", BadRequest("some transient refusal"))
    stream = ReplyStream(transport, clock, -CHAT, use_drafts=False, render=plain)
    stream.start()
    final = await stream_words(clock, stream, ["a ", "b ", "c ", "d"], gap=1.0)
    await stream.finish(final)
    assert transport.texts(-CHAT) == ["a b c d"]


async def test_final_text_waits_out_a_flood_wait_and_lands():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    transport.fail_next("send", RateLimited("flood", upstream="telegram", retry_after=7))
    stream = ReplyStream(transport, clock, CHAT, use_drafts=False, render=plain)
    finished = asyncio.ensure_future(stream.finish("the answer"))
    await clock.advance(6.9)
    assert not finished.done()
    await clock.advance(0.2)
    assert finished.done()
    assert transport.texts(CHAT) == ["the answer"]


async def test_formatting_refused_by_telegram_falls_back_to_plain_text():
    from handlers.richtext import Entity

    clock = ManualClock()
    transport = RecordingTransport(clock)
    transport.fail_next("send", BadRequest("can't parse entities"))
    rich = lambda text: RichText(text, (Entity("bold", 0, 3),))
    stream = ReplyStream(transport, clock, CHAT, render=rich)
    await stream.finish("bold text")
    [message] = transport.messages[CHAT].values()
    assert message.text == "bold text" and message.entities == ()


async def test_pending_updates_collapse_to_latest_while_a_call_is_blocked():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, -CHAT, use_drafts=False, render=plain, pacing=StreamPacing(edit_interval=5))
    stream.start()
    stream.update("v1")
    await clock.advance(0.1)
    for i in range(2, 40):
        stream.update(f"v{i}")
        await clock.advance(0.1)
    await clock.advance(5)
    shown = [c.text.text for c in transport.calls if c.kind in ("send", "edit")]
    assert shown[0] == "v1"
    assert shown[-1] == "v39"
    assert len(shown) <= 3
    await stream.finish("v39")


def part_keys(part: int) -> int:
    return 1000 + part


async def test_a_resumed_reply_whose_send_telegram_already_took_shows_one_message_with_the_new_text():
    """Killed after Telegram took the first attempt's sends but before they were recorded: the
    resumed reply repeats the keyed sends, gets those messages back and sets its own text."""
    clock = ManualClock()
    transport = RecordingTransport(clock)
    first = ReplyStream(transport, clock, -CHAT, use_drafts=False, render=plain, send_key=part_keys)
    await first.finish("An answer that was cut off")

    resumed = ReplyStream(transport, clock, -CHAT, use_drafts=False, render=plain, send_key=part_keys, resumed=True)
    ids = await resumed.finish("The whole answer, generated again.")

    assert ids == first.message_ids
    assert transport.texts(-CHAT) == ["The whole answer, generated again."]


async def test_a_resumed_reply_sends_anew_when_the_message_its_key_names_was_deleted():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    first = ReplyStream(transport, clock, CHAT, use_drafts=True, render=plain, send_key=part_keys)
    [gone] = await first.finish("Old answer")
    del transport.messages[CHAT][gone]  # the user deleted it

    resumed = ReplyStream(transport, clock, CHAT, use_drafts=True, render=plain, send_key=part_keys, resumed=True)
    [shown] = await resumed.finish("New answer")

    assert shown != gone
    assert transport.texts(CHAT) == ["New answer"]


async def test_a_first_attempt_does_not_pay_an_edit_for_each_keyed_send():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, CHAT, use_drafts=True, render=plain, send_key=part_keys)
    await stream.finish("x" * 5000)

    assert transport.kinds(CHAT) == ["send", "send"]


class GatedTransport(RecordingTransport):
    """A transport that says, before each preview, whether it would take it."""

    takes = True

    def takes_preview(self, chat_id: int) -> bool:
        return self.takes


async def test_no_preview_is_rendered_while_the_transport_would_not_take_it():
    clock = ManualClock()
    transport = GatedTransport(clock)
    rendered: list[str] = []

    def render(text: str) -> RichText:
        rendered.append(text)
        return plain(text)

    stream = ReplyStream(transport, clock, -CHAT, use_drafts=False, render=render)
    stream.start()
    transport.takes = False
    text = await stream_words(clock, stream, [f"w{i} " for i in range(10)], gap=0.5)
    assert rendered == [] and "send" not in transport.kinds(-CHAT)
    transport.takes = True
    stream.update(text + "more")
    await clock.advance(1.0)
    assert rendered == [text + "more"]
    await stream.finish(text + "more")
    assert transport.texts(-CHAT) == [(text + "more").strip()]


async def test_the_final_text_does_not_wait_for_the_preview_pace():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, -CHAT, use_drafts=False, render=plain, pacing=StreamPacing(edit_interval=30))
    stream.start()
    stream.update("first")
    await clock.advance(0.1)
    stream.update("first second")
    await clock.advance(0.1)
    started = clock.monotonic()
    await stream.finish("first second third")
    assert clock.monotonic() == started
    assert transport.texts(-CHAT) == ["first second third"]


async def test_streaming_starts_no_task_per_update():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    with CountingTasks() as tasks:
        stream = ReplyStream(transport, clock, CHAT, use_drafts=True)
        stream.start()
        text = await stream_words(clock, stream, [f"**w{i}** " for i in range(200)], gap=0.05)
        await stream.finish(text)
    assert tasks.created == 2  # the typing indicator and the preview pump, for the whole reply
    assert len([kind for kind in transport.kinds(CHAT) if kind == "draft"]) >= 9


async def test_a_long_reply_previews_as_drafts_of_its_last_part():
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, CHAT, use_drafts=True)
    stream.start()
    paragraph = ("word " * 150).strip()
    text = ""
    for index in range(12):
        text += f"{paragraph} {index}\n\n"
        stream.update(text)
        await clock.advance(1.0)
    drafts = [call.text.text for call in transport.calls if call.kind == "draft"]
    assert all(len(draft) <= 4096 for draft in drafts)
    assert drafts[-1].endswith("word 11")
    await stream.finish(text)
    assert " ".join(transport.texts(CHAT)).split() == text.split()


async def test_a_long_code_block_is_rendered_ahead_every_few_hundred_characters_not_every_chunk(monkeypatch):
    # A block that goes on (here 3.6 kB of code) never completes, so rendering ahead parses all of
    # it each time: that must happen every RENDER_AHEAD characters, not on every 40-character chunk.
    from handlers import render
    from handlers.stream import RENDER_AHEAD

    parsed: list[int] = []
    real_events = render._events
    monkeypatch.setattr(render, "_events", lambda source: parsed.append(len(source)) or real_events(source))
    clock = ManualClock()
    transport = RecordingTransport(clock)
    stream = ReplyStream(transport, clock, CHAT, use_drafts=True)
    code = "".join(f"line {i} = {i} * 2  # a comment\n" for i in range(120))
    chunks = ["Here:\n\n```py\n", *(code[i : i + 40] for i in range(0, len(code), 40))]
    final = await stream_words(clock, stream, chunks, gap=0.01)
    await stream.finish(final)
    assert transport.texts(CHAT) == [f"Here:\n\n{code.rstrip()}"]
    assert len(parsed) <= len(final) // RENDER_AHEAD + 3, "rendered ahead on every chunk"
    assert sum(parsed) < 20 * len(final)
