"""What a command is, and how a message's text becomes one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from handlers.transport import IncomingMessage

if TYPE_CHECKING:
    from handlers.services import Services

CommandRun = Callable[["Services", IncomingMessage, str], Awaitable[None]]


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


@dataclass(frozen=True)
class ParsedCommand:
    name: str
    args: str


def parse_command(text: str) -> ParsedCommand | None:
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    head, _, rest = stripped.partition(" ")
    if "\n" in head:
        head, _, more = head.partition("\n")
        rest = more + ("\n" + rest if rest else "")
    name = head[1:].split("@", 1)[0].lower()
    if not name or not all(c.isalnum() or c == "_" for c in name):
        return None
    return ParsedCommand(name, rest.strip())
