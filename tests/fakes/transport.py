"""A recording Transport: what the user of a chat would see, message by message."""
from __future__ import annotations

from dataclasses import dataclass, field

from handlers.richtext import RichText, utf16_len
from handlers.transport import DraftsUnsupported
from integrations.clock import Clock
from integrations.errors import BadRequest


@dataclass
class Call:
    kind: str
    chat_id: int
    at: float
    text: RichText | None = None
    message_id: int | None = None


@dataclass
class RecordingTransport:
    clock: Clock
    drafts_supported: bool = True
    name: str = "recording"
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, dict[int, RichText]] = field(default_factory=dict)
    failures: dict[str, list[Exception]] = field(default_factory=dict)
    _next_id: int = 100
    # Like Telegram's random_id: a keyed send repeated returns the message the first one made.
    _keyed: dict[tuple[int, int], int] = field(default_factory=dict)

    def fail_next(self, kind: str, error: Exception) -> None:
        self.failures.setdefault(kind, []).append(error)

    def _maybe_fail(self, kind: str) -> None:
        queue = self.failures.get(kind)
        if queue:
            raise queue.pop(0)

    async def send(
        self, chat_id: int, text: RichText, *, reply_to: int | None = None, preview: bool = False, key: int | None = None
    ) -> int:
        if key is not None and (chat_id, key) in self._keyed:
            return self._keyed[(chat_id, key)]
        self._maybe_fail("send")
        _check(text)
        self._next_id += 1
        self.messages.setdefault(chat_id, {})[self._next_id] = text
        self.calls.append(Call("send", chat_id, self.clock.monotonic(), text, self._next_id))
        if key is not None:
            self._keyed[(chat_id, key)] = self._next_id
        return self._next_id

    async def edit(self, chat_id: int, message_id: int, text: RichText, *, preview: bool = False) -> None:
        self._maybe_fail("edit")
        _check(text)
        if message_id not in self.messages.get(chat_id, {}):
            raise BadRequest(f"message {message_id} does not exist in chat {chat_id}")
        self.messages[chat_id][message_id] = text
        self.calls.append(Call("edit", chat_id, self.clock.monotonic(), text, message_id))

    async def draft(self, chat_id: int, draft_id: int, text: RichText) -> None:
        if not self.drafts_supported:
            raise DraftsUnsupported("no drafts here")
        self._maybe_fail("draft")
        self.calls.append(Call("draft", chat_id, self.clock.monotonic(), text))

    async def typing(self, chat_id: int) -> None:
        self._maybe_fail("typing")
        self.calls.append(Call("typing", chat_id, self.clock.monotonic()))

    async def delete(self, chat_id: int, message_ids) -> None:
        self._maybe_fail("delete")
        for message_id in message_ids:
            self.messages.get(chat_id, {}).pop(message_id, None)
            self.calls.append(Call("delete", chat_id, self.clock.monotonic(), None, message_id))

    def texts(self, chat_id: int) -> list[str]:
        return [m.text for m in self.messages.get(chat_id, {}).values()]

    def kinds(self, chat_id: int) -> list[str]:
        return [c.kind for c in self.calls if c.chat_id == chat_id]


def _check(text: RichText) -> None:
    if not text.text.strip():
        raise BadRequest("message text is empty")
    if utf16_len(text.text) > 4096:
        raise BadRequest("message is too long")
