"""The one source of time: everything that waits or expires reads an injected clock.

`SystemClock` is the real one. `ManualClock` only moves when a test (or a benchmark) advances it,
so waits of minutes take no real time and results do not depend on machine speed. Code that waits
on a thread or a socket (a database statement) says so with `with clock.real_work():`, so a
`ManualClock` never jumps time while that work, invisible to the event loop, is still running.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Awaitable, Callable, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...

    def real_work(self) -> AbstractContextManager[None]:
        """Hold around a wait on a thread or a socket: time must not jump while it runs."""
        ...


_NOTHING_TO_HOLD: AbstractContextManager[None] = nullcontext()


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def real_work(self) -> AbstractContextManager[None]:
        return _NOTHING_TO_HOLD  # real time passes by itself


class _RealWorkCount:
    """How many `real_work()` blocks are open: a counter, so holding it costs next to nothing."""

    def __init__(self) -> None:
        self.open = 0

    def __enter__(self) -> None:
        self.open += 1

    def __exit__(self, *_exc: object) -> None:
        self.open -= 1


class _CountedThreadPool(ThreadPoolExecutor):
    """The loop's default executor (`asyncio.to_thread`, `loop.getaddrinfo` for every HTTP
    connection), holding `real_work` from each job's submission until its result is on its way
    back to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: _RealWorkCount) -> None:
        super().__init__(thread_name_prefix="manual-clock")
        self._loop = loop
        self._count = count

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self._count.__enter__()
        future = super().submit(fn, *args, **kwargs)
        # Registered before asyncio's own callback, so the count drops before the result arrives.
        future.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._count.__exit__))
        return future


class ManualClock:
    """A clock whose time moves only through `advance`; sleepers wake in deadline order."""

    def __init__(self, start: float = 1000.0, wall_start: datetime | None = None) -> None:
        self._now = start
        self._start = start
        self._wall_start = wall_start or datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._real_work = _RealWorkCount()
        self._counted_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def monotonic(self) -> float:
        return self._now

    def now(self) -> datetime:
        return self._wall_start + timedelta(seconds=self._now - self._start)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def real_work(self) -> AbstractContextManager[None]:
        return self._real_work

    @property
    def real_work_in_flight(self) -> int:
        """How many `real_work()` blocks are open (a statement on its thread, a request on its socket)."""
        return self._real_work.open

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    async def settle(self, rounds: int = 20) -> None:
        """Let every task that can run without time passing run."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline and letting it run."""
        target = self._now + seconds
        await self.settle()
        while True:
            self._drop_cancelled()
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            await self.settle()
        self._now = max(self._now, target)
        await self.settle()

    async def run_until_complete(
        self, awaitable: Awaitable[T], *, poll: float = 0.005, limit: float = 3600.0, real_limit: float = 60.0
    ) -> T:
        """Run `awaitable`, jumping time to the next deadline whenever it is waiting on the clock.

        Real I/O (local fake servers, SQLite threads) gets `poll` seconds of real time to make
        progress before time jumps, and time never jumps while a `real_work()` block is open (a
        statement still on its thread, however slow the machine). Time never jumps past `limit`
        seconds from the start: a deadline beyond it (a generous timeout) is left alone while real
        I/O finishes, and `real_limit` seconds of real time end a run that is stuck for good.
        """
        task = asyncio.ensure_future(awaitable)
        await self._drive(task, poll=poll, limit=limit, real_limit=real_limit)
        return task.result()

    async def run_until(self, predicate: Callable[[], bool], *, poll: float = 0.005, limit: float = 3600.0) -> None:
        """Let time run (as in `run_until_complete`) until `predicate()` holds.

        The predicate is asked before every jump, so time never jumps past the moment it came true
        (asked only by a task polling in real time, a loaded machine could miss that moment and
        jump over a timeout the test means to come later)."""

        async def condition() -> None:
            while not predicate():
                await asyncio.sleep(poll / 4)

        task = asyncio.ensure_future(condition())
        try:
            await self._drive(task, poll=poll, limit=limit, real_limit=60.0, reached=predicate)
        finally:
            task.cancel()

    async def _drive(
        self,
        task: asyncio.Future[Any],
        *,
        poll: float,
        limit: float,
        real_limit: float,
        reached: Callable[[], bool] = lambda: False,
    ) -> None:
        started = self._now
        loop = asyncio.get_running_loop()
        if loop not in self._counted_loops:
            # Jobs on the loop's threads are real work too; the loop closes the executor with itself.
            loop.set_default_executor(_CountedThreadPool(loop, self._real_work))
            self._counted_loops.add(loop)
        give_up_at = loop.time() + real_limit
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                break
            if loop.time() > give_up_at:
                task.cancel()
                raise TimeoutError(f"still running after {real_limit} s of real time")
            # A busy machine can spend `poll` before the loop got round to work that needs no
            # time at all: let that run first, so time only jumps for what is truly waiting.
            await self.settle()
            if task.done() or reached():
                break
            if self._real_work.open:
                continue  # a thread or a socket is still working: what it returns may move a deadline
            deadline = self.next_deadline()
            if deadline is None or deadline - started > limit:
                continue
            await self.advance(max(0.0, deadline - self._now))

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)


async def first_of(*awaitables: Awaitable[object]) -> object:
    """The result of whichever of `awaitables` finishes first; the others are cancelled."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return next(task for task in tasks if task in done).result()


async def wait_for(clock: Clock, awaitable: Awaitable[T], timeout: float | None) -> T:
    """`asyncio.wait_for` on the injected clock: raises TimeoutError when `timeout` passes first."""
    if timeout is None:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(timeout))
    try:
        done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        timer.cancel()
        raise
    if task in done:
        timer.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise TimeoutError(f"no answer within {timeout:g} s")


class Watchdog:
    """Timeouts for one task's series of waits (a stream read chunk by chunk), on one timer for all.

    `wait_for` starts two tasks per wait, which for a stream is two per chunk. A watchdog starts
    one timer task for its whole life: `with watchdog.limit(seconds): await ...` only moves its
    deadline, and if the deadline passes while the block waits, the waiting task is cancelled
    there and the block raises TimeoutError instead, as `asyncio.timeout` does. The timer sleeps
    until the deadline it knows of and, if the waits since moved it later, sleeps on; between
    waits it waits for the next one. A deadline earlier than the one it sleeps for restarts it.
    `close()` stops it.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seconds = 0.0
        self._deadline = math.inf
        self._task: asyncio.Task[Any] | None = None  # the task inside `limit`
        self._cancelling = 0
        self._armed = False  # a block is waiting and has not been cancelled yet
        self._fired = False
        self._timer: asyncio.Task[None] | None = None
        self._timer_until = math.inf
        self._next_wait: asyncio.Future[None] | None = None  # the idle timer waits on it

    def limit(self, seconds: float) -> "Watchdog":
        """Time the `with` block: TimeoutError if it is still waiting `seconds` from now."""
        self._seconds = seconds
        self._deadline = self._clock.monotonic() + seconds
        return self

    def __enter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None, "a watchdog times a task"
        self._task, self._cancelling = task, task.cancelling()
        self._armed, self._fired = True, False
        if self._next_wait is not None:
            if not self._next_wait.done():
                self._next_wait.set_result(None)
        elif self._timer is None or self._timer.done() or self._deadline < self._timer_until:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_until = self._deadline
            self._timer = asyncio.ensure_future(self._watch())

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._armed = False
        if self._fired and self._task is not None:
            self._fired = False
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError(f"no answer within {self._seconds:g} s")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._next_wait = None

    async def _watch(self) -> None:
        while True:
            if not self._armed:
                self._timer_until = math.inf
                self._next_wait = asyncio.get_running_loop().create_future()
                await self._next_wait
                self._next_wait = None
                continue
            delay = self._deadline - self._clock.monotonic()
            if delay > 0:
                self._timer_until = self._deadline
                await self._clock.sleep(delay)
                continue
            assert self._task is not None
            self._armed, self._fired = False, True
            self._task.cancel()
