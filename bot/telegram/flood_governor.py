"""Paces every Telegram call per chat and overall, and turns flood waits into pauses of one chat.

Telegram publishes no exact limits; the guidance is about one message a second in a chat, twenty a
minute in a group and thirty a second for the whole bot, edits and drafts included. The governor
keeps under that pace so flood waits stay rare. When one comes anyway it pauses exactly the chat
that got it for exactly the time Telegram asked, then repeats the call: a reply's sends and final
edits must land. Flood waits in several chats at once are the bot's overall limit: then every chat
waits (`bot_pause.BotPause`). Typing indicators are worthless once late, so instead of waiting they
are dropped while their chat is paused, or while the budget is down to the share kept for final
texts. Alone, this instance's overall window is the bot's whole pace; several instances share it
through Redis (`shared_flood`, `shared_pace`), through the hooks `_choose_pace`, `_bot_slot`,
`_bot_has_room` and `_typing_went_out`.

Telegram counts a call when it lands, at some moment between our sending it and its answer, and
that moment is not known here. So every pace is kept as the server may count it: a call takes its
place in a budget when it is let through, keeps it while in flight, and gives it back only one
period after its answer came (the next call in its chat waits one interval from that answer too).
Whatever the latency, no two calls can then land closer than the limits allow, and a round trip of
headroom is left for free: each call's own, measured rather than guessed.

Each chat is a FIFO with one call in flight (an asyncio.Lock hands itself over in arrival order).
Callers keep their own latest text while they wait, so no stale edit piles up here. Every wait ends
at a known moment slept for on the injected clock (the chat's next slot, a pause's end, the oldest
answered call leaving a window) or at an answer: nothing polls.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, NoReturn, Protocol, Sequence, TypeVar, overload

from bot.telegram.bot_pause import BotPause
from integrations.clock import Clock
from integrations.errors import PreviewDeferred, RateLimited
from integrations.resilience.snapshots import ChatPace, GovernorSnapshot

if TYPE_CHECKING:
    from handlers.richtext import RichText
    from handlers.transport import Transport
    from integrations.resilience.redis_link import RedisLink

log = logging.getLogger(__name__)

T = TypeVar("T")
CallKind = Literal["send", "edit", "draft", "typing"]

# Float rounding on a clock that wakes at `now + (deadline - now)` must not cost a second wait.
_TOLERANCE = 1e-6


@dataclass
class _ChatScope:
    interval: float
    window: "_SlidingWindow | None" = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_slot: float = float("-inf")
    paused_until: float = float("-inf")
    calls: int = 0
    flood_waits: int = 0
    users: int = 0


class _SlidingWindow:
    """At most `limit` calls in any `period` seconds as the server counts them, whatever the latency.

    A call holds its place from the moment it is let through (`acquire`) until `period` after it
    ended (`release`): while in flight it may land at any moment, and once answered the server may
    still be counting it. Waiters are let through in arrival order as the oldest answered calls
    leave the window, each at a moment known in advance.
    """

    def __init__(self, clock: Clock, limit: int, period: float = 1.0) -> None:
        self._clock = clock
        self._limit = limit
        self._period = period
        self._in_flight = 0
        self._ended: deque[float] = deque()  # when each answered call still counted ended, oldest first
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        """Take a place, after everyone who asked before; `release` it once the call has ended."""
        if not self._waiters and self._counted() < self._limit:
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake_when_a_place_frees()
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():
                self.release(used=False)  # let through just as it was cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, *, used: bool = True) -> None:
        """The call has ended now; one that never started (`used=False`) frees its place at once."""
        self._in_flight -= 1
        if used:
            self._ended.append(self._clock.monotonic())
        self._let_through()
        self._wake_when_a_place_frees()

    @property
    def limit(self) -> int:
        return self._limit

    def resize(self, limit: int) -> None:
        """Allow `limit` calls a period from now on (calls already counted stay counted)."""
        if limit != self._limit:
            self._limit = limit
            self._let_through()

    def free_now(self) -> int:
        """Calls that could start now without waiting (calls waiting for a place count as used)."""
        return self._limit - self._counted() - len(self._waiters)

    def idle(self) -> bool:
        """Nothing counted and nobody waiting: forgetting this window loses nothing."""
        return self._counted() == 0 and not self._waiters

    def _counted(self) -> int:
        gone = self._clock.monotonic() - self._period + _TOLERANCE
        while self._ended and self._ended[0] <= gone:
            self._ended.popleft()
        return self._in_flight + len(self._ended)

    def _let_through(self) -> None:
        while self._waiters and self._counted() < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)

    def _wake_when_a_place_frees(self) -> None:
        # Places free only as answered calls leave the window: the oldest one says when. With every
        # place in flight there is no such moment yet; the next `release` sets one.
        if self._waiters and self._ended and self._timer is None:
            self._timer = asyncio.ensure_future(self._let_through_at(self._ended[0] + self._period))

    async def _let_through_at(self, moment: float) -> None:
        delay = moment - self._clock.monotonic()
        try:
            if delay > _TOLERANCE:
                await self._clock.sleep(delay)
        finally:
            self._timer = None
        self._let_through()
        self._wake_when_a_place_frees()


class FloodGovernor:
    def __init__(
        self,
        clock: Clock,
        *,
        private_interval: float = 1.0,
        group_interval: float = 1.0,
        group_per_minute: int = 20,
        global_per_second: int = 30,
        preview_reserve: float = 0.2,
        max_flood_waits: int = 5,
        prune_every: float = 30.0,
    ) -> None:
        self._clock = clock
        self._private_interval = private_interval
        self._group_interval = group_interval
        self._group_per_minute = group_per_minute
        self._global = _SlidingWindow(clock, global_per_second)
        # Previews may not use the last share of any budget: it is kept for final texts, so a
        # reply's end never queues behind other replies' previews.
        self._preview_reserve = preview_reserve
        self._group_reserve = max(1, round(group_per_minute * preview_reserve))
        # A call flood-waited this many times in a row is given back to the caller (still paused).
        self._max_flood_waits = max_flood_waits
        self._prune_every = prune_every
        self._last_prune = clock.monotonic()
        self._chats: dict[int, _ChatScope] = {}
        self._bot = BotPause()
        self._calls = 0
        self._flood_waits = 0
        self._typing_dropped = 0
        self._previews_deferred = 0

    @overload
    async def run(
        self,
        chat_id: int,
        is_private: bool,
        call: Callable[[], Awaitable[T]],
        kind: Literal["send", "edit", "draft"] = "send",
        *,
        preview: bool = False,
    ) -> T: ...

    @overload
    async def run(
        self, chat_id: int, is_private: bool, call: Callable[[], Awaitable[Any]], kind: Literal["typing"]
    ) -> None: ...

    async def run(
        self,
        chat_id: int,
        is_private: bool,
        call: Callable[[], Awaitable[Any]],
        kind: CallKind = "send",
        *,
        preview: bool = False,
    ) -> Any:
        """Make `call` at this chat's pace; on a flood wait pause the chat, then make it again.

        Typing calls neither wait for the chat nor take its pace, and are dropped while it is paused
        or the global budget has no room beyond the share kept for final texts.
        A `preview` is not repeated after a flood wait, and is deferred (`PreviewDeferred`) rather
        than eat into the share of the budgets kept for final texts.
        """
        self._maybe_prune()
        self._choose_pace()
        scope = self._scope(chat_id, is_private)
        scope.users += 1
        try:
            await self._follow_pause(chat_id, scope, kind)
            if kind == "typing":
                return await self._run_typing(chat_id, scope, call)
            async with scope.lock:
                return await self._run_paced(chat_id, scope, call, kind, preview)
        finally:
            scope.users -= 1

    def _choose_pace(self) -> None:
        """Set the overall pace this instance keeps: all of it here (no other instance shares it)."""

    async def _follow_pause(self, chat_id: int, scope: _ChatScope, kind: CallKind) -> None:
        """Take on a pause this chat was given elsewhere: nothing here (one instance knows them all)."""

    async def _bot_slot(self, chat_id: int, scope: _ChatScope, preview: bool) -> bool:
        """Wait for the bot's overall slot, shared with other instances: here the window is the
        whole pace. False to start over (a pause was found meanwhile)."""
        return True

    def _bot_has_room(self) -> bool:
        """Whether the bot's overall pace has room beyond this instance's window: always, alone."""
        return True

    def _typing_went_out(self) -> None:
        """A typing call was made outside any slot: nobody else to tell, alone."""

    def takes_preview(self, chat_id: int) -> bool:
        """Whether a preview in this chat would go out now rather than be deferred or held by a
        pause: a cheap check, no call is made, so a caller can skip rendering one that would not
        be taken. A no counts as a deferred preview."""
        scope = self._chats.get(chat_id)
        if self._has_headroom(scope.window if scope is not None else None) and self._bot_has_room() and not (
            self._is_paused(scope) if scope is not None else self._bot_paused()
        ):
            return True
        self._previews_deferred += 1
        return False

    def snapshot(self) -> GovernorSnapshot:
        self._prune()
        now = self._clock.monotonic()
        chats = {
            chat_id: ChatPace(
                paused_for=max(0.0, scope.paused_until - now),
                calls=scope.calls,
                flood_waits=scope.flood_waits,
                waiting=scope.users,
            )
            for chat_id, scope in self._chats.items()
        }
        return GovernorSnapshot(
            chats,
            self._calls,
            self._flood_waits,
            self._typing_dropped,
            self._previews_deferred,
            bot_paused_for=self._bot.left(now),
            bot_pauses=self._bot.count,
        )

    def pause_bot(self, seconds: float, why: str) -> None:
        """Hold every chat for `seconds`: a flood wait of the bot as a whole (its overall limit, or a
        call tied to no chat)."""
        self._bot.count += 1
        if self._bot.hold(self._clock.monotonic() + seconds):
            log.warning("Telegram: the whole bot paused for %g s, every chat waits (%s)", seconds, why)
            self._bot_paused_by_us(seconds)

    def _bot_paused_by_us(self, seconds: float) -> None:
        """A bot-wide pause taken here: nobody else to tell (one instance; see shared_flood)."""

    async def _run_paced(
        self, chat_id: int, scope: _ChatScope, call: Callable[[], Awaitable[T]], kind: str, preview: bool
    ) -> T:
        floods = 0
        while True:
            await self._sleep_until(max(scope.next_slot, scope.paused_until, self._bot.until))
            if preview and not (self._has_headroom(scope.window) and self._bot_has_room()):
                self._defer_preview(scope)
            windows = (self._global,) if scope.window is None else (scope.window, self._global)
            await _acquire_all(windows)
            go = False
            try:
                go = not self._is_paused(scope) and await self._bot_slot(chat_id, scope, preview)
            finally:
                if not go:
                    for window in windows:
                        window.release(used=False)
            if not go:
                continue  # a flood wait (here, on typing, or another instance's) came while this one waited
            self._count_call(scope)
            try:
                return await self._make(call, windows, scope)
            except RateLimited as error:
                floods += 1
                self._pause(chat_id, scope, error, kind)
                if preview or floods >= self._max_flood_waits:
                    raise

    def _defer_preview(self, scope: _ChatScope) -> NoReturn:
        self._previews_deferred += 1
        raise PreviewDeferred("busy: preview deferred", upstream="telegram", retry_after=scope.interval)

    async def _run_typing(self, chat_id: int, scope: _ChatScope, call: Callable[[], Awaitable[Any]]) -> None:
        if self._is_paused(scope) or not self._has_headroom(None) or not self._bot_has_room():
            self._typing_dropped += 1
            return None
        await self._global.acquire()  # at once: there is room, and nobody is waiting for it
        self._typing_went_out()
        await self._make_typing(chat_id, scope, call)
        return None

    async def _make_typing(self, chat_id: int, scope: _ChatScope, call: Callable[[], Awaitable[Any]]) -> None:
        """Show typing with the global place already taken; a flood wait pauses the chat, nothing is repeated."""
        self._count_call(scope)
        try:
            await self._make(call, (self._global,), None)
        except RateLimited as error:
            self._pause(chat_id, scope, error, "typing")
            self._typing_dropped += 1

    async def _make(
        self, call: Callable[[], Awaitable[T]], windows: Sequence[_SlidingWindow], scope: _ChatScope | None
    ) -> T:
        """Make the call; the places it took, and its chat's pace, run on from when it has ended."""
        try:
            return await call()
        finally:
            if scope is not None:
                scope.next_slot = self._clock.monotonic() + scope.interval
            for window in windows:
                window.release()

    def _has_headroom(self, chat_window: _SlidingWindow | None) -> bool:
        if self._global.free_now() <= max(1, round(self._global.limit * self._preview_reserve)):
            return False
        return chat_window is None or chat_window.free_now() > self._group_reserve

    def _scope(self, chat_id: int, is_private: bool) -> _ChatScope:
        scope = self._chats.get(chat_id)
        if scope is None:
            if is_private:
                scope = _ChatScope(self._private_interval)
            else:
                scope = _ChatScope(self._group_interval, _SlidingWindow(self._clock, self._group_per_minute, 60.0))
            self._chats[chat_id] = scope
        return scope

    def _pause(self, chat_id: int, scope: _ChatScope, error: RateLimited, kind: str) -> None:
        # Telethon turns FLOOD_WAIT_0 into 1 s; do the same for a wait we were not told.
        seconds = error.retry_after if error.retry_after is not None and error.retry_after > 0 else 1.0
        scope.paused_until = max(scope.paused_until, self._clock.monotonic() + seconds)
        scope.flood_waits += 1
        self._flood_waits += 1
        log.info("chat %s paused for %g s: flood wait on %s", chat_id, seconds, kind)
        if self._bot.chat_flooded(chat_id, self._clock.monotonic()):
            self.pause_bot(seconds, "flood waits in several chats at once: Telegram's overall limit for the bot")

    def _count_call(self, scope: _ChatScope) -> None:
        scope.calls += 1
        self._calls += 1

    def _is_paused(self, scope: _ChatScope) -> bool:
        return max(scope.paused_until, self._bot.until) - self._clock.monotonic() > _TOLERANCE

    def _bot_paused(self) -> bool:
        return self._bot.until - self._clock.monotonic() > _TOLERANCE

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - self._clock.monotonic()
        if delay > _TOLERANCE:
            await self._clock.sleep(delay)

    def _maybe_prune(self) -> None:
        if self._clock.monotonic() - self._last_prune >= self._prune_every:
            self._prune()

    def _prune(self) -> None:
        """Forget chats with no caller, no pause and no pace left to keep (a group's minute included)."""
        now = self._clock.monotonic()
        self._last_prune = now
        idle = [
            chat_id
            for chat_id, scope in self._chats.items()
            if scope.users == 0
            and scope.paused_until <= now
            and scope.next_slot <= now
            and (scope.window is None or scope.window.idle())
        ]
        for chat_id in idle:
            del self._chats[chat_id]


async def _acquire_all(windows: Sequence[_SlidingWindow]) -> None:
    """A place in every window, in order; none kept if the wait is cancelled halfway."""
    taken: list[_SlidingWindow] = []
    try:
        for window in windows:
            await window.acquire()
            taken.append(window)
    except BaseException:
        for window in taken:
            window.release(used=False)
        raise


class GovernedTransport:
    """A Transport whose every call goes through the flood governor (positive chat ids are users)."""

    def __init__(self, inner: Transport, governor: FloodGovernor) -> None:
        self.name = inner.name
        self._inner = inner
        self._governor = governor

    async def send(
        self, chat_id: int, text: RichText, *, reply_to: int | None = None, preview: bool = False, key: int | None = None
    ) -> int:
        return await self._governor.run(
            chat_id, chat_id > 0, lambda: self._inner.send(chat_id, text, reply_to=reply_to, key=key), "send", preview=preview
        )

    async def edit(self, chat_id: int, message_id: int, text: RichText, *, preview: bool = False) -> None:
        await self._governor.run(
            chat_id, chat_id > 0, lambda: self._inner.edit(chat_id, message_id, text), "edit", preview=preview
        )

    async def draft(self, chat_id: int, draft_id: int, text: RichText) -> None:
        if chat_id <= 0:
            # Telegram has no drafts in groups: the transport refuses without a network call, and
            # taking a pace slot for that would hold back the fallback edit by a group interval.
            await self._inner.draft(chat_id, draft_id, text)
            return
        await self._governor.run(chat_id, True, lambda: self._inner.draft(chat_id, draft_id, text), "draft", preview=True)

    async def typing(self, chat_id: int) -> None:
        await self._governor.run(chat_id, chat_id > 0, lambda: self._inner.typing(chat_id), "typing")

    def takes_preview(self, chat_id: int) -> bool:
        return self._governor.takes_preview(chat_id)

    async def delete(self, chat_id: int, message_ids: Sequence[int]) -> None:
        await self._governor.run(chat_id, chat_id > 0, lambda: self._inner.delete(chat_id, message_ids), "edit")


class LimitsSource(Protocol):
    """Where the other limits come from (`LocalLimits` or `SharedLimits`): its Redis link, if any."""

    @property
    def link(self) -> "RedisLink | None": ...


def flood_governor_for(limits: LimitsSource, clock: Clock, **pacing: Any) -> FloodGovernor:
    """This instance's governor; with Redis, one whose flood pauses every instance follows."""
    if limits.link is None:
        return FloodGovernor(clock, **pacing)
    from bot.telegram.shared_flood import SharedFloodGovernor  # imports redis-py, only set up with REDIS_URL

    return SharedFloodGovernor(clock, limits.link, **pacing)
