"""A tiny HTTP/1.1 server for fake upstreams, running on the test's own event loop.

A fake upstream is a handler: it gets each `RecordedRequest` and returns a `Response` (or a fault).
The body of a response is either bytes (sent with Content-Length) or an async iterator of chunks
(sent with chunked transfer encoding, flushed chunk by chunk). Faults are plain values, so a fake
can script them: `RESET` (abortive close, the peer sees ECONNRESET), `HANG_UP` (orderly close
without finishing the body) and `STALL` (stop sending until a test calls `release_stalls()` or the
server closes). A fault can be returned instead of a response (nothing is sent) or yielded from a
streamed body (after the chunks before it have reached the peer). A malformed body needs no
special support: a handler returns whatever bytes it likes.
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import http
import json
import logging
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, AsyncIterable, Awaitable, Callable, Iterator, Mapping, Self
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger(__name__)

# Linux ioctl: bytes in a socket's send queue not yet sent to the peer.
_SIOCOUTQNSD = 0x894B


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header mapping; repeated fields are joined with ", "."""

    def __init__(self, pairs: Iterator[tuple[str, str]] | list[tuple[str, str]] = ()) -> None:
        self._values: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            self._values[key] = f"{self._values[key]}, {value}" if key in self._values else value

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Headers({self._values!r})"


@dataclass
class RecordedRequest:
    method: str
    target: str
    headers: Headers
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    @property
    def json(self) -> Any:
        """The body parsed as JSON, or None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class Fault(enum.Enum):
    RESET = "reset"
    HANG_UP = "hang_up"
    STALL = "stall"


RESET = Fault.RESET
HANG_UP = Fault.HANG_UP
STALL = Fault.STALL

Body = bytes | AsyncIterable[bytes | Fault]


@dataclass
class Response:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Body = b""

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> "Response":
        return cls(status, {"content-type": "application/json", **(headers or {})}, json.dumps(payload).encode())


Handler = Callable[[RecordedRequest], Awaitable["Response | Fault"]]


class HttpServer:
    """`async with HttpServer(handler) as server:` serves on `server.url` until the block ends."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[RecordedRequest] = []
        self.stall_began = asyncio.Event()
        self._released = asyncio.Event()
        self._closing = asyncio.Event()
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._connections_changed = asyncio.Condition()
        self._handler_errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> "HttpServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
        if exc is None and self._handler_errors:
            raise RuntimeError("the fake's handler failed") from self._handler_errors[0]

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
        # Aborting the transports ends every connection task through its own reads and writes;
        # cancelling them instead trips an asyncio 3.11 callback that logs the CancelledError.
        for writer in list(self._connections.values()):
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def wait_for_connections(self, count: int) -> None:
        """Wait until exactly `count` client connections are open (0: every client hung up)."""
        async with self._connections_changed:
            await self._connections_changed.wait_for(lambda: len(self._connections) == count)

    def release_stalls(self) -> None:
        """Let every stalled response (now or later) carry on sending."""
        self._released.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        await self._track(task, writer)
        try:
            while not self._closing.is_set():
                request = await _read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                try:
                    outcome = await self._handler(request)
                except Exception as err:
                    logger.exception("fake upstream handler failed")
                    self._handler_errors.append(err)
                    outcome = Response(500, {"content-type": "text/plain"}, b"fake handler failed")
                if not await self._respond(request, outcome, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()
            await self._untrack(task)

    async def _track(self, task: asyncio.Task[None], writer: asyncio.StreamWriter) -> None:
        async with self._connections_changed:
            self._connections[task] = writer
            self._connections_changed.notify_all()

    async def _untrack(self, task: asyncio.Task[None]) -> None:
        async with self._connections_changed:
            self._connections.pop(task, None)
            self._connections_changed.notify_all()

    async def _respond(
        self,
        request: RecordedRequest,
        outcome: Response | Fault,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Send one response; return whether the connection stays open for another request."""
        if isinstance(outcome, Fault):
            # Nothing was sent, so even a released stall has nothing to carry on with.
            await self._fault(outcome, reader, writer)
            return False
        keep_alive = request.headers.get("connection", "").lower() != "close"
        headers = {name.lower(): value for name, value in outcome.headers.items()}
        headers.setdefault("connection", "keep-alive" if keep_alive else "close")
        if isinstance(outcome.body, bytes):
            headers["content-length"] = str(len(outcome.body))
            writer.write(_head(outcome.status, headers) + outcome.body)
            await writer.drain()
            return keep_alive
        headers["transfer-encoding"] = "chunked"
        writer.write(_head(outcome.status, headers))
        await writer.drain()
        async for chunk in outcome.body:
            if isinstance(chunk, Fault):
                if not await self._fault(chunk, reader, writer):
                    return False
                continue
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive

    async def _fault(self, fault: Fault, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Apply a fault; return True only when a stall was released and sending may go on."""
        if fault is STALL:
            return await self._stall(reader)
        await _flushed(writer)
        if fault is RESET:
            _abort(writer)
        else:
            writer.close()
        return False

    async def _stall(self, reader: asyncio.StreamReader) -> bool:
        self.stall_began.set()
        waits = {
            asyncio.ensure_future(self._released.wait()): "released",
            asyncio.ensure_future(self._closing.wait()): "closing",
            asyncio.ensure_future(_peer_gone(reader)): "gone",
        }
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return any(waits[wait] == "released" for wait in done)


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as err:
        if err.partial.strip():
            raise
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers = Headers(_split_header(line) for line in header_lines if line)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RecordedRequest(method, target, headers, body)


def _split_header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


async def _flushed(writer: asyncio.StreamWriter) -> None:
    """Wait until what was written has left this socket, so the peer has it before a close."""
    await writer.drain()
    for _ in range(1000):
        if writer.transport.get_write_buffer_size() == 0 and _unsent_bytes(writer) == 0:
            return
        await asyncio.sleep(0.001)


def _unsent_bytes(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _peer_gone(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        await reader.read(1)


class FakeUpstream:
    """A fake upstream served by an `HttpServer`: `async with Fake(...) as fake:` then use `fake.base_url`.

    Subclasses set `self.server = HttpServer(self._handle)` and may override `base_url`.
    """

    server: HttpServer

    async def __aenter__(self: Self) -> Self:
        await self.server.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.server.__aexit__(exc_type, exc, tb)

    @property
    def base_url(self) -> str:
        return self.server.url
