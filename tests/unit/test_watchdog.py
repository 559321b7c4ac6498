"""One timer times a whole stream's waits: no tasks per chunk, the same timeouts as wait_for."""
import asyncio

import pytest

from integrations.chain import ChainModel, ChainTimeouts, ModelChain, TextDelta
from integrations.clock import ManualClock, Watchdog
from integrations.llm import ChatMessage, ModelRef

MODEL = ModelRef("openai", "paced")


class CountingTasks:
    """Counts the tasks a running loop creates."""

    def __init__(self) -> None:
        self.created = 0

    def __enter__(self) -> "CountingTasks":
        loop = asyncio.get_running_loop()

        def factory(loop, coro, **kwargs):
            self.created += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().set_task_factory(None)


async def test_waits_within_their_limit_pass_and_a_longer_one_times_out_at_its_deadline():
    clock = ManualClock(start=0.0)
    watchdog = Watchdog(clock)

    async def waits() -> list[object]:
        seen: list[object] = []
        for gap in (1.0, 4.0, 2.0, 9.0):
            try:
                with watchdog.limit(5.0):
                    await clock.sleep(gap)
                seen.append(gap)
            except TimeoutError:
                seen.append(("timeout", clock.monotonic()))
        watchdog.close()
        return seen

    assert await clock.run_until_complete(waits()) == [1.0, 4.0, 2.0, ("timeout", 12.0)]


async def test_a_cancel_from_outside_stays_a_cancel():
    clock = ManualClock(start=0.0)
    watchdog = Watchdog(clock)

    async def waits() -> None:
        with watchdog.limit(5.0):
            await asyncio.Event().wait()

    task = asyncio.ensure_future(waits())
    await clock.advance(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    watchdog.close()


async def test_a_stream_read_chunk_by_chunk_starts_no_task_per_chunk():
    clock = ManualClock(start=0.0)

    class Paced:
        name = "paced"

        async def stream(self, request, result):
            for index in range(200):
                await clock.sleep(0.05)
                yield f"w{index} "

    chain = ModelChain([ChainModel(MODEL, Paced())], clock, ChainTimeouts(first_token=5, idle=1, total=100))

    async def read() -> str:
        text = ""
        async for event in chain.stream([ChatMessage("user", "hi")], system=None, max_tokens=10):
            if isinstance(event, TextDelta):
                text += event.text
        return text

    with CountingTasks() as tasks:
        text = await clock.run_until_complete(read())
    assert text.split() == [f"w{index}" for index in range(200)]
    assert tasks.created < 10  # the run itself, the first token's wait_for, one watchdog timer
