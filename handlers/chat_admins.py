"""Who may change a group's settings (/mode, /prompt): its admins on Telegram, and the bot's operators.

In a private chat the settings are the user's own. In a group a mode or prompt applies to everyone
there, so changing it takes one of the group's admins (its creator included: Telegram's own
participant rights, asked through the transport's `ChatAdmins`) or one of the bot's operators
(ADMIN_IDS). Showing them stays open to every member. When Telegram cannot say (a flood wait, a
network fault), nothing is changed and the user is told to try again.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from handlers.transport import IncomingMessage
from integrations.errors import UpstreamError

if TYPE_CHECKING:  # handlers.services imports this module for `ChatAdmins`
    from handlers.services import Services

log = logging.getLogger(__name__)

ADMINS_ONLY = (
    "In this group only its admins can change the {what}: it applies to everyone here. "
    "/mode and /prompt on their own show what is in use."
)
CANNOT_CHECK = (
    "I couldn't check with Telegram whether you are an admin of this group just now, so nothing "
    "was changed. Please try again in a minute."
)


class ChatAdmins(Protocol):
    """A transport's view of a group's admins (only Telegram's has groups)."""

    async def is_admin(self, chat_id: int, user_id: int) -> bool:
        """Whether the user is the group's creator or one of its admins; raises UpstreamError
        when Telegram cannot say."""
        ...


async def refusal_to_change(services: Services, message: IncomingMessage, what: str) -> str | None:
    """Why `message`'s sender may not change this chat's `what` ("mode", "prompt"), or None if they may."""
    if message.is_private or services.access.is_admin(message.user_id):
        return None
    admins = services.chat_admins
    if admins is None:
        return ADMINS_ONLY.format(what=what)
    try:
        if await admins.is_admin(message.chat_id, message.user_id):
            return None
    except UpstreamError as error:
        log.warning("could not check whether user %s is an admin of chat %s: %s", message.user_id, message.chat_id, error)
        return CANNOT_CHECK
    return ADMINS_ONLY.format(what=what)
