"""The two sides of a reply benchmark: the raw SDK stream, and the whole bot on a fake Telegram.

Raw: the official openai SDK streams the answer from the paced local server (bench/_paced_llm.py)
and accumulates its text, nothing else. Bot: the real composition root (`build_app`), the Telegram
transport behind the flood governor, the runner, SQLite, all on the real clock, fed Telethon
events by the fake Telegram client (tests/fakes/telegram.py) and answered by the same server.
`LoopLag` samples how late the event loop runs a 10 ms timer. The fake Telegram keeps the
messages the bot sent (the benches read them back) but not the users' messages, which Telegram
keeps on its servers: the bot's process is weighed, not Telegram's. Only for benchmarks.
"""
from __future__ import annotations

import asyncio
import itertools
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import App, build_app  # noqa: E402
from bot.collector import tune_collector  # noqa: E402
from bot.config import LimitSettings, Secret, Settings  # noqa: E402
from bot.telegram.flood_governor import FloodGovernor, GovernedTransport  # noqa: E402
from bot.telegram.transport import TelegramRunner, TelegramTransport  # noqa: E402
from handlers.richtext import RichText  # noqa: E402
from integrations.clock import SystemClock  # noqa: E402
from integrations.llm import ModelRef  # noqa: E402
from tests.fakes.telegram import FakeTelegramClient, new_message_event  # noqa: E402

API_KEY = "sk-bench-0000000000000000"


@dataclass
class RawTiming:
    started: float  # time.monotonic() when the request was made
    first: float  # seconds from then to the first content
    end: float  # and to the end of the stream
    text: str


async def raw_reply(client: Any, model: str, question: str = "question") -> RawTiming:
    """One answer through the SDK alone, timed from the request: first content, end of stream."""
    started = time.monotonic()
    first = 0.0
    parts: list[str] = []
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_completion_tokens=4096,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not parts:
                first = time.monotonic() - started
            parts.append(chunk.choices[0].delta.content)
    return RawTiming(started, first, time.monotonic() - started, "".join(parts))


def raw_client(base_url: str) -> Any:
    import openai

    return openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url, max_retries=0)


class _FinalTimes:
    """A transport wrapper noting when each chat's final text was first asked for (generation over)."""

    def __init__(self, inner: GovernedTransport) -> None:
        self._inner = inner
        self.name = inner.name
        self.final_asked: dict[int, float] = {}

    async def send(self, chat_id: int, text: RichText, *, reply_to=None, preview: bool = False, key=None) -> int:
        if not preview:
            self.final_asked.setdefault(chat_id, time.monotonic())
        return await self._inner.send(chat_id, text, reply_to=reply_to, preview=preview, key=key)

    async def edit(self, chat_id: int, message_id: int, text: RichText, *, preview: bool = False) -> None:
        if not preview:
            self.final_asked.setdefault(chat_id, time.monotonic())
        await self._inner.edit(chat_id, message_id, text, preview=preview)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_MESSAGE_IDS = itertools.count(1000)


@dataclass
class Bot:
    client: FakeTelegramClient
    app: App
    transport: _FinalTimes
    asked_at: dict[int, float] = field(default_factory=dict)

    def ask(self, chat_ids: Sequence[int], question: str = "question") -> None:
        """A user message in each chat, handed to the bot as Telethon's update loop would."""
        for chat_id in chat_ids:
            event = new_message_event(chat_id=chat_id, sender_id=chat_id, text=question, message_id=next(_MESSAGE_IDS))
            self.asked_at[chat_id] = time.monotonic()
            self.client.dispatch(event)

    async def settle(self) -> None:
        await self.client.settle_dispatch()
        await self.app.services.lanes.wait_all_idle()

    def first_visible(self, chat_id: int) -> float | None:
        """When the first text of the reply reached Telegram (a draft, or the first message)."""
        moments = [d.at for d in self.client.drafts(chat_id)] + [m.sent_at for m in self.client.messages(chat_id)]
        return min(moments) if moments else None

    def final_landed(self, chat_id: int) -> float:
        """When the last part of the final text reached Telegram."""
        return max(m.edits[-1].at if m.edits else m.sent_at for m in self.client.messages(chat_id))


async def start_bot(stack: AsyncExitStack, base_url: str, model: str, governor: FloodGovernor | None = None) -> Bot:
    tune_collector()  # as `switchboard run` does in its process
    clock = SystemClock()
    state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="switchboard-bench-")))
    settings = Settings(
        openai_api_key=Secret(API_KEY),
        openai_base_url=base_url,
        llm_models=(ModelRef("openai", model),),
        allow_everyone=True,
        state_dir=state_dir,
        system_prompt="Be brief.",
        llm_local="off",
        llm_max_tokens=4096,
        # The bench measures the reply path, not our own upstream pacing.
        limits=LimitSettings(
            openai_requests_per_minute=1e9, openai_tokens_per_minute=10**12, user_messages_per_minute=10**6
        ),
    )
    # The users' messages stay on Telegram's side, not in the process whose memory is weighed.
    client = FakeTelegramClient(clock, keeps_incoming=False)
    transport = _FinalTimes(GovernedTransport(TelegramTransport(client), governor or FloodGovernor(clock)))
    app = await build_app(settings, clock, transport, stack)
    runner = TelegramRunner(client, Secret("123456:" + "A" * 35), app.router.handle)
    await runner.start(before_messages=app.router.resume_pending)
    stack.push_async_callback(runner.stop)
    return Bot(client, app, transport)


class LoopLag:
    """How late the loop runs a timer due every `interval`: samples in seconds while running."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (when, how late)
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> "LoopLag":
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            self.samples.append((time.monotonic(), max(0.0, time.perf_counter() - due)))

    def until(self, moment: float) -> list[float]:
        """The lags sampled up to `moment` (time.monotonic())."""
        return [lag for when, lag in self.samples if when <= moment]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")
