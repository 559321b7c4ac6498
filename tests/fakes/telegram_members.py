"""Who is in a group and with what rights, as the fake Telegram client answers it.

`ChatMembers` is mixed into `FakeTelegramClient`. It answers the two requests Telethon's own
`get_permissions(chat, user)` makes (that method is Telethon's, run unchanged over the fake):
`channels.getParticipant` for a supergroup (a `channels.ChannelParticipant` holding a
`ChannelParticipantCreator`, `...Admin` or plain `ChannelParticipant`; 400 USER_NOT_PARTICIPANT
for someone not in it) and `messages.getFullChat` for a basic group (its whole participant list,
in which Telethon looks the user up, raising UserNotParticipantError itself when absent).

Anyone whose message the client delivered in a group is a member of it; `set_role` makes a user
the group's creator or an admin, or takes them out of it ("left"). Failures are injected with
`fail_next("participants", error)`.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from telethon import TelegramClient, errors, functions, types, utils

Role = Literal["creator", "admin", "member", "left"]
MEMBER_REQUESTS = (functions.channels.GetParticipantRequest, functions.messages.GetFullChatRequest)
_JOINED = datetime(2026, 1, 1, tzinfo=timezone.utc)
_ALL_RIGHTS = types.ChatAdminRights(change_info=True, delete_messages=True, ban_users=True, invite_users=True, pin_messages=True)
_SOME_RIGHTS = types.ChatAdminRights(delete_messages=True, pin_messages=True)


class ChatMembers:
    # Telethon's own method: it fetches the entity, then asks the server one of MEMBER_REQUESTS.
    get_permissions = TelegramClient.get_permissions

    def _init_members(self) -> None:
        self._roles: dict[int, dict[int, Role]] = {}
        # Users the session has seen (as senders): Telethon can address them by id.
        self.known_users: set[int] = set()

    # --- test controls -------------------------------------------------------------------------

    def set_role(self, chat_id: int, user_id: int, role: Role) -> None:
        self._roles.setdefault(chat_id, {})[user_id] = role
        self.known_users.add(user_id)

    # --- bookkeeping the client calls ----------------------------------------------------------

    def _saw_sender(self, message: Any) -> None:
        sender = getattr(message, "sender_id", None)
        if sender is None or sender < 0:
            return
        self.known_users.add(sender)
        if message.chat_id < 0:
            self._roles.setdefault(message.chat_id, {}).setdefault(sender, "member")

    # --- the TelegramClient API ----------------------------------------------------------------

    async def get_entity(self, entity: Any) -> Any:
        """The chat or user as Telethon would return it (the fake knows only ids)."""
        peer_id = entity if isinstance(entity, int) else utils.get_peer_id(entity)
        await self.get_input_entity(peer_id)  # type: ignore[attr-defined]  # refuses what the session never saw
        real_id, kind = utils.resolve_id(peer_id)
        if kind is types.PeerUser:
            return types.User(id=real_id)
        if kind is types.PeerChat:
            members = len(self._roles.get(peer_id, {}))
            return types.Chat(real_id, "A group", types.ChatPhotoEmpty(), members, _JOINED, 1)
        return types.Channel(real_id, "A group", types.ChatPhotoEmpty(), _JOINED, megagroup=True, access_hash=0)

    def _answer_members(self, request: Any) -> Any:
        self._take_fault("participants", None)  # type: ignore[attr-defined]
        if isinstance(request, functions.channels.GetParticipantRequest):
            chat_id = utils.get_peer_id(request.channel)
            user_id = utils.get_peer_id(request.participant)
            role = self._roles.get(chat_id, {}).get(user_id, "left")
            if role == "left":
                self._refuse("participants", chat_id, errors.UserNotParticipantError(request=request))  # type: ignore[attr-defined]
            self._record("participants", chat_id, "ok")  # type: ignore[attr-defined]
            return types.channels.ChannelParticipant(_channel_participant(user_id, role), chats=[], users=[])
        chat_id = utils.get_peer_id(types.PeerChat(request.chat_id))
        if chat_id not in self._roles:
            self._refuse("participants", chat_id, errors.ChatIdInvalidError(request=request))  # type: ignore[attr-defined]
        members = [_chat_participant(user, role) for user, role in self._roles[chat_id].items() if role != "left"]
        full = types.ChatFull(
            request.chat_id, "", types.ChatParticipants(request.chat_id, members, version=1), types.PeerNotifySettings()
        )
        self._record("participants", chat_id, "ok")  # type: ignore[attr-defined]
        return types.messages.ChatFull(full, chats=[], users=[])


def _channel_participant(user_id: int, role: Role) -> Any:
    if role == "creator":
        return types.ChannelParticipantCreator(user_id, _ALL_RIGHTS)
    if role == "admin":
        return types.ChannelParticipantAdmin(user_id, promoted_by=1, date=_JOINED, admin_rights=_SOME_RIGHTS)
    return types.ChannelParticipant(user_id, date=_JOINED)


def _chat_participant(user_id: int, role: Role) -> Any:
    if role == "creator":
        return types.ChatParticipantCreator(user_id)
    if role == "admin":
        return types.ChatParticipantAdmin(user_id, inviter_id=1, date=_JOINED)
    return types.ChatParticipant(user_id, inviter_id=1, date=_JOINED)
