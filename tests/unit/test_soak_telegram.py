"""The soak's fake Telegram keeps the account's update sequence as Telegram does, and its socket
client catches up as Telethon does: from now without a state, by getDifference (slice after slice)
with one, and from the pts Telegram gives when the difference is too long. Real sockets on
127.0.0.1 with no added latency; every wait ends on a message handled, never on time."""
from __future__ import annotations

import asyncio
import random
from datetime import datetime, timezone

from bench._soak_telegram_child import SocketTelegramClient
from bench._soak_telegram_server import SoakTelegram
from bot.telegram.catch_up import seed, update_state_of

CHAT, USER = -100555, 4242


class Handled:
    """The texts a client's handler saw, in order, and a wait for the next one."""

    def __init__(self, client: SocketTelegramClient) -> None:
        self.texts: list[str] = []
        self._arrived: asyncio.Queue[str] = asyncio.Queue()
        client.add_event_handler(self._handle)

    async def _handle(self, event) -> None:
        self.texts.append(event.message.message)
        self._arrived.put_nowait(event.message.message)

    async def until(self, text: str) -> None:
        while await asyncio.wait_for(self._arrived.get(), 10) != text:
            pass


def telegram(**options) -> SoakTelegram:
    return SoakTelegram(random.Random(0), latency=(0.0, 0.0), **options)


def at_pts(client: SocketTelegramClient, pts: int) -> SocketTelegramClient:
    seed(client, {"pts": pts, "qts": 0, "date": int(datetime.now(timezone.utc).timestamp()), "seq": 0, "channels": {}})
    return client


async def test_a_client_without_an_update_state_starts_from_now(tmp_path):
    async with telegram() as server:
        server.user_sends(CHAT, USER, "before anyone logged in")
        client = SocketTelegramClient(server.port, tmp_path / "session")
        handled = Handled(client)
        await client.start()
        assert server.unacknowledged == 0  # it is at Telegram's state now: nothing waits for it
        server.user_sends(CHAT, USER, "after the login")
        await handled.until("after the login")
        await client.disconnect()
    assert handled.texts == ["after the login"]
    assert update_state_of(client)["pts"] == 2


async def caught_up(server: SoakTelegram, *, sent: int, from_pts: int) -> list[str]:
    """What a client whose session is at `from_pts` handles, `sent` messages having come, then one more."""
    for n in range(1, sent + 1):
        server.user_sends(CHAT, USER, f"message {n}")
    client = at_pts(SocketTelegramClient(server.port), from_pts)
    handled = Handled(client)
    await client.start()
    server.user_sends(CHAT, USER, "live")
    await handled.until("live")
    await client.disconnect()
    return handled.texts


async def test_a_client_behind_gets_what_it_missed_slice_by_slice_once():
    async with telegram(slice_size=2) as server:
        texts = await caught_up(server, sent=5, from_pts=1)
    assert texts == ["message 2", "message 3", "message 4", "message 5", "live"]
    assert server.handed_out_again == 0


async def test_a_client_further_behind_than_telegram_keeps_goes_on_from_now():
    async with telegram(kept=2) as server:
        texts = await caught_up(server, sent=5, from_pts=1)
    assert texts == ["live"]
    assert server.too_long == 1


async def test_a_restart_catches_up_from_the_state_its_session_file_last_saved(tmp_path):
    """A graceful stop saves the session (as Telethon does on disconnect); the next start gets only
    what came after it. A killed process never saved: it would get everything again."""
    async with telegram() as server:
        first = SocketTelegramClient(server.port, tmp_path / "session")
        handled = Handled(first)
        await first.start()
        server.user_sends(CHAT, USER, "one")
        await handled.until("one")
        await first.disconnect()
        server.user_sends(CHAT, USER, "while stopped")
        again = SocketTelegramClient(server.port, tmp_path / "session")
        handled = Handled(again)
        await again.start()
        await handled.until("while stopped")
        await again.disconnect()
    assert handled.texts == ["while stopped"]


async def test_a_worker_is_pushed_nothing_until_it_receives_then_catches_up_from_its_box(tmp_path):
    async with telegram() as server:
        worker = SocketTelegramClient(server.port, receive_updates=False)
        handled = Handled(worker)
        await worker.start()
        server.user_sends(CHAT, USER, "for the leader")
        assert server.unacknowledged == 1  # nobody receiving was handed it
        await worker.set_receive_updates(True)
        await worker.catch_up()
        await handled.until("for the leader")
        await worker.disconnect()
    assert handled.texts == ["for the leader"]
