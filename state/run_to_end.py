"""Writes that cannot be called back once begun: a cancel waits for them, then applies.

A batch handed to SQLite's thread (`Database.write_all`) runs to its COMMIT whatever the task that
asked for it does meanwhile. Raising CancelledError at once would tell that task nothing was
written when it was: a caller that repeats a step after a user's /cancel would store the answer
twice. So the cancel waits for the job; if the job kept its writes, the job's result is returned
and the cancel is raised at the task's next await instead; if it failed, the cancel is raised.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def run_to_end(job: Awaitable[T]) -> T:
    """The result of `job`, which is not stopped by a cancel of the calling task (see above)."""
    future = asyncio.ensure_future(job)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
            break
        except asyncio.CancelledError:
            if future.cancelled():
                raise  # the job itself was cancelled (its loop is closing): nothing more to wait for
            cancelled = True  # waited for again (at once, if it has just ended)
        except BaseException:
            if cancelled:
                raise asyncio.CancelledError() from None
            raise
    if cancelled:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # taken back and asked again: still one cancel, raised at the next await
            task.cancel()
    return result
