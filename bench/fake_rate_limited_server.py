"""A local HTTP server that enforces "at most N requests per rolling window", answering 429 beyond.

A request is refused when N requests were already *accepted* within the last `window` seconds
(refused ones do not count), which is the usual sliding-log limiter. It runs on its own event loop
in a thread, so its timestamps are taken when the request arrives, independently of the client's
scheduling. Only for benchmarks: it speaks just enough HTTP/1.1 (keep-alive, Content-Length).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Tally:
    accepted: int = 0
    refused: int = 0
    accepted_at: deque[float] = field(default_factory=deque)


class RollingWindowServer:
    def __init__(self, limit: int = 3, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self.tally = Tally()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> "RollingWindowServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def reset(self) -> None:
        """Forget past requests (between benchmark runs)."""
        self._loop.call_soon_threadsafe(setattr, self, "tally", Tally())

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
