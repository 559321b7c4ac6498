"""The crash soak's Telegram: the chats, the bot's messages, and every update until the bot has handled it.

It lives in the bench process and outlives every bot process. The bot (bench/_soak_telegram_child.py)
connects over TCP on 127.0.0.1 and speaks JSON lines:

    bot -> here  {"id": 1, "call": "start"}                                       -> {"id": 1, "result": true}
                 {"id": 2, "call": "send", "chat_id": c, "text": t, "reply_to": m} -> {"id": 2, "result": new id}
                 {"id": 3, "call": "edit", "chat_id": c, "message_id": m, "text": t}
                 {"id": 4, "call": "delete", "chat_id": c, "ids": [m, ...]}
                 {"ack": u}                         the handler of update u finished
    here -> bot  {"update": {"uid": u, "chat_id": c, "message_id": m, "sender_id": s, "text": t, "date": iso}}
                 {"id": 3, "error": "MESSAGE_NOT_MODIFIED"}    (or MESSAGE_ID_INVALID, PEER_ID_INVALID)

An update counts as received once the bot's handler for it finished (`ack`). On `start`, every
update not acknowledged yet is handed out before the login is answered (Telethon's catch-up), so a
process killed before its handler finished gets the message again. Each call travels a few
milliseconds each way: a process killed mid-call may leave the call done here without hearing so,
as with the real Telegram. Message ids are per chat and shared by users and the bot, as in a
supergroup.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Iterator

BOT_ID = 7001
BOT_USERNAME = "switchboard_bot"
LATENCY = (0.005, 0.03)  # seconds each way


@dataclass
class Posted:
    """A message in a chat as its members see it now."""

    id: int
    chat_id: int
    text: str
    by_bot: bool
    reply_to: int | None = None
    deleted: bool = False
    at: float = 0.0  # when it was posted, on the event loop's clock


class Refused(Exception):
    """What Telegram answers instead of doing the call (the name is Telegram's error)."""


class SoakTelegram:
    """`async with SoakTelegram(rng) as telegram:` then start bots against `telegram.port`."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._chats: dict[int, dict[int, Posted]] = defaultdict(dict)
        self._ids: dict[int, Iterator[int]] = defaultdict(lambda: itertools.count(1))
        self._unacknowledged: dict[int, dict[str, Any]] = {}
        self._by_random_id: dict[tuple[int, int], Posted] = {}
        self._handed_out: Counter[int] = Counter()
        self._uids = itertools.count(1)
        self._bot: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0
        self.logins = 0
        self.calls = 0
        self.last_call_at = 0.0
        self.hang_ups: list[float] = []  # when a bot's connection ended (a kill, mostly)

    async def __aenter__(self) -> SoakTelegram:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # --- what users do and see ---

    def user_sends(self, chat_id: int, sender_id: int, text: str) -> Posted:
        posted = self._post(chat_id, text, by_bot=False)
        uid = next(self._uids)
        update = {
            "uid": uid, "chat_id": chat_id, "message_id": posted.id, "sender_id": sender_id, "text": text,
            "date": datetime.now(timezone.utc).isoformat(),
        }  # fmt: skip
        self._unacknowledged[uid] = update
        if self._bot is not None:
            self._hand_out(self._bot, update)
        return posted

    def bot_messages(self) -> list[Posted]:
        return [p for chat in self._chats.values() for p in chat.values() if p.by_bot and not p.deleted]

    def transcript(self) -> str:
        """Every message of every chat, deleted ones too, one a line, then when each bot process's
        connection ended (for a look after a failed soak)."""
        lines = []
        for chat in self._chats.values():
            for p in chat.values():
                who = "bot" if p.by_bot else "user"
                lines.append(f"{p.at:012.3f} {p.chat_id} #{p.id} {who} reply_to={p.reply_to} deleted={p.deleted}: {p.text!r}")
        lines += [f"{at:012.3f} connection ended" for at in self.hang_ups]
        return "\n".join(sorted(lines)) + "\n"

    @property
    def unacknowledged(self) -> int:
        return len(self._unacknowledged)

    @property
    def handed_out_again(self) -> int:
        """Updates handed out more than once (the bot died before its handler finished)."""
        return sum(count - 1 for count in self._handed_out.values() if count > 1)

    # --- the bot's connection ---

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        calls: set[asyncio.Task[None]] = set()
        try:
            while line := await reader.readline():
                request = json.loads(line)
                if "ack" in request:
                    self._unacknowledged.pop(request["ack"], None)
                elif request["call"] == "start":
                    self._log_in(writer, request["id"])
                else:
                    call = asyncio.ensure_future(self._answer(writer, request))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the bot process was killed
        finally:
            if self._bot is writer:
                self._bot = None
            self.hang_ups.append(asyncio.get_running_loop().time())
            for call in calls:
                call.cancel()
            writer.close()
            self._connections.discard(task)

    def _log_in(self, writer: asyncio.StreamWriter, request_id: int) -> None:
        """A new bot process connected: it takes over, gets the catch-up, then the answer."""
        self._bot = writer
        self.logins += 1
        for update in list(self._unacknowledged.values()):
            self._hand_out(writer, update)
        _write(writer, {"id": request_id, "result": True})

    def _hand_out(self, writer: asyncio.StreamWriter, update: dict[str, Any]) -> None:
        self._handed_out[update["uid"]] += 1
        _write(writer, {"update": update})

    async def _answer(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        await asyncio.sleep(self._rng.uniform(*LATENCY))
        self.calls += 1
        self.last_call_at = asyncio.get_running_loop().time()
        try:
            answer: dict[str, Any] = {"result": self._do(request)}
        except Refused as refusal:
            answer = {"error": str(refusal)}
        await asyncio.sleep(self._rng.uniform(*LATENCY))
        _write(writer, {"id": request["id"], **answer})

    def _do(self, request: dict[str, Any]) -> Any:
        chat_id = request["chat_id"]
        if chat_id not in self._chats:
            raise Refused("PEER_ID_INVALID")
        if request["call"] == "send":
            # Telegram answers a repeated random_id with the message the first send made.
            key = (chat_id, request.get("random_id"))
            if key[1] is not None and key in self._by_random_id:
                return self._by_random_id[key].id
            posted = self._post(chat_id, request["text"], by_bot=True, reply_to=request.get("reply_to"))
            if key[1] is not None:
                self._by_random_id[key] = posted
            return posted.id
        if request["call"] == "edit":
            target = self._chats[chat_id].get(request["message_id"])
            if target is None or not target.by_bot or target.deleted:
                raise Refused("MESSAGE_ID_INVALID")
            if target.text == request["text"]:
                raise Refused("MESSAGE_NOT_MODIFIED")
            target.text = request["text"]
            return True
        if request["call"] == "delete":
            for message_id in request["ids"]:
                target = self._chats[chat_id].get(message_id)
                if target is not None and target.by_bot:
                    target.deleted = True
            return True
        raise Refused("METHOD_INVALID")

    def _post(self, chat_id: int, text: str, *, by_bot: bool, reply_to: int | None = None) -> Posted:
        posted = Posted(next(self._ids[chat_id]), chat_id, text, by_bot, reply_to, at=asyncio.get_running_loop().time())
        self._chats[chat_id][posted.id] = posted
        return posted


def _write(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    if not writer.is_closing():
        writer.write((json.dumps(message) + "\n").encode())
