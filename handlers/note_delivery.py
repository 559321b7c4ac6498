"""Delivers queued notes to Notion exactly once, and tells each user once how their note ended.

One attempt on an outbox entry:
1. count the attempt in SQLite before calling Notion (so after a crash, the next attempt knows a
   page may already exist);
2. make sure the page exists: create it with the first batch of blocks, or, if an earlier attempt
   may have created it, find it by its idempotency key first; record the page and how many
   top-level blocks it holds;
3. append the remaining blocks batch by batch, recording progress after each batch (a resumed
   delivery counts the page's blocks, so a batch whose answer was lost is not appended twice);
4. mark the entry delivered.

Notion being down, slow or rate limited leaves the entry pending, due again after a backoff
(Retry-After when Notion gave one). A refusal of the note itself (`BadRequest`, e.g. a
validation error, or a "database" without a title property) marks it failed. A database
without the key property (which the bot could not add) still takes the note. Either
final state is told to the user exactly once: whoever flips `user_told` in SQLite sends it.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import AsyncIterator, Awaitable, Callable, Literal

from integrations.clock import Clock
from integrations.errors import AuthFailed, BadRequest, RateLimited, UpstreamError
from integrations.notion_blocks import Block, markdown_to_blocks, request_batches
from integrations.notion_notes import NotionNotes
from integrations.notion_schema import NoteContent
from state.outbox import Outbox, OutboxEntry

logger = logging.getLogger(__name__)

Status = Literal["delivered", "queued", "failed"]


@dataclass(frozen=True)
class Outcome:
    """How an entry stands after an attempt (or, if none was made, as it was found)."""

    status: Status
    entry: OutboxEntry
    error: UpstreamError | None = None


Notify = Callable[[OutboxEntry, str], Awaitable[None]]
Announce = Callable[[Outcome], Awaitable[None]]


@dataclass(frozen=True)
class DeliveryPolicy:
    """When a pending note is tried again, when it is given up, and how long finished ones are kept."""

    first: float = 15.0
    cap: float = 600.0
    # A refused token needs the operator; try now and then rather than often.
    auth_wait: float = 900.0
    # Past this age a note that still cannot be delivered is given up, and the user told.
    give_up_after: float = 86_400.0
    # Finished notes are kept this long, so a message Telegram delivers again is recognised.
    keep_finished: float = 30 * 86_400.0

    def delay(self, attempts: int, error: UpstreamError) -> float:
        if isinstance(error, AuthFailed):
            return self.auth_wait
        if error.retry_after is not None:
            return max(0.0, error.retry_after)
        return min(self.cap, self.first * 2.0 ** max(0, attempts - 1))


def outcome_text(outcome: Outcome) -> str:
    """What the user reads about their note."""
    entry = outcome.entry
    if outcome.status == "delivered":
        return f"Saved to Notion: {entry.page_url}"
    if outcome.status == "failed":
        title = NoteContent.from_payload(entry.payload).title
        reason = entry.last_error or "Notion refused it"
        partly = f"\nPart of it was saved: {entry.page_url}" if entry.page_url else ""
        return f"Couldn't save your note “{title}” to Notion. {reason}{partly}"
    promise = "I'll send the link once it's saved."
    if isinstance(outcome.error, RateLimited):
        return f"Notion asked me to slow down, so your note is queued. {promise}"
    if isinstance(outcome.error, AuthFailed):
        return (
            "Notion refused the bot's token, so your note is queued until the operator fixes "
            f"NOTION_TOKEN. {promise}"
        )
    return f"Notion is unreachable right now, so your note is queued. {promise}"


class NoteDelivery:
    def __init__(
        self,
        outbox: Outbox,
        notes: NotionNotes,
        clock: Clock,
        notify: Notify,
        *,
        policy: DeliveryPolicy = DeliveryPolicy(),
        idle_poll: float = 60.0,
        min_idle: float = 1.0,
    ) -> None:
        self._outbox = outbox
        self._notes = notes
        self._clock = clock
        self._notify = notify
        self._policy = policy
        self._idle_poll = idle_poll
        self._min_idle = min_idle
        self._claimed: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._stopped.set()

    async def deliver(self, entry_id: int, *, announce: Announce | None = None) -> Outcome | None:
        """Make one attempt now and tell the user how it went; None if it is being delivered already.

        `announce` replaces the default notice (a message to the note's chat) and also hears about
        notes left queued; it is called only for final outcomes nobody announced before.
        """
        outcome: Outcome | None = None
        async with self._holding(entry_id) as held:
            # Read once held: another instance may have delivered it meanwhile.
            entry = await self._outbox.get(entry_id) if held else None
            if entry is not None:
                outcome = await self._attempt(entry) if entry.status == "pending" else _as_found(entry)
                await self._announce(outcome, announce)
        return outcome

    async def deliver_due(self, *, include_later: bool = False) -> int:
        """Deliver every note that is due (or every pending one); returns how many landed.

        Also tells users about notes that ended while nobody could tell them (say, a crash).
        """
        for entry in await self._outbox.untold():
            async with self._holding(entry.id) as held:
                if held:
                    await self._announce(_as_found(entry), None)
        delivered = 0
        for entry in await self._outbox.due(include_later=include_later):
            if self._stopping:
                break
            outcome = await self.deliver(entry.id)
            delivered += outcome is not None and outcome.status == "delivered"
        return delivered

    async def run(self) -> None:
        """Deliver until `stop()`: everything pending at once, then whatever falls due."""
        self._stopping = False
        self._stopped.clear()
        try:
            include_later = True  # a restart: every pending note gets a fresh try
            while not self._stopping:
                try:
                    await self.deliver_due(include_later=include_later)
                    await self._outbox.prune(timedelta(seconds=self._policy.keep_finished))
                except Exception:
                    logger.exception("delivering queued notes failed; trying again later")
                include_later = False
                await self._idle()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop after the attempt in progress, if any (its progress is stored either way)."""
        self._stopping = True
        self._wake.set()
        await self._stopped.wait()

    def wake(self) -> None:
        self._wake.set()

    @asynccontextmanager
    async def _holding(self, entry_id: int) -> AsyncIterator[bool]:
        """Work on the entry alone (True), in this process and among instances (its claim in the
        outbox, kept alive meanwhile); False while another task or instance works on it."""
        if entry_id in self._claimed:
            yield False
            return
        self._claimed.add(entry_id)
        keeping: asyncio.Task[None] | None = None
        try:
            if not await self._outbox.claim(entry_id):
                yield False
                return
            keeping = asyncio.ensure_future(self._keep_claim(entry_id))
            try:
                yield True
            finally:
                keeping.cancel()
                await asyncio.gather(keeping, return_exceptions=True)
                try:
                    await self._outbox.release(entry_id)
                except Exception:  # it expires by itself
                    logger.warning("could not give up the claim on note %s; it expires in %.0f s", entry_id, self._outbox.hold_seconds)
        finally:
            self._claimed.discard(entry_id)

    async def _keep_claim(self, entry_id: int) -> None:
        while True:
            await self._clock.sleep(self._outbox.hold_seconds / 3)
            try:
                await self._outbox.claim(entry_id)
            except Exception as error:  # kept at the next round, or it expires and the note is tried again
                logger.warning("could not keep the claim on note %s: %s", entry_id, error)

    async def _attempt(self, entry: OutboxEntry) -> Outcome:
        content = NoteContent.from_payload(entry.payload)
        await self._outbox.begin_attempt(entry.id)
        try:
            blocks = markdown_to_blocks(content.body)
            page_id, done = await self._ensure_page(entry, content, blocks)
            for batch in request_batches(blocks[done:]):
                await self._notes.append(page_id, batch, blocks_before=done)
                done += len(batch)
                await self._outbox.record_progress(entry.id, done)
            await self._outbox.mark_delivered(entry.id)
            logger.info("note %s delivered to Notion", entry.id)
            return await self._outcome("delivered", entry)
        except BadRequest as error:
            logger.warning("note %s refused by Notion: %s", entry.id, error)
            await self._outbox.mark_failed(entry.id, error.message)
            return await self._outcome("failed", entry, error)
        except UpstreamError as error:
            return await self._retry_later(entry, error)
        except Exception as error:
            logger.exception("note %s: delivery failed unexpectedly", entry.id)
            return await self._retry_later(entry, UpstreamError(f"internal error ({type(error).__name__})"))

    async def _ensure_page(self, entry: OutboxEntry, content: NoteContent, blocks: list[Block]) -> tuple[str, int]:
        """The page's id and how many of `blocks` it already holds."""
        if entry.page_id is not None:
            done = entry.blocks_done
            if done < len(blocks):
                # The last append may have landed without us hearing of it.
                done = max(done, min(len(blocks), await self._notes.count_children(entry.page_id)))
            return entry.page_id, done
        first = request_batches(blocks)[0] if blocks else []
        # Counted before this attempt: any earlier attempt may have created the page.
        look_first = entry.attempts > 0
        schema = await self._notes.schema()
        try:
            schema.require_usable()
            page, created = await self._notes.create(
                schema, entry.key, schema.page_properties(content, entry.key), first, look_first=look_first
            )
        except BadRequest:
            # The cached schema may be out of date (a property renamed or added since): look again once.
            fresh = await self._notes.schema(refresh=True)
            if fresh == schema:
                raise
            fresh.require_usable()
            page, created = await self._notes.create(
                fresh, entry.key, fresh.page_properties(content, entry.key), first, look_first=True
            )
        done = len(first) if created else min(len(blocks), await self._notes.count_children(page.id))
        await self._outbox.record_page(entry.id, page.id, page.url, done)
        return page.id, done

    async def _retry_later(self, entry: OutboxEntry, error: UpstreamError) -> Outcome:
        if self._outbox.age_of(entry) >= timedelta(seconds=self._policy.give_up_after):
            hours = self._policy.give_up_after / 3600
            reason = f"Notion could not take it for {hours:g} hours, so I gave up (last error: {error})."
            await self._outbox.mark_failed(entry.id, reason)
            return await self._outcome("failed", entry, error)
        delay = self._policy.delay(entry.attempts + 1, error)
        logger.info("note %s not delivered (%s); next try in %.0f s", entry.id, error, delay)
        await self._outbox.schedule_retry(entry.id, str(error), delay)
        return await self._outcome("queued", entry, error)

    async def _outcome(self, status: Status, entry: OutboxEntry, error: UpstreamError | None = None) -> Outcome:
        fresh = await self._outbox.get(entry.id)
        return Outcome(status, fresh or entry, error)

    async def _announce(self, outcome: Outcome, announce: Announce | None) -> None:
        if outcome.status == "queued":
            if announce is not None:
                await announce(outcome)
            return
        # Told at least once: marked only after the notice went out (the caller holds the entry,
        # so nobody else in this process tells it meanwhile). A notice that could not be sent, or a
        # crash before the mark, means it is sent again later, never that the user hears nothing.
        if await self._outbox.was_told(outcome.entry.id):
            return
        try:
            if announce is not None:
                await announce(outcome)
            else:
                await self._notify(outcome.entry, outcome_text(outcome))
        except Exception:
            logger.exception("could not tell chat %s about note %s; trying again later", outcome.entry.chat_id, outcome.entry.id)
            return
        await self._outbox.mark_told(outcome.entry.id)

    async def _idle(self) -> None:
        next_due = await self._outbox.next_due_at()
        delay = self._idle_poll
        if next_due is not None:
            delay = min(delay, (next_due - self._clock.now()).total_seconds())
        delay = max(self._min_idle, delay)
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()
            self._wake.clear()


def _as_found(entry: OutboxEntry) -> Outcome:
    status: Status = "queued" if entry.status == "pending" else entry.status
    return Outcome(status, entry)
