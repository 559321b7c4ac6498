"""Server-sent events read from the lines of a streamed HTTP body.

The chat adapters read a stream's events here rather than through the SDK's typed chunks: the
openai SDK builds a pydantic model for every chunk (~90 µs each, forty times the JSON parse),
which at 1,000 conversations was a quarter of the bot's CPU. The request itself, its headers,
retries and error responses still go through the SDK.

Interpretation as in the WHATWG spec (and the SDKs' own decoders): a blank line dispatches the
event gathered so far, `data` lines are joined with newlines, a line starting with ":" is a
comment, one space after the colon is dropped, other fields are ignored. An event still being
gathered when the body ends is dropped, as the spec says: a stream cut mid-event shows up as a
reply that never finished, not as half an event.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator


@dataclass(frozen=True, slots=True)
class ServerEvent:
    name: str | None  # the `event:` field; None for the spec's default, "message"
    data: str


async def server_events(reads: AsyncIterable[bytes]) -> AsyncIterator[ServerEvent]:
    """The events of a body read as `reads` (httpx's `aiter_bytes`), each as soon as its blank
    line has arrived. Lines end only at CR, LF or CRLF: not at the other breaks that Python's
    `splitlines` (and so httpx's `aiter_lines`) also splits at, such as U+2028 or U+0085, which
    JSON may carry unescaped inside a string."""
    event = _Gathered()
    buffer = b""
    async for read in reads:
        buffer += read
        held = b""
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
            if buffer.endswith(b"\r"):  # perhaps the first half of a CRLF cut by the read
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r", b"\n")
        *lines, buffer = buffer.split(b"\n")
        buffer += held
        for line in lines:
            if (dispatched := event.take(line)) is not None:
                yield dispatched
    if buffer.endswith(b"\r") and (dispatched := event.take(buffer[:-1])) is not None:
        yield dispatched  # the body's last line, ended by a CR


class _Gathered:
    """The event being gathered, line by line."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.data: list[str] = []

    def take(self, line: bytes) -> ServerEvent | None:
        """One line (without its end); the event it dispatches, if it is the blank line."""
        if not line:
            if not self.data and not self.name:
                return None
            event = ServerEvent(self.name, "\n".join(self.data))
            self.name, self.data = None, []
            return event
        field, _, value = line.decode("utf-8").partition(":")
        if not field:
            return None  # a comment (":" first), sent by some servers to keep the connection alive
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.name = value or None  # an empty type is the default one
        return None
