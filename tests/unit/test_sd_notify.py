"""sd_notify as systemd receives it: datagrams on a real AF_UNIX socket, time on a manual clock."""
import asyncio
import os
import socket
import tempfile
from pathlib import Path

import pytest

from bot.systemd import Notifier, heartbeat
from integrations.clock import ManualClock

# sun_path holds 108 bytes; pytest's tmp_path can be longer than that for long test names.
_SUN_PATH_MAX = 107


@pytest.fixture
def systemd_socket(tmp_path):
    """A datagram socket where systemd would listen; yields (NOTIFY_SOCKET value, socket)."""
    path = tmp_path / "notify"
    short_dir = None
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        short_dir = tempfile.mkdtemp(prefix="sd")
        path = Path(short_dir) / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.setblocking(False)
    yield str(path), receiver
    receiver.close()
    path.unlink(missing_ok=True)
    if short_dir:
        os.rmdir(short_dir)


def received(receiver: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(receiver.recv(65536).decode())
        except BlockingIOError:
            return messages


def test_ready_status_and_stopping_reach_the_socket_as_systemd_expects(systemd_socket):
    address, receiver = systemd_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.ready("serving as @bot") and notifier.status("2 replies in flight") and notifier.stopping()
    assert received(receiver) == ["READY=1\nSTATUS=serving as @bot", "STATUS=2 replies in flight", "STOPPING=1"]
    notifier.close()


def test_abstract_socket_name_is_reached():
    name = f"switchboard-test-{os.getpid()}-{id(object())}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.setblocking(False)
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert received(receiver) == ["WATCHDOG=1"]
    finally:
        receiver.close()


def test_status_stays_on_one_line_so_it_cannot_inject_other_assignments(systemd_socket):
    address, receiver = systemd_socket
    Notifier.from_environment({"NOTIFY_SOCKET": address}).status("two\nlines READY=1\n")
    assert received(receiver) == ["STATUS=two lines READY=1"]


def test_outside_systemd_every_call_is_a_no_op():
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False and notifier.stopping() is False


def test_a_vanished_socket_is_reported_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready() is False
    assert notifier.status("still running") is False
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1


def test_watchdog_pings_at_half_the_watchdog_period_and_only_for_the_process_it_names():
    environ = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environment(environ).watchdog_interval == 15.0
    assert Notifier.from_environment({**environ, "WATCHDOG_PID": "4242"}, pid=4242).watchdog_interval == 15.0
    assert Notifier.from_environment({**environ, "WATCHDOG_PID": "1"}, pid=4242).watchdog_interval is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/run/x"}).watchdog_interval is None


async def test_heartbeat_pings_every_half_period_with_a_fresh_status(systemd_socket):
    address, receiver = systemd_socket
    clock = ManualClock()
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"})
    in_flight = [0]
    beat = asyncio.ensure_future(heartbeat(notifier, clock, lambda: f"serving; {in_flight[0]} replies in flight"))
    await clock.advance(0)
    in_flight[0] = 2
    await clock.advance(45)
    beat.cancel()
    messages = received(receiver)
    assert messages == ["WATCHDOG=1", "STATUS=serving; 0 replies in flight"] + ["WATCHDOG=1", "STATUS=serving; 2 replies in flight"] * 3


async def test_heartbeat_pings_before_a_slow_status_line_and_skips_a_status_that_hangs(systemd_socket):
    address, receiver = systemd_socket
    clock = ManualClock()
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"})
    database_answers = asyncio.Event()

    async def summary():
        await database_answers.wait()
        return "serving; outbox 3"

    beat = asyncio.ensure_future(heartbeat(notifier, clock, summary))
    await clock.advance(0)
    assert received(receiver) == ["WATCHDOG=1"]
    await clock.advance(14.9)  # the status line gave up after 5 s; the pings keep their pace
    assert received(receiver) == []
    await clock.advance(0.1)
    assert received(receiver) == ["WATCHDOG=1"]
    database_answers.set()
    await clock.advance(15)
    beat.cancel()
    assert received(receiver) == ["STATUS=serving; outbox 3", "WATCHDOG=1", "STATUS=serving; outbox 3"]


async def test_heartbeat_without_watchdog_still_refreshes_the_status(systemd_socket):
    address, receiver = systemd_socket
    clock = ManualClock()
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    beat = asyncio.ensure_future(heartbeat(notifier, clock, lambda: "serving", status_interval=10))
    await clock.advance(20)
    beat.cancel()
    assert received(receiver) == ["STATUS=serving"] * 3


async def test_heartbeat_skips_pings_while_the_service_says_it_is_unhealthy(systemd_socket):
    address, receiver = systemd_socket
    clock = ManualClock()
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000000"})
    healthy = [True]
    beat = asyncio.ensure_future(heartbeat(notifier, clock, lambda: "s", healthy=lambda: healthy[0]))
    await clock.advance(10)
    healthy[0] = False
    await clock.advance(20)
    beat.cancel()
    assert received(receiver) == ["WATCHDOG=1", "STATUS=s", "WATCHDOG=1", "STATUS=s", "STATUS=s", "STATUS=s"]


class LateClock(ManualClock):
    """A clock whose sleeps end `late` seconds after they should: a starved event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.late = 0.0

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self.late)


async def test_heartbeat_skips_a_ping_after_the_loop_ran_far_behind(systemd_socket, caplog):
    address, receiver = systemd_socket
    clock = LateClock()
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000000"})
    clock.late = 12.0  # the first sleep of 10 s takes 22 s
    beat = asyncio.ensure_future(heartbeat(notifier, clock, lambda: "s"))
    await clock.advance(0)
    clock.late = 0.0
    await clock.advance(22)
    await clock.advance(10)
    beat.cancel()
    assert received(receiver) == ["WATCHDOG=1", "STATUS=s", "STATUS=s", "WATCHDOG=1", "STATUS=s"]
    assert any("ran 12.0 s late" in r.getMessage() for r in caplog.records)


async def test_heartbeat_outside_systemd_returns_at_once():
    clock = ManualClock()
    await asyncio.wait_for(heartbeat(Notifier(), clock, lambda: "s"), 1)
    assert clock.sleepers == 0
