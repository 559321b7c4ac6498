"""The console transport: the same router and handlers in a terminal.

In a terminal the reply streams live (each edit prints what it added), and lines typed while a
reply runs are handled at once, so `/cancel` works there as on Telegram; Ctrl-C stops the reply
in progress, or quits at the prompt. With stdin not a terminal, it reads one message per line,
waits for each reply to finish, and prints every finished reply followed by a blank line, so it
can be scripted.

Message ids continue from the ones already stored for the console's chat, so a second session on
the same state is not taken for a redelivery of the first one's messages; the bot's own messages
take ids from the same counter, as Telegram numbers both sides of a private chat.

Links print as `title (url)`. A line ending in a backslash goes on on the next line, and a line
of just three double quotes opens (and another closes) a block sent as one message. With `--jsonl`, each input
line is a JSON object `{"text": ...}` and each answer one JSON object `{"reply", "model",
"messages"}` on one line, for scripts (replies contain blank lines, so the plain mode's "reply,
then a blank line" cannot always be split back).
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Awaitable, Callable, Sequence, TextIO

from handlers.lanes import USER_CANCEL, ChatLanes
from handlers.richtext import RichText
from handlers.transport import DraftsUnsupported, IncomingMessage

# The local operator: a fixed private chat that Telegram never uses.
CONSOLE_USER_ID = 1

CONTINUES = "\\"
BLOCK = '"""'
HELP = (
    "In the console: end a line with \\ to go on on the next line, or put a message between two "
    'lines of """ to send several lines at once (a long /note, say). Ctrl-C stops a reply, Ctrl-D quits.'
)


def plain_with_links(text: RichText) -> str:
    """The text as a terminal shows it: each link's address after its words, `title (url)`."""
    units = text.text.encode("utf-16-le")
    ends: dict[int, list[str]] = {}
    for entity in text.entities:
        if entity.kind == "text_url" and entity.url:
            ends.setdefault(entity.offset + entity.length, []).append(entity.url)
    if not ends:
        return text.text
    pieces, start = [], 0
    for end in sorted(ends):
        pieces.append(units[start * 2 : end * 2].decode("utf-16-le", "replace"))
        pieces.append("".join(f" ({url})" for url in ends[end]))
        start = end
    pieces.append(units[start * 2 :].decode("utf-16-le", "replace"))
    return "".join(pieces)


class ConsoleTransport:
    name = "console"

    def __init__(self, out: TextIO, *, live: bool) -> None:
        self._out = out
        self._live = live
        self._messages: dict[int, RichText] = {}
        self._order: list[int] = []
        self._printed: dict[int, str] = {}
        self._next_id = 1
        self._reported = 0
        # Set by a scripted session while it waits for input: a final message sent then (a note's
        # link from the delivery worker) is printed before `send` returns, so whoever sent it
        # records it as told only once it is out (a kill in between cannot lose it).
        self.print_between_turns: Callable[[], None] | None = None

    def continue_from(self, first_id: int) -> None:
        """Number messages from `first_id` on (the first id not used in the chat yet)."""
        self._next_id = max(self._next_id, first_id)

    def next_id(self) -> int:
        """A message id not used in the console's chat before (by either side)."""
        message_id = self._next_id
        self._next_id += 1
        return message_id

    async def send(
        self, chat_id: int, text: RichText, *, reply_to: int | None = None, preview: bool = False, key: int | None = None
    ) -> int:
        message_id = self.next_id()
        self._show_new(message_id, text)
        if not preview and self.print_between_turns is not None:
            self.print_between_turns()
        return message_id

    async def edit(self, chat_id: int, message_id: int, text: RichText, *, preview: bool = False) -> None:
        if message_id not in self._messages:
            # A message an earlier session printed (a reply resumed after a restart): print anew.
            self._next_id = max(self._next_id, message_id + 1)
            self._show_new(message_id, text)
            return
        self._messages[message_id] = text
        if not self._live:
            return
        printed = self._printed.get(message_id, "")
        if message_id == self._order[-1] and text.text.startswith(printed):
            self._write(text.text[len(printed):])
        else:
            self._write("\n" + text.text)
        self._printed[message_id] = text.text

    async def draft(self, chat_id: int, draft_id: int, text: RichText) -> None:
        raise DraftsUnsupported("the console streams by edits", upstream="console")

    async def typing(self, chat_id: int) -> None:
        return None

    async def delete(self, chat_id: int, message_ids: Sequence[int]) -> None:
        """A terminal cannot take back what it printed; a scripted run just never prints them."""
        for message_id in message_ids:
            self._messages.pop(message_id, None)
            if message_id in self._order[self._reported:]:
                self._order.remove(message_id)

    def take_new_replies(self) -> list[str]:
        """Final texts of the messages sent since the last call."""
        new = self._order[self._reported:]
        self._reported = len(self._order)
        return [plain_with_links(self._messages[i]) for i in new]

    def _show_new(self, message_id: int, text: RichText) -> None:
        self._messages[message_id] = text
        self._order.append(message_id)
        if self._live:
            if len(self._order) > 1:
                self._write("\n")
            self._write(text.text)
            self._printed[message_id] = text.text

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class LineReader:
    """Lines from a blocking stream, read by a daemon thread (which never holds up the exit)."""

    def __init__(self, stream: TextIO) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def pump() -> None:
            while True:
                try:
                    line = stream.readline()
                except (OSError, ValueError):
                    line = ""
                loop.call_soon_threadsafe(self._queue.put_nowait, line or None)
                if not line:
                    return

        threading.Thread(target=pump, name="console-stdin", daemon=True).start()

    async def next(self) -> str | None:
        """The next line, or None at the end of input."""
        return await self._queue.get()


class Messages:
    """Whole messages from input lines: a trailing backslash joins the next line, and lines
    between two lines of three double quotes are one message."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._in_block = False

    @property
    def open(self) -> bool:
        return self._in_block or bool(self._lines)

    def feed(self, line: str) -> str | None:
        """The finished message, once `line` completes one; None while one is being written."""
        line = line.rstrip("\r\n")
        if line.strip() == BLOCK:
            if self._in_block:
                return self._take()
            self._in_block = True
            return None
        if self._in_block:
            self._lines.append(line)
            return None
        if line.endswith(CONTINUES):
            self._lines.append(line[: -len(CONTINUES)])
            return None
        self._lines.append(line)
        return self._take()

    def _take(self) -> str:
        text = "\n".join(self._lines)
        self._lines, self._in_block = [], False
        return text


class ConsoleSession:
    """One console conversation: lines in, replies out, until the input ends or the user quits."""

    def __init__(
        self,
        handle: Callable[[IncomingMessage], Awaitable[None]],
        lanes: ChatLanes,
        transport: ConsoleTransport,
        *,
        stdin: TextIO = sys.stdin,
        stdout: TextIO = sys.stdout,
        interactive: bool,
        banner: str = "",
        jsonl: bool = False,
        last_model: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._handle = handle
        self._lanes = lanes
        self._transport = transport
        self._stdin = stdin
        self._stdout = stdout
        self._interactive = interactive and not jsonl
        self._banner = banner
        self._jsonl = jsonl
        self._last_model = last_model
        self._messages = Messages()
        self._quit = asyncio.Event()

    def interrupt(self) -> None:
        """Ctrl-C: stop the reply in progress, like /cancel; at the prompt, quit."""
        if not self._lanes.cancel(CONSOLE_USER_ID, USER_CANCEL):
            self._quit.set()

    def quit(self) -> None:
        self._quit.set()

    async def run(self) -> int:
        lines = LineReader(self._stdin)
        if self._interactive and self._banner:
            self._stdout.write(self._banner + "\n\n")
        # Replies to what an earlier session left unanswered come first.
        await self._finish_turn(lines)
        while not self._quit.is_set():
            if self._interactive:
                self._stdout.write("...> " if self._messages.open else "you> ")
                self._stdout.flush()
            line = await self._next_line(lines)
            if line is None:
                if self._interactive:
                    self._stdout.write("\n")
                    self._stdout.flush()
                break
            if await self._take(line):
                await self._finish_turn(lines)
        await self._finish_turn(lines)  # what came meanwhile (a note's link, sent in the background)
        return 0

    async def _take(self, line: str) -> bool:
        text = self._read_jsonl(line) if self._jsonl else self._messages.feed(line)
        if text is None or not text.strip():
            return False
        message_id = self._transport.next_id()
        await self._handle(IncomingMessage(CONSOLE_USER_ID, CONSOLE_USER_ID, message_id, text, True, True, "operator"))
        return True

    async def _finish_turn(self, lines: LineReader) -> None:
        """Wait for the replies in progress, then show them (a script sees only finished replies).

        In a terminal, lines typed meanwhile are handled at once (so /cancel works)."""
        while self._lanes.busy(CONSOLE_USER_ID):
            if not self._interactive:
                await self._lanes.wait_idle(CONSOLE_USER_ID)
                continue
            idle = asyncio.ensure_future(self._lanes.wait_idle(CONSOLE_USER_ID))
            typed = asyncio.ensure_future(lines.next())
            await asyncio.wait({idle, typed}, return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            if typed.done():
                line = typed.result()
                if line is None:
                    self._quit.set()  # the input ended: finish this reply, then stop
                    await self._lanes.wait_idle(CONSOLE_USER_ID)
                    break
                await self._take(line)
            else:
                typed.cancel()  # a cancelled Queue.get leaves the line in the queue
        await self.show_new_replies()

    async def show_new_replies(self) -> None:
        """Print what the bot sent since the last time (live in a terminal: only the spacing)."""
        replies = self._transport.take_new_replies()
        model = await self._last_model() if self._jsonl and replies and self._last_model is not None else None
        self._print(replies, model)

    def _print_between_turns(self) -> None:
        self._print(self._transport.take_new_replies(), None)

    def _print(self, replies: list[str], model: str | None) -> None:
        if self._jsonl:
            if replies:
                self._write_json({"reply": "\n\n".join(replies), "model": model, "messages": replies})
        elif self._interactive:
            if replies:
                self._stdout.write("\n\n")
        else:
            for reply in replies:
                self._stdout.write(reply + "\n\n")
        self._stdout.flush()

    def _read_jsonl(self, line: str) -> str | None:
        if not line.strip():
            return None
        try:
            request = json.loads(line)
        except ValueError as error:
            self._write_json({"error": f"not a JSON object: {error}"})
            return None
        text = request.get("text") if isinstance(request, dict) else None
        if not isinstance(text, str):
            self._write_json({"error": 'each line must be a JSON object with a "text" string'})
            return None
        return text

    def _write_json(self, value: dict[str, object]) -> None:
        self._stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        self._stdout.flush()

    async def _next_line(self, lines: LineReader) -> str | None:
        typed = asyncio.ensure_future(lines.next())
        quitting = asyncio.ensure_future(self._quit.wait())
        if not self._interactive:
            self._print_between_turns()
            self._transport.print_between_turns = self._print_between_turns
        try:
            await asyncio.wait({typed, quitting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._transport.print_between_turns = None
        quitting.cancel()
        if typed.done():
            return typed.result()
        typed.cancel()
        return None
