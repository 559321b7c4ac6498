"""Local servers that enforce a rate limit the way upstreams do, each on its own thread.

`RollingWindowServer` answers 429 once N requests were already *accepted* within the last
`window` seconds (refused ones do not count): the usual sliding-log limiter, speaking just enough
HTTP/1.1 (keep-alive, Content-Length). `FixedWindowProxy` is an OpenAI-compatible server behind a
proxy that allows `limit` chat requests per API key per fixed window and says so in
`x-ratelimit-*-requests` headers, answering 429 beyond. Both run their event loop on a thread, so
their timestamps are taken when a request arrives, independently of the client's scheduling.
Only for benchmarks.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Coroutine, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes import openai_server as openai_fake  # noqa: E402
from tests.fakes.http_server import Fault, RecordedRequest, Response  # noqa: E402

T = TypeVar("T")


class LoopThread:
    """An event loop running on a daemon thread: `with LoopThread() as thread: thread.run(coro)`."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> "LoopThread":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def call(self, callback: Any, *args: Any) -> None:
        self._loop.call_soon_threadsafe(callback, *args)


@dataclass
class Tally:
    accepted: int = 0
    refused: int = 0
    accepted_at: deque[float] = field(default_factory=deque)
    windows: int = 0  # fixed windows opened


class RollingWindowServer:
    def __init__(self, limit: int = 3, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self.tally = Tally()
        self.port = 0
        self._thread = LoopThread()
        self._server: asyncio.Server | None = None

    def __enter__(self) -> "RollingWindowServer":
        self._thread.__enter__()
        self._thread.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.run(self._stop())
        self._thread.__exit__(*exc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def reset(self) -> None:
        """Forget past requests (between benchmark runs)."""
        self._thread.call(setattr, self, "tally", Tally())

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _admit(self) -> bool:
        now = time.monotonic()
        recent = self.tally.accepted_at
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if len(recent) >= self.limit:
            self.tally.refused += 1
            return False
        recent.append(now)
        self.tally.accepted += 1
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if self._admit():
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                else:
                    body = b'{"error":"rate limited"}'
                    writer.write(
                        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@dataclass
class _Window:
    ends: float = float("-inf")
    used: int = 0
    tally: Tally = field(default_factory=Tally)


class FixedWindowProxy(openai_fake.FakeOpenAI):
    """`with FixedWindowProxy(limit=50, window=60.0) as proxy:` then point the SDK at `proxy.base_url`.

    Each API key gets `limit` chat requests per window; its window starts with its first request.
    Every answer (a 429 too) reports the key's `x-ratelimit-{limit,remaining,reset}-requests`, the
    remaining counted after the request. Any key is accepted; `tally(key)` counts per key.
    """

    MODEL = "gpt-bench"

    def __init__(self, *, limit: int, window: float, text: str = "Hello from the proxy.") -> None:
        super().__init__(api_key="any", models=(self.MODEL,), default=openai_fake.Reply(text))
        self.limit = limit
        self.window = window
        self._windows: dict[str, _Window] = {}
        self._thread = LoopThread()

    def __enter__(self) -> "FixedWindowProxy":
        self._thread.__enter__()
        self._thread.run(self.server.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.run(self.server.close())
        self._thread.__exit__(*exc)

    def tally(self, key: str) -> Tally:
        return self._windows.get(f"Bearer {key}", _Window()).tally

    def _authenticate(self, request: RecordedRequest) -> openai_fake.Fail | None:
        return None

    def _chat(self, request: RecordedRequest, headers: dict[str, str]) -> Response | Fault:
        window = self._windows.setdefault(request.headers.get("authorization", ""), _Window())
        now = time.monotonic()
        if now >= window.ends:
            window.ends, window.used = now + self.window, 0
            window.tally.windows += 1
        admitted = window.used < self.limit
        window.used += admitted
        if admitted:
            window.tally.accepted += 1
        else:
            window.tally.refused += 1
            self.script(openai_fake.rate_limited())
        self.limit_headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.limit - window.used),
            "x-ratelimit-reset-requests": f"{window.ends - now:.3f}s",
        }
        return super()._chat(request, headers)
