"""The parent's side of the offline model: starts, watches, restarts and stops its server process.

The supervisor owns the listening socket and hands it to each child, so the address never
changes across restarts and no other process can take the port in between. A child that dies
is restarted with backoff on the injected clock; while it is down, requests wait in the
socket's backlog until the next child accepts them (or the caller's own timeout fires).

The child runs `integrations.local_model.server` rather than `python -m llama_cpp.server`: that
CLI cannot take an inherited socket, reads stray environment variables as settings, and leaves a
few gaps to the OpenAI API that the bot relies on.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Sequence

import httpx

from integrations.local_model.bundle import LOCAL_ALIAS, LOCAL_CONTEXT_TOKENS, LOCAL_THREADS

if TYPE_CHECKING:
    from integrations.clock import Clock

log = logging.getLogger(__name__)

# The child's entry point, run with `python -m`.
SERVER_MODULE = "integrations.local_model.server"
# Only these reach the child: it needs no secret, and llama-cpp-python's settings read any
# environment variable named like one of its options (PORT, HOST, API_KEY, MODEL, CONFIG_FILE...).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_POLL_INTERVAL = 0.05
_STOP_GRACE = 5.0
_LOG_TAIL_BYTES = 4096
_LOG_TAIL_LINES = 12


class LocalModelError(Exception):
    """The local model server could not be started; the message ends with its last log lines."""


class LocalModelServer:
    """Starts, watches, restarts and stops the llama.cpp server child process."""

    def __init__(
        self,
        clock: Clock,
        *,
        model_path: Path,
        alias: str = LOCAL_ALIAS,
        python: str = sys.executable,
        startup_timeout: float = 60.0,
        restart_backoff: Sequence[float] = (1, 2, 5, 10, 30),
        stable_after: float = 60.0,
        log_path: Path | None = None,
        context_tokens: int = LOCAL_CONTEXT_TOKENS,
        threads: int = LOCAL_THREADS,
    ) -> None:
        self._clock = clock
        self._model_path = Path(model_path).absolute()
        self.alias = alias
        self._python = python
        self._startup_timeout = startup_timeout
        self._backoff = tuple(restart_backoff) or (1.0,)
        # A child that ran this long before dying starts the backoff from the beginning again.
        self._stable_after = stable_after
        self._log_path = log_path
        self._owns_log = log_path is None
        self._context_tokens = context_tokens
        self._threads = threads
        self._socket: socket.socket | None = None
        self._log: IO[bytes] | None = None
        # Where the current child's output starts in the log, so its tail is about this child.
        self._log_mark = 0
        self._process: asyncio.subprocess.Process | None = None
        self._launched_at = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    def __repr__(self) -> str:
        where = self.base_url if self._socket is not None else "not started"
        return f"LocalModelServer(alias={self.alias!r}, {where}, pid={self.pid})"

    @property
    def base_url(self) -> str:
        if self._socket is None:
            raise RuntimeError("the local model server has not been started")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    async def start(self) -> str:
        """Start the server and wait until it answers; return its OpenAI base URL."""
        if self._socket is not None:
            raise RuntimeError("the local model server is already started")
        self._stopping = False
        self._socket = _listening_socket()
        self._open_log()
        try:
            await self._launch()
        except BaseException:
            await self.stop()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="local-model-supervisor")
        log.info("offline model %s ready at %s (pid %s)", self.alias, self.base_url, self.pid)
        return self.base_url

    async def stop(self) -> None:
        """Stop supervising, end the child (TERM, then KILL after a grace period), free the port."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if self._process is not None:
            await _terminate(self._process)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    async def _launch(self) -> None:
        assert self._socket is not None and self._log is not None
        listen_fd = self._socket.fileno()
        self._log_mark = os.lseek(self._log.fileno(), 0, os.SEEK_END)
        self._process = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            SERVER_MODULE,
            "--listen-fd", str(listen_fd),
            "--parent-pid", str(os.getpid()),
            "--model", str(self._model_path),
            "--alias", self.alias,
            "--n-ctx", str(self._context_tokens),
            "--threads", str(self._threads),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(listen_fd,),
            # Its own process group, so stopping it reaches anything it starts, and a Ctrl-C
            # meant for the bot does not hit it before the bot has shut it down in order.
            start_new_session=True,
            env=_child_env(),
            # `-m` looks in the working directory first: make sure it finds this project.
            cwd=_PROJECT_ROOT,
        )
        self._launched_at = self._clock.monotonic()
        try:
            await self._wait_ready(self._process)
        except BaseException:
            await _terminate(self._process)
            raise

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> None:
        # Real time on purpose: this waits for a real process to load its weights (about a second).
        polling = asyncio.ensure_future(self._poll_until_ready())
        exited = asyncio.ensure_future(process.wait())
        try:
            done, _ = await asyncio.wait(
                {polling, exited}, timeout=self._startup_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            polling.cancel()
            exited.cancel()
        if polling in done:
            polling.result()
            return
        if exited in done:
            raise LocalModelError(
                f"the offline model server exited during startup ({_describe_exit(process.returncode)})"
                f"{self._log_tail()}"
            )
        raise LocalModelError(f"the offline model server was not ready within {self._startup_timeout:g} s{self._log_tail()}")

    async def _poll_until_ready(self) -> None:
        url = f"{self.base_url}/models"
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0), trust_env=False) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(url)
                    if response.status_code == 200:
                        return
                await asyncio.sleep(_POLL_INTERVAL)

    async def _supervise(self) -> None:
        failures = 0
        while True:
            process = self._process
            assert process is not None
            code = await process.wait()
            if self._stopping:
                return
            if self._clock.monotonic() - self._launched_at >= self._stable_after:
                failures = 0
            log.warning(
                "offline model server (pid %s) stopped unexpectedly (%s)%s",
                process.pid, _describe_exit(code), self._log_tail(),
            )
            failures = await self._restart(failures)

    async def _restart(self, failures: int) -> int:
        """Launch again after a backoff that grows with each failure; return the failure count."""
        while True:
            delay = self._backoff[min(failures, len(self._backoff) - 1)]
            failures += 1
            log.warning("restarting the offline model server in %g s (attempt %d)", delay, failures)
            await self._clock.sleep(delay)
            try:
                await self._launch()
            except LocalModelError as error:
                log.warning("offline model restart failed: %s", error)
                continue
            except Exception:
                log.exception("offline model restart failed")
                continue
            self.restarts += 1
            log.info("offline model server restarted (pid %s, restart %d)", self.pid, self.restarts)
            return failures

    def _open_log(self) -> None:
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix="switchboard-local-model-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        # One handle shared by every child, so a crash's traceback is still there after the restart.
        # Private like every file in the state directory: a prompt can end up in a traceback.
        descriptor = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)
        self._log = os.fdopen(descriptor, "wb")

    def _log_tail(self) -> str:
        if self._log_path is None:
            return ""
        try:
            with open(self._log_path, "rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                log_file.seek(max(self._log_mark, log_file.tell() - _LOG_TAIL_BYTES))
                text = log_file.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()][-_LOG_TAIL_LINES:]
        if not lines:
            return ""
        # A log file of our own is deleted at stop, so naming it would send the operator nowhere.
        where = "" if self._owns_log else f" ({self._log_path})"
        return f". Last lines of its log{where}:\n" + "\n".join(lines)


def _listening_socket() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server


def _child_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in _INHERITED_ENV if name in os.environ}
    env["PYTHONPATH"] = str(_PROJECT_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    # OpenMP workers spin between tokens by default; on a busy 2-CPU host that starved the other
    # worker and cut generation from ~30 to ~5 tokens/s (first token 10 s instead of 1 s).
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    for sig, grace in ((signal.SIGTERM, _STOP_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), grace)
            return
        except TimeoutError:
            log.warning("offline model server (pid %s) ignored SIGTERM for %g s; killing it", process.pid, grace)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"
