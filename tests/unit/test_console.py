import io

from bot.console import ConsoleTransport
from handlers.richtext import RichText
from handlers.stream import ReplyStream
from integrations.clock import ManualClock


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


async def test_a_message_sent_after_the_last_line_is_still_printed_before_the_console_exits():
    import asyncio

    from bot.console import CONSOLE_USER_ID, ConsoleSession
    from handlers.lanes import ChatLanes

    out = io.StringIO()
    transport = ConsoleTransport(out, live=False)
    lanes = ChatLanes()

    async def handle(message):
        await transport.send(CONSOLE_USER_ID, RichText.plain("Your note is queued."))

        async def link_later():  # the notes outbox, delivering in the background
            await asyncio.sleep(0)
            await transport.send(CONSOLE_USER_ID, RichText.plain("Saved to Notion: https://notion.so/p1"))

        asyncio.ensure_future(link_later())

    session = ConsoleSession(handle, lanes, transport, stdin=io.StringIO("/note milk\n"), stdout=out, interactive=False)
    assert await session.run() == 0
    assert out.getvalue() == "Your note is queued.\n\nSaved to Notion: https://notion.so/p1\n\n"


async def test_a_message_sent_between_turns_is_printed_before_its_sender_goes_on():
    """A note's link sent while a scripted console waits for input is out before `send` returns,
    so the notes outbox marks it told only once the user has it (a kill after that loses nothing)."""
    import asyncio

    from bot.console import CONSOLE_USER_ID, ConsoleSession
    from handlers.lanes import ChatLanes

    out = io.StringIO()
    transport = ConsoleTransport(out, live=False)
    printed_when_sent: list[str] = []

    import threading

    input_ends = threading.Event()

    class Waiting(io.StringIO):
        """Input that stays open until the test ends it."""

        def readline(self, *args):
            input_ends.wait(5)
            return ""

    async def handle(message):
        return None

    session = ConsoleSession(handle, ChatLanes(), transport, stdin=Waiting(), stdout=out, interactive=False)
    running = asyncio.ensure_future(session.run())
    for _ in range(10):
        await asyncio.sleep(0)
    await transport.send(CONSOLE_USER_ID, RichText.plain("Saved to Notion: https://notion.so/p1"))
    printed_when_sent.append(out.getvalue())
    input_ends.set()
    assert await running == 0
    assert printed_when_sent == ["Saved to Notion: https://notion.so/p1\n\n"]
    assert out.getvalue() == "Saved to Notion: https://notion.so/p1\n\n"
