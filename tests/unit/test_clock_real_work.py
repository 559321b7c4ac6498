"""A ManualClock never jumps time while a statement is still running on its thread."""
import asyncio
import time
from pathlib import Path

import pytest

from integrations.clock import ManualClock, SystemClock, wait_for
from state.db import Database


def block_the_thread_for_50_ms() -> int:
    # A statement on a loaded machine: the event loop sees nothing happening while it runs.
    time.sleep(0.05)
    return 1


async def test_a_slow_statement_is_not_timed_out_by_a_clock_jump(tmp_path: Path) -> None:
    clock = ManualClock()
    database = await Database.open(tmp_path / "state.db", clock)
    try:
        await database._conn.create_function("slow", 0, block_the_thread_for_50_ms)
        started = clock.monotonic()
        # A 30 s watchdog is due as soon as the loop looks idle; the statement takes 50 ms of
        # real time, ten polls of 5 ms: without the seam, time jumps 30 s and the wait times out.
        row = await clock.run_until_complete(wait_for(clock, database.fetchone("SELECT slow()"), 30), poll=0.005)
        assert row is not None and row[0] == 1
        assert clock.monotonic() == started
        assert clock.real_work_in_flight == 0
    finally:
        await database.close()


async def test_a_slow_statement_in_a_transaction_holds_time_still_too(tmp_path: Path) -> None:
    clock = ManualClock()
    database = await Database.open(tmp_path / "state.db", clock)
    try:
        await database._conn.create_function("slow", 0, block_the_thread_for_50_ms)

        async def write_slowly() -> int:
            async with database.transaction():
                await database.execute("CREATE TABLE t (v INTEGER)")
                await database.execute("INSERT INTO t VALUES (slow())")
            row = await database.fetchone("SELECT count(*) FROM t")
            return int(row[0]) if row else 0

        started = clock.monotonic()
        assert await clock.run_until_complete(wait_for(clock, write_slowly(), 30), poll=0.005) == 1
        assert clock.monotonic() == started
    finally:
        await database.close()


async def test_time_jumps_again_once_the_real_work_is_done() -> None:
    clock = ManualClock()
    release = asyncio.Event()

    async def work_then_wait() -> float:
        with clock.real_work():
            await release.wait()
        await clock.sleep(30)
        return clock.monotonic()

    asyncio.get_running_loop().call_later(0.03, release.set)
    started = clock.monotonic()
    assert await clock.run_until_complete(work_then_wait(), poll=0.005) == started + 30


async def test_real_work_that_never_ends_still_ends_the_run_after_real_limit() -> None:
    clock = ManualClock()

    async def stuck() -> None:
        with clock.real_work():
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError, match="real time"):
        await clock.run_until_complete(stuck(), poll=0.005, real_limit=0.05)
    await clock.settle()
    assert clock.real_work_in_flight == 0  # the cancelled block let go


async def test_the_system_clock_holds_nothing() -> None:
    clock = SystemClock()
    with clock.real_work(), clock.real_work():
        pass
    assert clock.real_work() is clock.real_work()  # one shared object: no allocation per statement


async def test_run_until_stops_time_at_the_moment_the_condition_holds() -> None:
    clock = ManualClock()
    shown: list[str] = []

    async def draft_then_stall() -> None:
        await clock.sleep(1)
        shown.append("draft")
        await clock.sleep(29)  # a stall watchdog the test means to come later
        shown.append("stalled")

    started = clock.monotonic()
    task = asyncio.ensure_future(draft_then_stall())
    await clock.run_until(lambda: "draft" in shown)
    assert (shown, clock.monotonic()) == (["draft"], started + 1)
    task.cancel()


async def test_a_job_on_the_loops_threads_is_not_timed_out_by_a_clock_jump() -> None:
    clock = ManualClock()
    started = clock.monotonic()
    # asyncio.to_thread, and loop.getaddrinfo under every HTTP connection, run there.
    result = await clock.run_until_complete(wait_for(clock, asyncio.to_thread(block_the_thread_for_50_ms), 30))
    assert result == 1 and clock.monotonic() == started
    assert clock.real_work_in_flight == 0
