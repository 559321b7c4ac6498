"""From an incoming message to the right handler: who may ask, which command, which lane.

Every message the bot accepts is stored before any reply starts, so a crash loses nothing the
user sent; messages stored but never answered are answered after a restart.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Sequence

from handlers import chat
from handlers.commands import Command, parse_command
from handlers.reply import reply
from handlers.services import Services
from handlers.transport import IncomingMessage
from state.history import StoredMessage

log = logging.getLogger(__name__)


def well_formed(text: str) -> str:
    """Text that survives UTF-8 and UTF-16: bytes a terminal could not decode become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")

QUEUED_NOTICE = "⏳ Got it. I'll answer this right after the reply in progress (/cancel stops that one)."


class Router:
    def __init__(self, services: Services, commands: Sequence[Command]) -> None:
        self._services = services
        builtins = [
            Command("help", "what I can do", self._help),
            Command("cancel", "stop the reply in progress", self._cancel),
        ]
        self._commands = {command.name: command for command in [*commands, *builtins]}
        self._last_refusal: dict[int, float] = {}
        self._accepting = True

    @property
    def commands(self) -> list[Command]:
        return list(self._commands.values())

    def stop_accepting(self) -> None:
        self._accepting = False

    async def handle(self, message: IncomingMessage) -> None:
        if not message.addressed_to_bot or not message.text.strip():
            return
        message = replace(message, text=well_formed(message.text))
        services = self._services
        if not services.access.is_allowed(message.user_id):
            await self._refuse(message)
            return
        parsed = parse_command(message.text)
        if not self._accepting:
            # Shutting down: a chat message is stored and answered after the restart.
            if parsed is None and len(message.text) <= services.chat.max_message_chars:
                await services.history.record_incoming(message.chat_id, message.user_id, message.message_id, message.text)
            return
        if parsed is not None:
            await self._run_command(message, parsed.name, parsed.args)
            return
        if len(message.text) > services.chat.max_message_chars:
            await reply(
                services,
                message,
                f"Your message is {len(message.text):,} characters long; the limit is "
                f"{services.chat.max_message_chars:,}. Please shorten it or split it into parts.",
            )
            return
        if await self._over_limits(message):
            return
        stored = await services.history.record_incoming(
            message.chat_id, message.user_id, message.message_id, message.text
        )
        if stored is None:
            log.info("message %s in chat %s was already handled", message.message_id, message.chat_id)
            return
        await self._enqueue_answer(message, stored)

    async def resume_pending(self) -> int:
        """Answer messages that were stored but never answered (the bot stopped mid-way)."""
        pending = await self._services.history.pending()
        for stored in pending:
            message = IncomingMessage(
                chat_id=stored.chat_id,
                user_id=stored.user_id,
                message_id=stored.telegram_message_id,
                text=stored.text,
                is_private=stored.chat_id > 0,
            )
            self._services.lanes.submit(stored.chat_id, lambda m=message, s=stored: chat.answer(self._services, m, s))
        return len(pending)

    def help_text(self, user_id: int) -> str:
        is_admin = self._services.access.is_admin(user_id)
        lines = ["Send me a message and I'll answer. Commands:"]
        for command in self._commands.values():
            if command.admin_only and not is_admin:
                continue
            usage = f" {command.usage}" if command.usage else ""
            lines.append(f"/{command.name}{usage} — {command.description}")
        return "\n".join(lines)

    async def _enqueue_answer(self, message: IncomingMessage, stored: StoredMessage) -> None:
        lanes = self._services.lanes
        was_busy = lanes.busy(message.chat_id)
        lanes.submit(message.chat_id, lambda: chat.answer(self._services, message, stored))
        if was_busy:
            await reply(self._services, message, QUEUED_NOTICE)

    async def _help(self, services: Services, message: IncomingMessage, args: str) -> None:
        await reply(services, message, self.help_text(message.user_id))

    async def _cancel(self, services: Services, message: IncomingMessage, args: str) -> None:
        if not services.lanes.cancel(message.chat_id):
            await reply(services, message, "Nothing to stop: no reply is in progress.")

    async def _run_command(self, message: IncomingMessage, name: str, args: str) -> None:
        services = self._services
        command = self._commands.get(name)
        if command is None or (command.admin_only and not services.access.is_admin(message.user_id)):
            await reply(services, message, f"I don't know /{name}.\n\n" + self.help_text(message.user_id))
            return
        if command.metered and await self._over_limits(message):
            return
        if command.queued:
            services.lanes.submit(message.chat_id, lambda: command.run(services, message, args))
        else:
            await command.run(services, message, args)

    async def _over_limits(self, message: IncomingMessage) -> bool:
        """Daily budget and message rate, checked before any upstream call."""
        limits = self._services.extras.get("limits")
        refusal = await limits.check(message.user_id) if limits is not None else None
        if refusal is not None:
            await reply(self._services, message, refusal)
        return refusal is not None

    async def _refuse(self, message: IncomingMessage) -> None:
        now = self._services.clock.monotonic()
        last = self._last_refusal.get(message.user_id)
        if last is not None and now - last < self._services.chat.refusal_interval:
            return
        self._last_refusal[message.user_id] = now
        await reply(
            self._services,
            message,
            f"Sorry, this bot is private. Your user id is {message.user_id}; "
            "ask the operator to add it to the allowed users.",
        )
