"""Telling systemd how the service is doing: the sd_notify protocol, spoken directly.

systemd passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) to a `Type=notify`
service; each datagram sent there is a few `KEY=value` lines (READY=1, STATUS=..., STOPPING=1,
WATCHDOG=1, EXTEND_TIMEOUT_USEC=...). With `WatchdogSec=` it also passes `WATCHDOG_USEC`, and
restarts the service when the pings stop. Outside systemd there is no socket and every call is a
no-op.

The pings come from a task on the event loop (`heartbeat`), never from a thread: a loop that is
blocked or starved cannot ping, so systemd restarts the bot instead of leaving it hung.
"""
from __future__ import annotations

import inspect
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

from integrations.clock import Clock, wait_for

log = logging.getLogger(__name__)

# STATUS= when no watchdog asks for more often: what `systemctl status` shows stays this fresh.
STATUS_INTERVAL = 15.0
# A status line that takes longer than this to build (a slow database) is skipped this time.
STATUS_TIMEOUT = 5.0

Summary = Callable[[], "str | Awaitable[str]"]


@dataclass
class Notifier:
    """Sends sd_notify messages to `address`; does nothing when `address` is None."""

    address: str | bytes | None = None
    # Seconds between watchdog pings (half of WATCHDOG_USEC, as sd_watchdog_enabled advises).
    watchdog_interval: float | None = None
    _socket: socket.socket | None = field(default=None, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], pid: int | None = None) -> "Notifier":
        address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        return cls(address, _watchdog_interval(environ, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status_line(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status_line(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float, status: str | None = None) -> bool:
        """Still starting (or stopping) and making progress: give us `seconds` more than systemd's
        TimeoutStartSec= (or TimeoutStopSec=) would, counted from now."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}", *_status_line(status))

    def notify(self, *assignments: str) -> bool:
        """Send one datagram; True if it left. A failure is logged once and never raised."""
        if self.address is None or not assignments:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full queue on systemd's side must not stall the event loop: drop instead.
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(assignments).encode(), self.address)
            return True
        except OSError as error:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", _printable(self.address), error)
            return False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(value: str) -> str | bytes | None:
    value = value.strip()
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # Empty, or a vsock address (vsock:CID:PORT), which only VMs talking to their host use.
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    watchdog_pid = environ.get("WATCHDOG_PID", "").strip()
    if watchdog_pid and watchdog_pid != str(pid):
        return None  # meant for another process (we were started by the service's main process)
    try:
        microseconds = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return microseconds / 2 / 1_000_000 if microseconds > 0 else None


def _status_line(text: str | None) -> list[str]:
    if text is None:
        return []
    return ["STATUS=" + " ".join(text.split())]  # one line: a newline would end the assignment


def _printable(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address


async def heartbeat(
    notifier: Notifier,
    clock: Clock,
    summary: Summary,
    *,
    status_interval: float = STATUS_INTERVAL,
    max_lag: float | None = None,
    healthy: Callable[[], bool] = lambda: True,
) -> None:
    """Ping the watchdog every `notifier.watchdog_interval` and refresh STATUS=, until cancelled.

    A ping is skipped when `healthy()` says no, or when the last sleep overran by more than
    `max_lag` (default: one ping interval): the loop was starved for half the watchdog period,
    so systemd should see the pings stop rather than a bot that only looks alive. The ping goes
    out before the status line is built, so a slow `summary` cannot delay it.
    """
    if not notifier.enabled:
        return
    interval = notifier.watchdog_interval
    tick = min(interval, status_interval) if interval else status_interval
    max_lag = tick if max_lag is None else max_lag
    lag = 0.0
    while True:
        started = clock.monotonic()
        if interval:
            if lag > max_lag:
                log.warning("event loop ran %.1f s late; skipping a watchdog ping", lag)
            elif not healthy():
                log.warning("service reports itself unhealthy; skipping a watchdog ping")
            else:
                notifier.watchdog()
        text = await _status_text(summary, clock, min(STATUS_TIMEOUT, tick / 2))
        if text is not None:
            notifier.status(text)
        # Sleep what is left of the tick, so building the status does not stretch the interval.
        pause = max(0.0, tick - (clock.monotonic() - started))
        before = clock.monotonic()
        await clock.sleep(pause)
        lag = clock.monotonic() - before - pause


async def _status_text(summary: Summary, clock: Clock, timeout: float) -> str | None:
    try:
        text = summary()
        if inspect.isawaitable(text):
            text = await wait_for(clock, text, timeout)
        return text
    except Exception:
        log.warning("building the status line failed", exc_info=True)
        return None
