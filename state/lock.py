"""One bot per state directory: an exclusive lock held for as long as the bot runs.

Two processes answering from one database would answer the same messages twice (each resumes
the other's unfinished ones). The lock is `flock` on a file in the state directory: the kernel
drops it when the process ends, however it ends, so a crash never leaves a stale lock behind.
The file names the holder (pid and command line), so the refusal can say who it is.
"""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from types import TracebackType

LOCK_NAME = "switchboard.lock"


class StateDirectoryBusy(Exception):
    """Another process holds the state directory; the message names it and says what to do."""


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self._path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self._path

    def acquire(self) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateDirectoryBusy(
                f"another Switchboard ({holder}) is using the state directory {self._path.parent}; "
                "stop it first, or give this one its own STATE_DIR"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(_command_line())}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not said its pid yet"


def _command_line() -> list[str]:
    """The program name and subcommand only: arguments could hold a path an operator prefers private."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return [name, *(arg for arg in sys.argv[1:2] if not arg.startswith("-"))]
