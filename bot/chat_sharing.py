"""Several instances answering at once: which chats this instance answers, and finding work.

With DATABASE_URL every instance answers; the leader alone receives (bot/telegram/leadership.py).
A chat is answered where its claim is held (state/chat_claims.py), so its messages stay in order
on one instance. The leader, having stored a message, answers it itself when it holds the chat
or takes it (`answers_here`); a chat another instance holds is left to that instance, which is
woken (PostgreSQL NOTIFY with the chat id) and takes the new message up as if it had received it.
A chat nobody holds goes to the least busy instance (the fewest chats held, among those seen in
the last lease): a busier one leaves it for `PATIENCE` seconds (in case that one is stuck). Every
instance looks for chats nobody holds when woken and every `POLL` seconds (a missed notification,
the chats of an instance that died, once their claims expire; messages stored during a shutdown).

Claims are kept alive every `hold_seconds / 5` while the chat has work here and given up once
it has had none for a round. An instance that cannot keep its claims (its database unreachable)
stops its replies before they expire (they stay unfinished, for whoever takes the chat next),
so two instances never answer one chat.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from handlers.lanes import SHUTDOWN, ChatLanes
from handlers.router import STORAGE_ERRORS, Router
from integrations.clock import Clock, wait_for
from state.chat_claims import CHANNEL, ChatClaims
from state.history import StoredMessage

if TYPE_CHECKING:
    from bot.app import App
    from bot.config import Settings

log = logging.getLogger(__name__)

# Seconds a message waits for a less busy instance to take its chat before any instance does.
PATIENCE = 2.0
# Seconds between two looks for chats nobody holds, in case a notification was missed.
POLL = 1.0

# Opens the connection notifications arrive on; None when it cannot be had now.
Listen = Callable[[Callable[[str], None]], Awaitable[Any]]


class ChatSharing:
    def __init__(
        self,
        claims: ChatClaims,
        router: Router,
        lanes: ChatLanes,
        clock: Clock,
        *,
        listen: Listen | None = None,
        poll: float = POLL,
        patience: float = PATIENCE,
    ) -> None:
        self._claims = claims
        self._router = router
        self._lanes = lanes
        self._clock = clock
        self._listen = listen
        self._poll = poll
        self._patience = patience
        self._held: set[int] = set()
        self._touched: dict[int, float] = {}  # monotonic time each held chat last got work here
        self._woken = asyncio.Event()
        self._woken_for: set[int] = set()
        self._kept_at = clock.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Any = None

    @property
    def instance(self) -> str:
        return self._claims.instance

    @property
    def keep_every(self) -> float:
        return self._claims.hold_seconds / 5

    def holds(self, chat_id: int) -> bool:
        return chat_id in self._held

    def chats(self) -> set[int]:
        """The chats this instance answers now."""
        return set(self._held)

    async def answers_here(self, stored: StoredMessage) -> bool:
        chat_id = stored.chat_id
        if chat_id in self._held:
            self._touched[chat_id] = self._clock.monotonic()
            return True
        try:
            if self._held and await self._claims.someone_less_busy(len(self._held)):
                await self._claims.wake()  # the least busy instance takes it
                return False
            if not await self._claims.take(chat_id):
                await self._claims.wake(chat_id)  # its holder takes it up
                return False
            self._hold(chat_id)
            await self._router.take_up_chat(chat_id, before=stored.id)  # older ones first
        except STORAGE_ERRORS as error:
            # Stored, so not lost: whoever holds or takes the chat answers it.
            log.warning("could not place chat %s (%s); its message waits for the next look", chat_id, error)
            return chat_id in self._held
        return True

    async def start(self) -> None:
        """Let go of what an earlier run under this name held, then look for work and keep the
        claims in the background until `close`."""
        try:
            await self._claims.give_up_all()
        except STORAGE_ERRORS as error:
            log.warning("could not let go of the chats of this instance's last run (they expire by themselves): %s", error)
        self._tasks = [asyncio.ensure_future(self._look_for_work()), asyncio.ensure_future(self._keep())]

    def wake(self, chat_id: int | None = None) -> None:
        """A notification: `chat_id` has a new message (taken up if held here), or work is free."""
        if chat_id is not None:
            self._woken_for.add(chat_id)
        self._woken.set()

    async def close(self) -> None:
        """Stop looking, and give up every chat (call once the replies here ended)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_listening()
        self._held.clear()
        try:
            await self._claims.give_up_all()
        except STORAGE_ERRORS as error:
            log.warning("could not give up this instance's chats (they expire by themselves): %s", error)

    async def look_once(self) -> int:
        """Take up new messages of chats held here that others stored, then take chats nobody
        holds, one at a time, the least busy instance first. Returns how many chats were taken."""
        woken_for, self._woken_for = self._woken_for, set()
        for chat_id in sorted(woken_for & self._held):
            self._touched[chat_id] = self._clock.monotonic()
            await self._router.take_up_chat(chat_id)
        taken = 0
        while self._router.accepting:
            # A less busy instance gets the first go at a new message; after PATIENCE anyone takes it.
            least = not self._held or not await self._claims.someone_less_busy(len(self._held))
            free = await self._claims.take_next(waited=0.0 if least else self._patience)
            if free is None:
                break
            self._hold(free)
            taken += 1
            await self._router.take_up_chat(free)
        return taken

    async def _look_for_work(self) -> None:
        while True:
            await self._listening()
            try:
                await self.look_once()
            except STORAGE_ERRORS as error:
                log.warning("could not look for messages to answer: %s", error)
            try:
                await wait_for(self._clock, self._woken.wait(), self._poll)
            except TimeoutError:
                pass  # a look every `poll` seconds all the same
            self._woken.clear()

    async def _keep(self) -> None:
        while True:
            await self._clock.sleep(self.keep_every)
            await self.keep_once()

    async def keep_once(self) -> None:
        """Move the claims on, give up the chats idle for a round, and stop answering them all if
        they could not be kept for nearly as long as a claim lives."""
        # Only chats held before asking: one taken while the statement ran is not in its answer.
        asked_for = set(self._held)
        try:
            still = await self._claims.keep(asked_for)
        except STORAGE_ERRORS as error:
            silent = self._clock.monotonic() - self._kept_at
            if self._held and silent >= self._claims.hold_seconds - self.keep_every:
                self._let_go(f"could not keep them for {silent:.0f} s ({error})")
            return
        self._kept_at = self._clock.monotonic()
        lost = (asked_for & self._held) - still
        for chat_id in sorted(lost):
            log.error("instance %s: chat %s was taken over (its claim could not be kept); stopping its reply", self.instance, chat_id)
            self._held.discard(chat_id)
            self._lanes.stop_chat(chat_id, SHUTDOWN)
        now = self._clock.monotonic()
        for chat_id in sorted(self._held):
            if not self._router.working_on(chat_id) and now - self._touched.get(chat_id, 0.0) >= self.keep_every:
                try:
                    if not await self._claims.give_up(chat_id):
                        self.wake(chat_id)  # a message for it came meanwhile: taken up at the next look
                        continue
                except STORAGE_ERRORS as error:
                    log.warning("could not give up chat %s (it expires by itself): %s", chat_id, error)
                    continue
                self._held.discard(chat_id)
                self._touched.pop(chat_id, None)

    def _let_go(self, why: str) -> None:
        """Another instance may answer these chats now: stop every reply here (left unfinished)."""
        log.error("instance %s: giving up its %d chat(s): %s", self.instance, len(self._held), why)
        self._held.clear()
        self._touched.clear()
        self._lanes.cancel_all(SHUTDOWN)

    def _hold(self, chat_id: int) -> None:
        log.info("instance %s takes chat %s (%d chats here)", self.instance, chat_id, len(self._held) + 1)
        self._held.add(chat_id)
        self._touched[chat_id] = self._clock.monotonic()

    async def _listening(self) -> None:
        """(Re)open the notification connection when it is missing; without it, polling does."""
        if self._listen is None or (self._listener is not None and not self._listener.is_closed()):
            return
        try:
            self._listener = await self._listen(self._notified)
        except STORAGE_ERRORS as error:
            log.warning("could not listen for new messages (polling every %g s instead): %s", self._poll, error)
            self._listener = None

    def _notified(self, payload: str) -> None:
        self.wake(int(payload) if payload else None)

    async def _stop_listening(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            self._listener.terminate()
        self._listener = None


def listener_for(url: str) -> Listen:
    """Listens on CHANNEL on a connection of its own (asyncpg `add_listener`)."""

    async def listen(notified: Callable[[str], None]) -> Any:
        from state.postgres import connect

        conn = await connect(url)
        await conn.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: notified(payload))
        return conn

    return listen


def open_chat_sharing(settings: Settings, clock: Clock, app: App, stack: AsyncExitStack) -> ChatSharing | None:
    """With DATABASE_URL: this instance answers the chats it holds (started by `start` once it is
    logged in, given up when `stack` closes); None with SQLite, where one bot answers everything."""
    if settings.database_url is None:
        return None
    claims = ChatClaims(app.database, clock, settings.instance.name, hold_seconds=settings.instance.lease_seconds)
    sharing = ChatSharing(claims, app.router, app.services.lanes, clock, listen=listener_for(settings.database_url.reveal()))
    app.router.share_chats(sharing)
    stack.push_async_callback(sharing.close)
    return sharing
