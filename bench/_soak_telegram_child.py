"""The bot process of the crash soak on Telegram: the real app, served as `run_telegram` serves it.

Everything is the product's own (settings from the environment, the state lock, `build_app`,
`GovernedTransport(TelegramTransport(client))`, `TelegramRunner` resuming unfinished messages
before new ones, `TelegramService` draining on SIGTERM) except the client: instead of Telethon
it speaks to the soak's fake Telegram in the bench process over a socket
(bench/_soak_telegram_server.py), and raises Telethon's own errors where Telegram refuses. It
keeps its update state as Telethon does (bench/_soak_update_state.py: a message box advanced by
each update it applies, written into its session file on disconnect and once a minute), so the
catch-up handover (bot/telegram/catch_up.py) works on it unchanged, between leaders and across a
lone instance's restarts alike.

Run by bench/crash_soak.py: forked by bench/_soak_launch.py, which calls `main([PORT])`, or with
`--cold` as `python bench/_soak_telegram_child.py PORT`; killed with SIGKILL at random moments, or
stopped with SIGTERM at the end.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import sys
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from telethon import errors, functions, types  # noqa: E402

from bench._soak_telegram_server import BOT_ID, BOT_USERNAME  # noqa: E402
from bench._soak_update_state import NoEntities, SocketMessageBox, SocketSession  # noqa: E402
from tests.fakes.telegram import new_message_event  # noqa: E402

log = logging.getLogger(__name__)

BOT_TOKEN = "123456:" + "A" * 35
SAVE_EVERY = 60.0  # seconds between two writes of the session, as Telethon's keepalive loop does
ME = types.User(id=BOT_ID, bot=True, username=BOT_USERNAME, first_name="Switchboard")
# What Telegram's refusals become, as Telethon raises them.
REFUSALS: dict[str, Callable[[], Exception]] = {
    "MESSAGE_NOT_MODIFIED": lambda: errors.MessageNotModifiedError(request=None),
    "MESSAGE_ID_INVALID": lambda: errors.MessageIdInvalidError(request=None),
    "PEER_ID_INVALID": lambda: ValueError("Could not find the input entity for the chat"),
}


class SocketTelegramClient:
    """The part of Telethon's `TelegramClient` the bot uses, over the soak's socket.

    Like Telethon with `catch_up=True`, it asks for what it missed on start: from the state in its
    session (getDifference, slice after slice), or from now when it has none (getState). Updates
    pushed meanwhile are postponed until the difference is applied (core.telegram.org/api/updates);
    each applied update advances the message box's pts before its handlers run, each handler in its
    own task (`_event_handler_tasks`, as Telethon names them). With `receive_updates=False` every
    call says so (Telethon wraps each in InvokeWithoutUpdates) and Telegram pushes it nothing until
    `set_receive_updates(True)`; `catch_up()` then gets the difference from its message box."""

    def __init__(self, port: int, session: Path | None = None, *, receive_updates: bool = True) -> None:
        self._port = port
        self._receive_updates = receive_updates
        self.session = SocketSession(session)
        self._message_box = SocketMessageBox()
        self._mb_entity_cache = NoEntities()
        self._event_handler_tasks: set[asyncio.Task[Any]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._handlers: list[tuple[Callable[[Any], Any], Any]] = []
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._disconnected = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._catching_up = False
        self._postponed: list[dict[str, Any]] = []
        self._saving: asyncio.Task[None] | None = None

    async def start(self, bot_token: str | None = None, **_: Any) -> SocketTelegramClient:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._disconnected.clear()
        account = dict(self.session.get_update_states()).get(0)
        if account is not None:
            self._message_box.load(account)
        self._keep(self._listen(reader))
        await self._call("start")
        if self._receive_updates or self._message_box.is_empty():
            await self._get_difference()
        self._saving = asyncio.ensure_future(self._save_now_and_then())
        return self

    async def get_me(self, input_peer: bool = False) -> types.User:
        return ME

    def add_event_handler(self, callback: Callable[[Any], Any], event: Any = None) -> None:
        self._handlers.append((callback, event))

    def remove_event_handler(self, callback: Callable[[Any], Any], event: Any = None) -> int:
        before = len(self._handlers)
        self._handlers = [(cb, ev) for cb, ev in self._handlers if not (cb == callback and event in (None, ev))]
        return before - len(self._handlers)

    async def send_message(self, entity: int, message: str = "", *, reply_to: int | None = None, **_: Any) -> Any:
        return SimpleNamespace(id=await self._call("send", chat_id=entity, text=message, reply_to=reply_to))

    async def edit_message(self, entity: int, message: int, text: str | None = None, **_: Any) -> None:
        await self._call("edit", chat_id=entity, message_id=message, text=text or "")

    async def delete_messages(self, entity: int, message_ids: Any, *, revoke: bool = True) -> list[Any]:
        ids = [message_ids] if isinstance(message_ids, int) else list(message_ids)
        await self._call("delete", chat_id=entity, ids=ids)
        return []

    async def get_input_entity(self, peer: Any) -> Any:
        return peer  # the soak's Telegram addresses chats by their id

    async def __call__(self, request: Any, ordered: bool = False) -> Any:
        """A keyed send goes to the soak's Telegram, answered as Telegram does (a short answer in a
        private chat, `updateMessageID` in a group); typing and the command menu are accepted
        without a trip (the soak does not count them)."""
        if isinstance(request, functions.messages.SendMessageRequest):
            reply_to = request.reply_to.reply_to_msg_id if request.reply_to is not None else None
            message_id = await self._call(
                "send", chat_id=request.peer, text=request.message, reply_to=reply_to, random_id=request.random_id
            )
            if request.peer > 0:
                return types.UpdateShortSentMessage(out=True, id=message_id, pts=1, pts_count=1, date=None)
            return types.Updates(
                updates=[types.UpdateMessageID(message_id, request.random_id)], users=[], chats=[], date=None, seq=0
            )
        if not isinstance(request, (functions.messages.SetTypingRequest, functions.bots.SetBotCommandsRequest)):
            raise NotImplementedError(f"the soak's Telegram does not answer {type(request).__name__}")
        if not self.is_connected():
            raise ConnectionError("not connected to Telegram")
        return True

    async def set_receive_updates(self, receive_updates: bool) -> None:
        """As Telethon: a request made without InvokeWithoutUpdates (getState) has Telegram push updates."""
        self._receive_updates = receive_updates
        if receive_updates:
            await self._call("getState")

    async def catch_up(self) -> None:
        await self._get_difference()

    async def disconnect(self) -> None:
        if self._saving is not None:
            self._saving.cancel()
        if self._writer is not None:
            self._writer.close()
        self._disconnected.set()
        self._save_state()

    async def run_until_disconnected(self) -> None:
        await self._disconnected.wait()

    def is_connected(self) -> bool:
        return self._writer is not None and not self._disconnected.is_set()

    async def _call(self, call: str, **arguments: Any) -> Any:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("not connected to Telegram")
        request_id = next(self._ids)
        answer = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        without_updates = {} if self._receive_updates else {"without_updates": True}
        self._send({"id": request_id, "call": call, **arguments, **without_updates})
        try:
            reply = await answer
        finally:
            self._waiting.pop(request_id, None)
        if "error" in reply:
            raise REFUSALS[reply["error"]]()
        return reply["result"]

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "update" in message:
                    self._receive(message["update"])
                elif (answer := self._waiting.get(message["id"])) is not None and not answer.done():
                    answer.set_result(message)
        finally:
            self._disconnected.set()
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(ConnectionError("Telegram closed the connection"))

    def _receive(self, update: dict[str, Any]) -> None:
        """An update pushed by Telegram, checked against the local pts."""
        if self._catching_up or self._message_box.is_empty():
            self._postponed.append(update)
            return
        verdict = self._message_box.verdict(update["pts"], update["pts_count"])
        if verdict == "apply":
            self._message_box.pts = update["pts"]
            self._dispatch(update)
        elif verdict == "gap":
            self._postponed.append(update)
            self._keep(self._get_difference())

    async def _get_difference(self) -> None:
        """Catch up from the message box's state (or start from now without one), then go through
        what was pushed meanwhile: what the difference held is skipped by its pts."""
        if self._catching_up:
            return
        self._catching_up = True
        try:
            if self._message_box.is_empty():
                self._set_state(await self._call("getState"))
            else:
                while not self._apply(
                    await self._call("getDifference", pts=self._message_box.pts, date=self._message_box.date)
                ):
                    pass
        finally:
            self._catching_up = False
        postponed, self._postponed = self._postponed, []
        for update in postponed:
            self._receive(update)

    def _apply(self, difference: dict[str, Any]) -> bool:
        """Apply one answer of getDifference as Telethon's MessageBox does; True once it is the last."""
        kind = difference["_"]
        if kind == "differenceEmpty":
            self._message_box.date = difference["date"]
            return True
        if kind == "differenceTooLong":
            # Telethon goes on from the pts given: whatever lay between is never seen.
            log.warning("Telegram's difference is too long: going on from pts %s", difference["pts"])
            self._message_box.pts = difference["pts"]
            return True
        final = kind == "difference"
        self._set_state(difference["state"] if final else difference["intermediate_state"])
        for update in difference["new_messages"]:
            self._dispatch(update)
        return final

    def _set_state(self, state: dict[str, Any]) -> None:
        self._message_box.pts, self._message_box.date = state["pts"], state["date"]

    def _dispatch(self, update: dict[str, Any]) -> None:
        event = new_message_event(
            chat_id=update["chat_id"], sender_id=update["sender_id"], text=update["text"],
            message_id=update["message_id"], mentioned=True,
        )  # fmt: skip
        event.message.date = datetime.fromisoformat(update["date"])
        for callback, _ in self._handlers:
            task = asyncio.ensure_future(callback(event))
            self._event_handler_tasks.add(task)
            task.add_done_callback(self._event_handler_tasks.discard)

    async def _save_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY)
            self._save_state()

    def _save_state(self) -> None:
        """The message box into the session file (Telethon's `_save_states_and_entities` and `save`)."""
        if not self._message_box.is_empty():
            account, _ = self._message_box.session_state()
            self.session.set_update_state(0, types.updates.State(**account, unread_count=0))
            self.session.save()

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write((json.dumps(message) + "\n").encode())

    def _keep(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def serve(port: int) -> int:
    """`bot.telegram.service.run_telegram`, with the socket client in place of Telethon's."""
    from bot.app import build_app
    from bot.config import Secret, load_settings
    from bot.logs import configure_logging
    from bot.systemd import Notifier
    from bot.telegram.catch_up import SharedCatchUp
    from bot.telegram.flood_governor import FloodGovernor, GovernedTransport
    from bot.telegram.leadership import open_leadership
    from bot.telegram.service import TelegramService, share_work
    from bot.telegram.transport import TelegramRunner, TelegramTransport
    from integrations.clock import SystemClock
    from integrations.redaction import Redactor
    from state.lock import StateLock

    settings = load_settings()
    configure_logging(settings.log_level, Redactor(settings.secret_values()), log_format=settings.log_format)
    clock = SystemClock()
    async with AsyncExitStack() as stack:
        state_lock = stack.enter_context(StateLock(settings.state_dir))
        # With DATABASE_URL (bench/standby_soak.py): the lease holder receives, every instance answers.
        leadership = await open_leadership(settings, clock, stack)
        leading = leadership is None or await leadership.try_lead()
        client = SocketTelegramClient(port, settings.state_dir / "soak-telegram.session", receive_updates=leading)
        if leading and leadership is not None and leadership.catch_up is not None:
            await leadership.catch_up.lead(client, stack)
        governor = FloodGovernor(clock)
        transport = GovernedTransport(TelegramTransport(client), governor)
        app = await build_app(
            settings, clock, transport, stack, governor=governor, telegram_connected=client.is_connected, state_lock=state_lock
        )
        if leadership is None:
            await SharedCatchUp.of_one_instance(app.database, clock, settings.instance.name).lead(client, stack)
        menu = [(c.name, c.description) for c in app.router.commands if not c.admin_only]
        runner = TelegramRunner(client, Secret(BOT_TOKEN), app.router.handle, commands=menu)
        service = TelegramService(
            app, runner, Notifier.from_environment({}), clock, grace=settings.limits.shutdown_grace, leadership=leadership
        )
        share_work(settings, clock, stack, service, client, leading=leading)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, service.request_stop)
        return await service.run()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("The bot process of bench/crash_soak.py (which starts it); nothing to do on its own.", file=sys.stderr)
        return 0
    return asyncio.run(serve(int(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
