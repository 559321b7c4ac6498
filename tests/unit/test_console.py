import io

from bot.console import ConsoleTransport
from handlers.richtext import RichText
from handlers.stream import ReplyStream
from integrations.resilience.clock import ManualClock


async def test_live_console_prints_each_edit_as_it_grows():
    out = io.StringIO()
    clock = ManualClock()
    stream = ReplyStream(ConsoleTransport(out, live=True), clock, 1, use_drafts=True, render=RichText.plain)
    stream.start()
    seen = []
    text = ""
    for word in ["Streaming ", "reply ", "arrives ", "live."]:
        text += word
        stream.update(text)
        await clock.advance(1.0)
        seen.append(out.getvalue())
    await stream.finish(text)
    assert seen[0].startswith("Streaming")
    assert len(set(seen)) > 1, "the terminal shows the reply before it is finished"
    assert out.getvalue() == "Streaming reply arrives live."


async def test_scripted_console_prints_only_finished_replies():
    out = io.StringIO()
    transport = ConsoleTransport(out, live=False)
    message_id = await transport.send(1, RichText.plain("draft"))
    await transport.edit(1, message_id, RichText.plain("final words"))
    assert out.getvalue() == ""
    assert transport.take_new_replies() == ["final words"]
    assert transport.take_new_replies() == []
