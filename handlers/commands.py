"""What a command is, and how a message's text becomes one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from handlers.transport import IncomingMessage

if TYPE_CHECKING:
    from handlers.services import Services
    from state.history import StoredMessage

CommandRun = Callable[["Services", IncomingMessage, str], Awaitable[None]]
# A command whose reply is an answer from the models (/retry): given its stored message, it takes
# that through chat's lifecycle itself (the answer stored before it is delivered).
AnswerRun = Callable[["Services", IncomingMessage, "StoredMessage", str], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    name: str
    description: str
    run: CommandRun
    admin_only: bool = False
    # Queued commands wait their turn behind the chat's reply in progress (they stream or call upstreams).
    queued: bool = False
    usage: str = ""
    # Metered commands spend upstream money: the user's budget and message rate are checked first.
    metered: bool = False
    # Longest message this command takes, in characters; None: the chat limit (ChatSettings).
    max_chars: int | None = None
    # Set for commands answered like a chat message (see `answering`); the router then calls it, not `run`.
    answer: AnswerRun | None = None

    @classmethod
    def answering(cls, name: str, description: str, answer: AnswerRun, *, usage: str = "") -> Command:
        """A command answered like a chat message: queued behind the reply in progress, metered."""
        return cls(name, description, _answered_by_the_router, queued=True, usage=usage, metered=True, answer=answer)


async def _answered_by_the_router(services: Services, message: IncomingMessage, args: str) -> None:
    raise RuntimeError("an answering command is run through its `answer`, with its stored message")


@dataclass(frozen=True)
class ParsedCommand:
    name: str
    args: str


def parse_command(text: str) -> ParsedCommand | None:
    """The command `text` starts with, or None for chat.

    The name (with an optional @bot address) ends at the first character that cannot be in one,
    so "/help" followed by a NUL is /help, not a chat message for the model. A name
    followed by "/" is a path ("/usr/bin/python crashes") and, as in Telegram's own clients, chat.
    """
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    end = 1
    while end < len(stripped) and _can_be_in_name(stripped[end]):
        end += 1
    name = stripped[1:end].split("@", 1)[0].lower()
    rest = stripped[end:]
    if not name or rest.startswith("/"):
        return None
    return ParsedCommand(name, rest.strip())


def _can_be_in_name(char: str) -> bool:
    return char.isalnum() or char in "_@"
