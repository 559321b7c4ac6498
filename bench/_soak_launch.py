"""Bot processes for the crash soak: forked from a warm interpreter, or started cold as an operator would.

A new interpreter spends 1.5-3 s of CPU importing the SDKs before the bot does anything: most of
the cost of a soak of a hundred runs. So `python bench/_soak_launch.py FD` (the fork server)
imports the bot's modules once and, for each run, forks a process that calls the entry as a
fresh interpreter would: `bot.__main__.main(["console"])`, which is what `python -m bot console`
runs, or the Telegram child's `main`, with its own stdin, stdout, stderr, environment and working
directory. Before the fork nothing is opened (no settings, state, sockets, event loop or thread),
so each process starts from what a cold start has after its imports, and SIGKILL ends it as it
ends any process. `Launcher(warm=False)` starts each run's command itself instead.

The fork server and the soak talk over a SOCK_SEQPACKET socket: the soak sends
`{"entry", "args", "env", "cwd"}` with the process's stdin, stdout and stderr attached
(SCM_RIGHTS) and gets `{"pid"}`; `{"exited", "code"}` follows when the process has ended.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import select
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any, Callable, Sequence

REAP_INTERVAL = 0.05  # seconds between looks for ended processes
FORK_TIMEOUT = 60.0  # for the fork server's first answer (its imports) and every later one


class BotProcess:
    """A bot process as the soak drives it: input, output, signals, exit."""

    def __init__(self, pid: int, exited: asyncio.Future[int], stdin: Any, stdout: asyncio.StreamReader | None) -> None:
        self.pid = pid
        self.stdout = stdout
        self._exited = exited
        self._stdin = stdin  # anything with write(bytes) and close(), or None

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    def write(self, data: bytes) -> None:
        if self._stdin is not None:
            self._stdin.write(data)

    def close_stdin(self) -> None:
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        code = await asyncio.shield(self._exited)
        self.close_stdin()
        return code


class _PipeInput:
    """Our end of a forked process's stdin (a batch of lines at a time: far below the pipe's buffer)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except BrokenPipeError:
            pass  # it died already

    def close(self) -> None:
        os.close(self._fd)


class Launcher:
    """`await launcher.start()`: a new bot process; `await launcher.close()` when done."""

    def __init__(
        self, cold: Sequence[str], entry: Sequence[str], *, env: dict[str, str], cwd: Path, log: IO[bytes],
        console: bool, warm: bool,
    ) -> None:  # fmt: skip
        """`cold` is the command as an operator types it; `entry` the same for the fork server:
        "console" or "telegram", then its arguments."""
        self._cold = list(cold)
        self._entry = list(entry)
        self._env = env
        self._cwd = cwd
        self._log = log
        self._console = console
        self._warm = warm
        self._server: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._listening: asyncio.Task[None] | None = None
        self._started: asyncio.Queue[int] = asyncio.Queue()
        self._exits: dict[int, asyncio.Future[int]] = {}

    async def start(self) -> BotProcess:
        if not self._warm:
            return await self._start_cold()
        if self._control is None:
            await self._open_server()
        assert self._control is not None
        loop = asyncio.get_running_loop()
        ours, theirs = _pipes(self._console)
        request = {"entry": self._entry[0], "args": self._entry[1:], "env": self._env, "cwd": str(self._cwd)}
        socket.send_fds(self._control, [json.dumps(request).encode()], [*theirs, self._log.fileno()])
        pid = await asyncio.wait_for(self._started.get(), FORK_TIMEOUT)
        for fd in theirs:
            os.close(fd)
        exited = self._exits.setdefault(pid, loop.create_future())
        stdin, stdout = ours
        return BotProcess(
            pid, exited, _PipeInput(stdin) if stdin is not None else None, await _reader(stdout) if stdout is not None else None
        )

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()  # the fork server exits
        if self._server is not None:
            await self._server.wait()
        if self._listening is not None:
            self._listening.cancel()

    async def _open_server(self) -> None:
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control.setblocking(False)
        with theirs:
            self._server = await asyncio.create_subprocess_exec(
                sys.executable, __file__, str(theirs.fileno()), pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=self._log,
                env=self._env, cwd=self._cwd,
            )  # fmt: skip
        self._listening = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        assert self._control is not None
        loop = asyncio.get_running_loop()
        while packet := await loop.sock_recv(self._control, 4096):
            message = json.loads(packet)
            if "pid" in message:
                self._started.put_nowait(message["pid"])
            else:
                exited = self._exits.setdefault(message["exited"], loop.create_future())
                exited.set_result(message["code"])

    async def _start_cold(self) -> BotProcess:
        pipe = asyncio.subprocess.PIPE if self._console else asyncio.subprocess.DEVNULL
        process = await asyncio.create_subprocess_exec(
            *self._cold, stdin=pipe, stdout=pipe, stderr=self._log, env=self._env, cwd=self._cwd
        )
        return BotProcess(process.pid, asyncio.ensure_future(process.wait()), process.stdin, process.stdout)


def _pipes(console: bool) -> tuple[tuple[int | None, int | None], list[int]]:
    """(our end of stdin, our end of stdout), and the process's stdin and stdout."""
    if not console:
        null = os.open(os.devnull, os.O_RDWR)
        return (None, None), [null, os.dup(null)]
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    return (stdin_write, stdout_read), [stdin_read, stdout_write]


async def _reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    return reader


# --- the fork server ---------------------------------------------------------------------------


def serve(control: socket.socket) -> int:
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    import bot.__main__
    import bot.app  # the heavy part: every SDK the bot uses
    import bot.telegram.service
    from bench import _soak_telegram_child

    entries: dict[str, Callable[[list[str]], int]] = {
        "console": lambda args: bot.__main__.main(["console", *args]),
        "telegram": _soak_telegram_child.main,
    }
    if threading.active_count() != 1:
        print("the fork server has threads after its imports; forking would be unsafe", file=sys.stderr)
        return 1
    running: set[int] = set()
    while True:
        if select.select([control], [], [], REAP_INTERVAL)[0]:
            packet, fds, _, _ = socket.recv_fds(control, 65536, 3)
            if not packet:
                return 0  # the soak is done
            pid = os.fork()
            if pid == 0:
                control.close()
                os._exit(_run_forked(entries, json.loads(packet), fds))
            running.add(pid)
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"pid": pid}).encode())
        for pid in list(running):
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                running.discard(pid)
                control.send(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode())


def _run_forked(entries: dict[str, Callable[[list[str]], int]], request: dict[str, Any], fds: list[int]) -> int:
    """In the forked process: take its stdio, environment and directory, then run as a fresh
    process would. Whatever happens, it returns an exit code: it must never get back to serving."""
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # a fresh interpreter seeds from the OS, not from its parent's state
        code = entries[request["entry"]](request["args"])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:  # noqa: BLE001  (anything, KeyboardInterrupt included, ends this process)
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    return code


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("The fork server of bench/crash_soak.py (which starts it); nothing to do on its own.", file=sys.stderr)
        return 0
    return serve(socket.socket(fileno=int(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
