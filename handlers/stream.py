"""Shows one reply while it is generated, and makes sure its final text lands.

A reply is a pump that always sends the *latest* text: while a call to the transport is blocked
(pacing, a flood wait), newer text simply replaces the pending one, so a paused chat never
builds a backlog of stale edits. In private chats the preview is Telegram's native draft; where
drafts are refused, the reply becomes one message edited at most once per `edit_interval`.
The final text is always delivered as real messages, split at 4096 characters. Rendering follows
the text as it grows: each completed Markdown block is rendered once, for the previews and the
final text alike, and no preview is rendered that the transport would not take.

A stream may take over messages an earlier attempt showed (`earlier_ids`, after a restart): it
edits them instead of sending new ones, and deletes those the final text no longer needs, so no
stale partial reply is left beside the answer. `on_sent` hears of every message it sends, so the
caller can record them. `close` stops its background work whatever happened.

Sends carry idempotency keys (`send_key`, by part) when the caller has them: a process killed
after Telegram took a send but before `on_sent` recorded it leaves no second copy, because the
attempt after the restart repeats the keyed send and Telegram answers with the message it made
then. Such a message may show the earlier attempt's text, so a `resumed` stream sets the text it
wants on every message it sends.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from handlers.render import MarkdownStream, render_markdown
from handlers.richtext import RichText
from handlers.split import SplitSoFar, split_rich_text
from handlers.transport import DraftsUnsupported, PreviewGate, Transport
from integrations.clock import Clock
from integrations.errors import BadRequest, PreviewDeferred, RateLimited, UpstreamError

log = logging.getLogger(__name__)

TELEGRAM_TEXT_LIMIT = 4096
# Characters of text between two renderings of the completed blocks: what the final text may
# have left to render after the model's last word (about 0.1 ms of rendering for 256).
RENDER_AHEAD = 256


@dataclass(frozen=True)
class StreamPacing:
    edit_interval: float = 1.0
    draft_interval: float = 1.0
    typing_interval: float = 4.5
    final_attempts: int = 6
    final_backoff: float = 2.0


class ReplyStream:
    def __init__(
        self,
        transport: Transport,
        clock: Clock,
        chat_id: int,
        *,
        reply_to: int | None = None,
        use_drafts: bool = False,
        pacing: StreamPacing = StreamPacing(),
        render: Callable[[str], RichText] = render_markdown,
        draft_id: int | None = None,
        earlier_ids: Sequence[int] = (),
        on_sent: Callable[[int], Awaitable[None]] | None = None,
        send_key: Callable[[int], int] | None = None,
        resumed: bool = False,
    ) -> None:
        self._transport = transport
        self._clock = clock
        self._chat_id = chat_id
        self._reply_to = reply_to
        self._use_drafts = use_drafts
        self._pacing = pacing
        # Previews and the final text render only what changed since the last rendering
        # (MarkdownStream renders every version as render_markdown would: tests/unit/
        # test_render_stream.py); a preview splits only its last part again, and none is rendered
        # at all while the transport says it would not take it (`takes_preview`, if it has one).
        self._markdown = MarkdownStream() if render is render_markdown else None
        self._render_growing = self._markdown.render if self._markdown is not None else render
        self._prepared_at = 0  # the length of the text when the completed blocks were last rendered
        self._preview_parts = SplitSoFar(TELEGRAM_TEXT_LIMIT)
        self._takes_preview = transport.takes_preview if isinstance(transport, PreviewGate) else None
        self._draft_id = draft_id or random.SystemRandom().getrandbits(62) + 1
        self._latest = ""
        # Which version of the text the last preview showed, counted rather than kept: a thousand
        # replies in flight would otherwise each hold an older copy of their text.
        self._version = 0
        self._shown_version = 0
        self._changed = asyncio.Event()  # the pump's wake-up; the two below are only looked at
        self._first_text = False
        self._closed = False
        self._message_ids: list[int] = list(earlier_ids)
        # None: a message taken over from an earlier attempt, whose text is not known here.
        self._shown_parts: list[RichText | None] = [None] * len(self._message_ids)
        self._on_sent = on_sent
        self._send_key = send_key
        self._resumed = resumed
        self._last_call_at: float | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._typing_task: asyncio.Task[None] | None = None
        # Whether each background task is only waiting (for text, its pace, the next typing
        # action): stopping it then loses nothing, so it is cancelled instead of awaited.
        self._pump_waiting = False
        self._typing_waiting = False

    @property
    def message_ids(self) -> list[int]:
        return list(self._message_ids)

    def start(self) -> None:
        self._typing_task = asyncio.ensure_future(self._keep_typing())
        self._typing_task.add_done_callback(self._typing_ended)
        self._pump_task = asyncio.ensure_future(self._pump())

    def update(self, text: str) -> None:
        """The whole reply so far (Markdown). Never blocks.

        Every `RENDER_AHEAD` characters it renders the blocks completed so far, whether or not a
        preview shows them: the final text, right after the model's last word, then has at most
        about that much left to render."""
        if not text or text.isspace():
            return
        if text != self._latest:
            self._latest = text
            self._version += 1
        if self._markdown is not None and len(text) - self._prepared_at >= RENDER_AHEAD:
            # Counted from the last time, not from the completed blocks: a block that goes on
            # (a long code block) is then parsed again every RENDER_AHEAD characters, not per chunk.
            self._prepared_at = len(text)
            self._markdown.prepare(text)
        if not self._first_text:
            self._first_text = True
            self._stop_if_waiting(self._typing_task, self._typing_waiting)
        self._changed.set()

    async def finish(self, text: str) -> list[int]:
        """Deliver the final text; returns the ids of the messages that carry it.

        Calling it again after it was interrupted delivers only what had not landed yet."""
        self._closed = self._first_text = True
        self._changed.set()
        await self._stop_background()
        parts = split_rich_text(self._render_growing(text.strip()), TELEGRAM_TEXT_LIMIT) or [RichText.plain("…")]
        for index, part in enumerate(parts):
            if index < len(self._message_ids):
                if self._shown_parts[index] != part:
                    await self._deliver_final(functools.partial(self._edit, index, part))
            else:
                await self._deliver_final(functools.partial(self._send, part))
        await self._delete_unneeded(len(parts))
        return self.message_ids

    async def close(self) -> None:
        """Stop the typing indicator and the preview pump, whether or not `finish` ran."""
        self._closed = self._first_text = True
        for task in (self._typing_task, self._pump_task):
            if task is not None and not task.done():
                task.cancel()
        await self._stop_background(to_the_end=True)

    async def _stop_background(self, *, to_the_end: bool = False) -> None:
        """Wait for the call in flight (so the final edit cannot be overtaken by a stale preview).

        A task stopped while it only waited makes no call after its cancel, so the final text
        does not wait a turn of the loop for it to end; `close` waits for that too (`to_the_end`)."""
        stopped = [
            task
            for task, waiting in ((self._typing_task, self._typing_waiting), (self._pump_task, self._pump_waiting))
            if task is not None and waiting and not task.done()
        ]
        for task in stopped:
            task.cancel()
        tasks = [task for task in (self._typing_task, self._pump_task) if task is not None]
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # looked at, as gather would, so asyncio does not report it later
        running = [task for task in tasks if not task.done() and (to_the_end or task not in stopped)]
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    def _typing_ended(self, task: asyncio.Task[None]) -> None:
        """Let go of the typing task once it ended (at the first text, usually by a cancel): a
        cancelled task keeps its CancelledError, whose traceback keeps the task's frames."""
        if not task.cancelled():
            task.exception()  # looked at, as gather would, so asyncio does not report it later
        if self._typing_task is task:
            self._typing_task = None

    @staticmethod
    def _stop_if_waiting(task: asyncio.Task[None] | None, waiting: bool) -> None:
        if task is not None and waiting:
            task.cancel()

    async def _delete_unneeded(self, needed: int) -> None:
        """Messages of an earlier, longer attempt that the final text does not use."""
        extra = self._message_ids[needed:]
        if not extra:
            return
        try:
            await self._transport.delete(self._chat_id, extra)
        except UpstreamError as error:
            log.info("could not delete %d stale message(s) in chat %s: %s", len(extra), self._chat_id, error)
        del self._message_ids[needed:]
        del self._shown_parts[needed:]

    async def _keep_typing(self) -> None:
        # The first text, `finish` and `close` cancel it while it waits: no task per wait.
        while not self._first_text:
            try:
                await self._transport.typing(self._chat_id)
            except UpstreamError as error:
                log.debug("typing indicator failed: %s", error)
            if self._first_text:
                return
            self._typing_waiting = True
            try:
                await self._clock.sleep(self._pacing.typing_interval)
            finally:
                self._typing_waiting = False

    async def _pump(self) -> None:
        # `finish` wakes it (`_changed`), or cancels it while it waits for its pace.
        while not self._closed:
            self._pump_waiting = True
            try:
                await self._changed.wait()
                self._changed.clear()
                await self._wait_for_pace()
            finally:
                self._pump_waiting = False
            if self._closed:
                return
            text, version = self._latest, self._version
            if version == self._shown_version:
                continue
            try:
                if self._takes_preview is None or self._takes_preview(self._chat_id):
                    await self._show_preview(text)
                    self._shown_version = version
                # Else the transport is keeping capacity for final texts (or the chat is paused):
                # nothing is rendered, and newer text goes next turn.
            except PreviewDeferred:
                pass  # the same, said by the transport after the preview was rendered
            except UpstreamError as error:
                # A lost preview is harmless: the next update or the final text replaces it.
                log.info("preview update failed in chat %s: %s", self._chat_id, error)
            finally:
                self._last_call_at = self._clock.monotonic()

    async def _wait_for_pace(self) -> None:
        if self._last_call_at is None:
            return
        interval = self._pacing.draft_interval if self._use_drafts else self._pacing.edit_interval
        remaining = self._last_call_at + interval - self._clock.monotonic()
        if remaining > 0:
            await self._clock.sleep(remaining)

    async def _show_preview(self, text: str) -> None:
        parts = self._preview_parts.parts(self._render_growing(text))
        if not parts:
            return  # Markdown that shows no text (an empty heading): nothing to preview yet
        if self._use_drafts:
            try:
                await self._transport.draft(self._chat_id, self._draft_id, parts[-1])
                return
            except DraftsUnsupported:
                log.info("drafts unavailable in chat %s; streaming by edits", self._chat_id)
                self._use_drafts = False
            except BadRequest as error:
                log.info("draft refused in chat %s (%s); streaming by edits", self._chat_id, error)
                self._use_drafts = False
        for index, part in enumerate(parts):
            if index < len(self._message_ids):
                if self._shown_parts[index] != part:
                    await self._edit(index, part, preview=True)
            else:
                await self._send(part, preview=True)

    async def _send(self, part: RichText, *, preview: bool = False) -> None:
        reply_to = self._reply_to if not self._message_ids else None
        key = self._send_key(len(self._message_ids)) if self._send_key is not None else None
        shown = part
        try:
            message_id = await self._transport.send(self._chat_id, part, reply_to=reply_to, preview=preview, key=key)
        except BadRequest:
            # Telegram refused the formatting: the words matter more than the styling.
            shown = RichText.plain(part.text)
            message_id = await self._transport.send(self._chat_id, shown, reply_to=reply_to, preview=preview, key=key)
        known: RichText | None = part
        if key is not None and self._resumed:
            message_id, known = await self._made_current(message_id, shown, preview=preview)
        self._message_ids.append(message_id)
        self._shown_parts.append(known)
        if self._on_sent is not None:
            await self._on_sent(message_id)

    async def _edit(self, index: int, part: RichText, *, preview: bool = False) -> None:
        message_id = self._message_ids[index]
        try:
            try:
                await self._transport.edit(self._chat_id, message_id, part, preview=preview)
            except BadRequest:
                await self._transport.edit(self._chat_id, message_id, RichText.plain(part.text), preview=preview)
        except BadRequest:
            if self._shown_parts[index] is not None:
                raise
            # A message taken over from an earlier attempt is gone (deleted, too old): send anew.
            message_id = await self._send_instead(part, preview=preview)
            self._message_ids[index] = message_id
        self._shown_parts[index] = part

    async def _made_current(self, message_id: int, part: RichText, *, preview: bool) -> tuple[int, RichText | None]:
        """A keyed send of a resumed reply may have returned the earlier attempt's message: give it
        this text (unchanged text costs nothing), or, if that message is gone, send a new one.
        Returns the message and the text it is known to show (None: not known, the final text
        must be set again)."""
        try:
            await self._transport.edit(self._chat_id, message_id, part, preview=preview)
            return message_id, part
        except PreviewDeferred:
            return message_id, None
        except BadRequest:
            return await self._transport.send(self._chat_id, part, preview=preview), part

    async def _send_instead(self, part: RichText, *, preview: bool) -> int:
        message_id = await self._transport.send(self._chat_id, part, preview=preview)
        if self._on_sent is not None:
            await self._on_sent(message_id)
        return message_id

    async def _deliver_final(self, call: Callable[[], Awaitable[None]]) -> None:
        delay = self._pacing.final_backoff
        for attempt in range(1, self._pacing.final_attempts + 1):
            try:
                await call()
                return
            except RateLimited as error:
                # Without a governor in front, honour Telegram's wait here; the final text must land.
                await self._clock.sleep(error.retry_after or delay)
            except UpstreamError as error:
                if not error.retryable or attempt == self._pacing.final_attempts:
                    log.warning("final reply to chat %s not delivered: %s", self._chat_id, error)
                    raise
                await self._clock.sleep(delay)
                delay *= 2

