"""The crash soak's Telegram: the chats, the bot's messages, and the account's update sequence.

It lives in the bench process and outlives every bot process. The bot (bench/_soak_telegram_child.py)
connects over TCP on 127.0.0.1 and speaks JSON lines:

    bot -> here  {"id": 1, "call": "start"}                                       -> {"id": 1, "result": true}
                 {"id": 2, "call": "getState"}                      -> {"id": 2, "result": {"pts": p, "date": d}}
                 {"id": 3, "call": "getDifference", "pts": p, "date": d[, "pts_total_limit": n]}
                                                                    -> {"id": 3, "result": a difference, below}
                 {"id": 4, "call": "send", "chat_id": c, "text": t, "reply_to": m} -> {"id": 4, "result": new id}
                 {"id": 5, "call": "edit", "chat_id": c, "message_id": m, "text": t}
                 {"id": 6, "call": "delete", "chat_id": c, "ids": [m, ...]}
    here -> bot  {"update": {"pts": p, "pts_count": 1, "chat_id": c, "message_id": m, "sender_id": s, "text": t, "date": iso}}
                 {"id": 3, "error": "MESSAGE_NOT_MODIFIED"}    (or MESSAGE_ID_INVALID, PEER_ID_INVALID)

Updates are kept as Telegram keeps them for an account (core.telegram.org/api/updates): one
sequence, every new message bumps its `pts` by its `pts_count` (1). A connection is pushed each new
update as it happens from its first call on, unless its calls say `"without_updates": true`
(Telethon's `receive_updates=False` wraps each in InvokeWithoutUpdates). Nothing is known of what the bot did with an update: a
client that connects again asks for what it missed with the state it kept (`getDifference` from its
pts), and gets `differenceEmpty` when there is nothing, `difference` with the messages and the new
state, `differenceSlice` with at most `slice_size` of them and an `intermediate_state` to ask from
again, or `differenceTooLong` with the pts to go on from when its pts is older than what is kept
(the `kept` newest updates) or further behind than its `pts_total_limit`. A client without a state
asks `getState` and starts from now: it never sees what came before. So a bot process that starts
from the wrong pts (a new leader not seeded with the last one's state) misses what arrived while
nobody was connected, and a restart from a stale pts gets again what it already had (recognised by
message id). Real supergroups keep a pts of their own per channel (getChannelDifference); here
every chat is in the account's sequence, which is what the bot's catch-up handover has to carry.

Each call travels a few milliseconds each way: a process killed mid-call may leave the call done
here without hearing so, as with the real Telegram. A difference is worked out when its answer
leaves, so an update made after it follows it on the connection. Message ids are per chat and
shared by users and the bot, as in a supergroup.
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
SLICE = 100  # messages in one differenceSlice (Telegram does not publish its own size)
KEPT = 100_000  # updates kept for getDifference; a client further behind gets differenceTooLong


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

    def __init__(
        self, rng: random.Random, *, latency: tuple[float, float] = LATENCY, slice_size: int = SLICE, kept: int = KEPT
    ) -> None:
        self._rng = rng
        self._latency = latency
        self._slice_size = slice_size
        self._kept = kept
        self._chats: dict[int, dict[int, Posted]] = defaultdict(dict)
        self._ids: dict[int, Iterator[int]] = defaultdict(lambda: itertools.count(1))
        self._updates: list[dict[str, Any]] = []  # the account's sequence: update i has pts i + 1
        self._by_random_id: dict[tuple[int, int], Posted] = {}
        self._handed_out: Counter[int] = Counter()
        # Logged-in connections (pushed every new update) and the highest pts each was handed.
        self._receiving: dict[asyncio.StreamWriter, int] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0
        self.logins = 0  # connections that began receiving updates (a login, or a worker told to receive)
        self.calls = 0
        self.last_call_at = 0.0
        self.hang_ups: list[float] = []  # when a bot's connection ended (a kill, mostly)
        self.too_long = 0  # differenceTooLong answers (updates a client will never see)

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
        update = {
            "pts": self.pts + 1, "pts_count": 1, "chat_id": chat_id, "message_id": posted.id, "sender_id": sender_id,
            "text": text, "date": datetime.now(timezone.utc).isoformat(),
        }  # fmt: skip
        self._updates.append(update)
        for writer in self._receiving:
            self._hand_out(writer, [update])
            _write(writer, {"update": update})
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
    def pts(self) -> int:
        """The account's update state now: the pts of the newest update."""
        return len(self._updates)

    @property
    def unacknowledged(self) -> int:
        """Updates no logged-in bot has been handed yet (all of them while none is connected).
        Telegram never learns whether a handler finished: that is the bot's business."""
        return self.pts - max(self._receiving.values(), default=0)

    @property
    def handed_out_again(self) -> int:
        """Updates handed out more than once (a bot caught up from a state older than what it had)."""
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
                if not request.get("without_updates") and writer not in self._receiving:
                    self._receiving[writer] = 0
                    self.logins += 1
                if request["call"] == "start":
                    _write(writer, {"id": request["id"], "result": True})
                else:
                    call = asyncio.ensure_future(self._answer(writer, request))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the bot process was killed
        finally:
            self._receiving.pop(writer, None)
            self.hang_ups.append(asyncio.get_running_loop().time())
            for call in calls:
                call.cancel()
            writer.close()
            self._connections.discard(task)

    def _hand_out(self, writer: asyncio.StreamWriter, updates: list[dict[str, Any]], *, through: int | None = None) -> None:
        """Count `updates` as handed to `writer`, whose client is at pts `through` (the last one's) then."""
        for update in updates:
            self._handed_out[update["pts"]] += 1
        through = updates[-1]["pts"] if through is None and updates else through
        if through is not None and writer in self._receiving:
            self._receiving[writer] = max(self._receiving[writer], through)

    async def _answer(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        await asyncio.sleep(self._rng.uniform(*self._latency))
        self.calls += 1
        self.last_call_at = asyncio.get_running_loop().time()
        if request["call"] == "getState":
            self._hand_out(writer, [], through=self.pts)  # the client starts from here
            _write(writer, {"id": request["id"], "result": self._state()})
            return
        if request["call"] == "getDifference":
            # Worked out as the answer leaves: an update made after it comes after it.
            _write(writer, {"id": request["id"], "result": self._difference(writer, request)})
            return
        try:
            answer = {"result": self._do(request)}
        except Refused as refusal:
            answer = {"error": str(refusal)}
        await asyncio.sleep(self._rng.uniform(*self._latency))
        _write(writer, {"id": request["id"], **answer})

    def _state(self) -> dict[str, Any]:
        return {"pts": self.pts, "date": int(datetime.now(timezone.utc).timestamp()), "seq": 0}

    def _difference(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> dict[str, Any]:
        """updates.getDifference as Telegram answers it for the account's sequence."""
        pts = int(request["pts"])
        limit = request.get("pts_total_limit")
        if pts < self.pts - self._kept or (limit is not None and pts + int(limit) < self.pts):
            self.too_long += 1
            self._hand_out(writer, [], through=self.pts)
            return {"_": "differenceTooLong", "pts": self.pts}
        if pts >= self.pts:
            self._hand_out(writer, [], through=self.pts)
            return {"_": "differenceEmpty", "date": self._state()["date"], "seq": 0}
        new = self._updates[pts : pts + self._slice_size]
        self._hand_out(writer, new)
        state = {**self._state(), "pts": new[-1]["pts"]}
        if new[-1]["pts"] < self.pts:
            return {"_": "differenceSlice", "new_messages": new, "intermediate_state": state}
        return {"_": "difference", "new_messages": new, "state": state}

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
