"""A conversation left idle longer than CONVERSATION_IDLE_RESET starts afresh, as after /reset.

Checked when a chat question is about to be answered (so a message resumed after a restart is
judged by when it was sent): if the conversation's last question or answer before it is older
than the setting, the old conversation ends (its rows stay, as with /reset) and the question opens
a new one. The reply then starts with one line saying so; later replies do not.
"""
from __future__ import annotations

from handlers.services import Services
from state.history import StoredMessage


async def fresh_start_note(services: Services, stored: StoredMessage) -> str:
    """Start a new conversation for `stored` if the chat's was idle too long; the line saying so
    (to open the reply), or "" when nothing changed."""
    limit = services.chat.idle_reset
    if limit is None or stored.kind != "chat":
        return ""
    idle = await services.history.idle_before(stored)
    if idle is None or idle <= limit or not await services.history.start_afresh(stored):
        return ""
    return f"_(New conversation: the last one was idle for {describe_idle(idle)}.)_\n\n"


def describe_idle(seconds: float) -> str:
    """Roughly, in the largest unit that reads well: 40 s, 45 min, 7 h, 3 days."""
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"
