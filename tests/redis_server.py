"""A real redis-server for the tests: one per test session on a free loopback port, no persistence.

`redis_url` (a fixture: import it into a test module) starts the server the first time a test
needs it, flushes it before every test, and the server is stopped when the test process ends.
A test may `stop()` it (Redis "dies") and `start()` it again on the same port, or `freeze()` it
(Redis hangs) and `thaw()` it. Without the
redis-server program (`make test` installs Debian's package) the tests that need it are skipped,
saying so.
"""
from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis


class RedisServer:
    def __init__(self, program: str) -> None:
        self.program = program
        self.directory = Path(tempfile.mkdtemp(prefix="switchboard-redis-"))
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self.program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        """Kill it, as a crash would (SIGKILL): connections drop, nothing is saved."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def freeze(self) -> None:
        """Stop it answering without closing anything (SIGSTOP): calls hang until they time out."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self._process is not None and self.frozen:
            self._process.send_signal(signal.SIGCONT)
        self.frozen = False

    def flush(self) -> None:
        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


_server: RedisServer | None = None


def session_server() -> RedisServer:
    """The test session's server, started on first use and stopped when the process exits."""
    global _server
    program = shutil.which("redis-server")
    if program is None:
        pytest.skip("redis-server is not installed here; `make test` installs it (apt-get install redis-server)")
    if _server is None:
        _server = RedisServer(program)
        atexit.register(_server.close)
    if not _server.running:
        _server.start()
    return _server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = session_server()
    server.flush()
    yield server
    server.thaw()
    if not server.running:  # a test that killed it: the next one gets it back
        server.start()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
