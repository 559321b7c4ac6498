"""A graceful stop: finish what is in flight, lose nothing, then let the exit stack close the rest.

In order:
1. The router stops taking new work. Chat messages arriving from now on are stored and answered
   after the restart; jobs queued behind a reply are dropped for the same reason (their messages
   are stored too).
2. Replies in flight get `grace` seconds to finish (less if `hurry` is set: a second signal).
3. Replies still running are cancelled with the reason SHUTDOWN: each shows what it had with a
   note that it is answered again after the restart, and stays pending so that it is. They get
   `finalise` seconds for that; whatever is still running then is cancelled outright.
4. The notes outbox worker stops (it keeps unsent notes in the database).

Telegram is still connected during all of this, so the final texts land. Closing the clients and
the database is left to the caller's AsyncExitStack.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from bot.app import App
from handlers.lanes import SHUTDOWN
from integrations.clock import Clock

log = logging.getLogger(__name__)

# Seconds an interrupted reply gets to show its note (one or two Telegram calls, maybe paced).
FINALISE_SECONDS = 10.0


@dataclass(frozen=True)
class DrainReport:
    in_flight: int  # replies running when the stop began
    dropped: int  # queued jobs dropped (their messages are answered after the restart)
    interrupted: int  # replies still running after the grace, finalised with the note
    abandoned: bool  # some reply did not even finish its note within `finalise`

    def describe(self) -> str:
        finished = self.in_flight - self.interrupted
        text = f"{finished} of {self.in_flight} replies in flight finished"
        if self.interrupted:
            text += f"; {self.interrupted} interrupted (answered again after the restart)"
        if self.dropped:
            text += f"; {self.dropped} queued left for after the restart"
        if self.abandoned:
            text += "; some could not show their note in time"
        return text


async def drain(
    app: App,
    clock: Clock,
    grace: float,
    *,
    finalise: float = FINALISE_SECONDS,
    hurry: asyncio.Event | None = None,
) -> DrainReport:
    """Stop taking work and bring every reply to an end the user can see (see the module doc)."""
    app.router.stop_accepting()
    lanes = app.services.lanes
    in_flight = lanes.in_flight()
    dropped = lanes.drop_queued()
    if in_flight:
        log.info("stopping: waiting up to %g s for %d replies in flight", grace, in_flight)
    interrupted = 0
    abandoned = False
    if not await _idle_within(app, clock, grace, hurry):
        interrupted = lanes.cancel_all(SHUTDOWN)
        log.warning("stopping: %d replies still running; finishing them with a note", interrupted)
        if not await _idle_within(app, clock, finalise, None):
            abandoned = True
            log.warning("stopping: replies did not finish their note within %g s; cutting them off", finalise)
            lanes.cancel_all(SHUTDOWN)
            if not await _idle_within(app, clock, 1.0, None):
                log.error("stopping: some jobs ignore cancellation; closing anyway")
    await _stop_outbox(app)
    report = DrainReport(in_flight, dropped, interrupted, abandoned)
    log.info("stopped: %s", report.describe())
    return report


async def _idle_within(app: App, clock: Clock, seconds: float, hurry: asyncio.Event | None) -> bool:
    """Whether every lane went idle within `seconds` on the clock (or before `hurry` was set)."""
    idle = asyncio.ensure_future(app.services.lanes.wait_all_idle())
    waits: set[asyncio.Future[Any]] = {idle, asyncio.ensure_future(clock.sleep(seconds))}
    if hurry is not None:
        waits.add(asyncio.ensure_future(hurry.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return idle.done() and not idle.cancelled()


async def _stop_outbox(app: App) -> None:
    notes = app.services.features.notes
    if notes is None:
        return
    try:
        await notes.delivery.stop()
    except Exception:
        log.exception("stopping the notes outbox worker failed; unsent notes stay queued")
