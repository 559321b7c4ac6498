"""The console transport: the same router and handlers in a terminal.

In a terminal the reply streams live (each edit prints what it added). With stdin not a
terminal, it reads one message per line, waits for each reply to finish, and prints every
finished reply followed by a blank line, so it can be scripted.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Awaitable, Callable, TextIO

from handlers.richtext import RichText
from handlers.transport import DraftsUnsupported, IncomingMessage

# The local operator: a fixed private chat that Telegram never uses.
CONSOLE_USER_ID = 1


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

    async def send(self, chat_id: int, text: RichText, *, reply_to: int | None = None, preview: bool = False) -> int:
        message_id = self._next_id
        self._next_id += 1
        self._messages[message_id] = text
        self._order.append(message_id)
        if self._live:
            if len(self._order) > 1:
                self._write("\n")
            self._write(text.text)
            self._printed[message_id] = text.text
        return message_id

    async def edit(self, chat_id: int, message_id: int, text: RichText, *, preview: bool = False) -> None:
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

    def take_new_replies(self) -> list[str]:
        """Final texts of the messages sent since the last call."""
        new = self._order[self._reported:]
        self._reported = len(self._order)
        return [self._messages[i].text for i in new]

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


async def read_line(stream: TextIO) -> str | None:
    line = await asyncio.get_running_loop().run_in_executor(None, stream.readline)
    return line if line else None


async def run_console(
    handle: Callable[[IncomingMessage], Awaitable[None]],
    wait_idle: Callable[[int], Awaitable[None]],
    transport: ConsoleTransport,
    *,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    interactive: bool,
    banner: str = "",
) -> int:
    message_id = 0
    if interactive and banner:
        stdout.write(banner + "\n\n")
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = await read_line(stdin)
        if line is None:
            if interactive:
                stdout.write("\n")
            return 0
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        message_id += 1
        await handle(IncomingMessage(CONSOLE_USER_ID, CONSOLE_USER_ID, message_id, text, True, True, "operator"))
        await wait_idle(CONSOLE_USER_ID)
        replies = transport.take_new_replies()
        if interactive:
            stdout.write("\n\n")
        else:
            for reply in replies:
                stdout.write(reply + "\n\n")
        stdout.flush()
