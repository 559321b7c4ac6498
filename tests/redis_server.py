"""A real redis-server for the tests, on a free loopback port in a temporary directory, no persistence.

The fixtures in tests/conftest.py start one per test session (`redis_session`), flush it before
every test that asks for `redis_server` or `redis_url`, and stop it after the session.
A test may `stop()` it (Redis "dies") and `start()` it again on the same port, or `freeze()` it
(Redis hangs) and `thaw()` it. Without the redis-server program (`make test` installs Debian's
package) the tests that need it are skipped, saying so.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

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
                "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "notice",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # Ready once it says so (its log, at notice level): waited for line by line, not polled.
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if b"Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        client = redis.Redis(port=self.port)
        # From now on only warnings, so the pipe nobody reads any more cannot fill up.
        client.config_set("loglevel", "warning")
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
