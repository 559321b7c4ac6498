"""One reply in progress per chat: a lane is a chat's queue of jobs and the job now running.

Jobs of one chat run one after another; chats run side by side. `cancel` stops the running job
of a chat (the job itself decides how to finish what it showed, and can ask `cancel_reason` why:
a user's /cancel or a shutdown). A job submitted as not `cancellable` (a short closing note) is
left alone by a user's /cancel; a shutdown stops it all the same. Idle lanes are dropped.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]

USER_CANCEL = "user"
SHUTDOWN = "shutdown"


@dataclass
class _Lane:
    jobs: deque[tuple[Job, bool]] = field(default_factory=deque)
    worker: asyncio.Task[None] | None = None
    running: asyncio.Task[None] | None = None
    running_cancellable: bool = True
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str | None = None


class ChatLanes:
    def __init__(self) -> None:
        self._lanes: dict[int, _Lane] = {}
        self._accepting = True

    def busy(self, chat_id: int) -> bool:
        lane = self._lanes.get(chat_id)
        return lane is not None and (lane.running is not None or bool(lane.jobs))

    def in_flight(self) -> int:
        return sum(1 for lane in self._lanes.values() if lane.running is not None)

    def queued(self) -> int:
        return sum(len(lane.jobs) for lane in self._lanes.values())

    def submit(self, chat_id: int, job: Job, *, cancellable: bool = True) -> None:
        lane = self._lanes.setdefault(chat_id, _Lane())
        lane.jobs.append((job, cancellable))
        lane.idle.clear()
        if lane.worker is None or lane.worker.done():
            lane.worker = asyncio.ensure_future(self._work(chat_id, lane))

    def cancel(self, chat_id: int, reason: str = USER_CANCEL) -> bool:
        lane = self._lanes.get(chat_id)
        if lane is None or lane.running is None or lane.running.done():
            return False
        if reason == USER_CANCEL and (not lane.running_cancellable or lane.cancel_reason is not None):
            return False  # not to be stopped by the user, or already stopping
        lane.cancel_reason = reason
        lane.running.cancel()
        return True

    def finishing(self, chat_id: int) -> None:
        """The chat's running job has nothing left a user could stop (its answer is known): a
        /cancel from now on finds nothing to stop. A shutdown still stops it."""
        lane = self._lanes.get(chat_id)
        if lane is not None:
            lane.running_cancellable = False

    def cancel_reason(self, chat_id: int) -> str | None:
        """Why the chat's running job was cancelled (USER_CANCEL, SHUTDOWN), or None."""
        lane = self._lanes.get(chat_id)
        return lane.cancel_reason if lane is not None else None

    def drop_queued(self) -> int:
        """Forget every job not started yet; returns how many. Used at shutdown: the messages
        behind them are stored and answered after the restart."""
        dropped = 0
        for lane in self._lanes.values():
            dropped += len(lane.jobs)
            lane.jobs.clear()
        return dropped

    def stop_chat(self, chat_id: int, reason: str) -> None:
        """Drop the chat's queued jobs and cancel its running one with `reason`."""
        lane = self._lanes.get(chat_id)
        if lane is not None:
            lane.jobs.clear()
            self.cancel(chat_id, reason)

    def cancel_all(self, reason: str) -> int:
        """Drop queued jobs and cancel every running one with `reason`; returns how many ran."""
        self.drop_queued()
        return sum(1 for chat_id in list(self._lanes) if self.cancel(chat_id, reason))

    async def wait_idle(self, chat_id: int) -> None:
        lane = self._lanes.get(chat_id)
        if lane is not None:
            await lane.idle.wait()

    async def wait_all_idle(self) -> None:
        while True:
            workers = [lane.worker for lane in self._lanes.values() if lane.worker and not lane.worker.done()]
            if not workers:
                return
            # asyncio.wait, not gather: a waiter that gives up (a timeout) must not cancel the jobs.
            await asyncio.wait(workers)

    async def _work(self, chat_id: int, lane: _Lane) -> None:
        try:
            while lane.jobs:
                job, lane.running_cancellable = lane.jobs.popleft()
                lane.cancel_reason = None
                lane.running = asyncio.ensure_future(job())
                try:
                    await asyncio.shield(lane.running)
                except asyncio.CancelledError:
                    if not lane.running.cancelled():
                        # The worker itself is being cancelled (shutdown): stop the job too.
                        lane.running.cancel()
                        raise
                except Exception:
                    log.exception("a job in chat %s failed", chat_id)
                finally:
                    lane.running = None
        finally:
            lane.idle.set()
            if not lane.jobs and self._lanes.get(chat_id) is lane:
                del self._lanes[chat_id]
