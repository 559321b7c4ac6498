"""In a group, /mode and /prompt change only for the group's admins and the bot's operators.

From Telegram through the real router: the fake Telegram client answers Telethon's own
`get_permissions` (channels.getParticipant in a supergroup, the participant list of a basic group).
"""
from contextlib import AsyncExitStack

from telethon import errors

from bot.telegram.transport import TelegramChatAdmins
from handlers.chat_admins import ADMINS_ONLY, CANNOT_CHECK
from handlers.modes import BUILTIN_MODES
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.telegram import FakeTelegramClient
from tests.integration.telegram_bot import ANTHROPIC_KEY, USER, TelegramBot, settings_for, start_telegram_bot

CLAUDE = "anthropic:claude-test"
SUPERGROUP = -1001234567890
BASIC_GROUP = -4242000
MEMBER = 5151
GROUP_ADMIN = 6161
CODER = next(m for m in BUILTIN_MODES if m.name == "coder")


async def _group_bot(stack: AsyncExitStack, tmp_path, **overrides) -> tuple[FakeAnthropic, TelegramBot]:
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Hello.")))
    allowed = frozenset({USER, MEMBER, GROUP_ADMIN})
    settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], allowed_user_ids=allowed, **overrides)
    return claude, await start_telegram_bot(stack, settings)


def _participant_checks(bot: TelegramBot) -> list[str]:
    return [call.outcome for call in bot.client.calls if call.kind == "participants"]


async def test_a_member_who_is_not_an_admin_cannot_change_the_groups_mode_or_prompt_but_can_see_them(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _group_bot(stack, tmp_path)
        await bot.user_says("/mode coder", chat_id=SUPERGROUP, user_id=MEMBER)
        assert bot.texts(SUPERGROUP)[-1] == ADMINS_ONLY.format(what="mode")
        await bot.user_says("/prompt Talk like a pirate.", chat_id=SUPERGROUP, user_id=MEMBER)
        assert bot.texts(SUPERGROUP)[-1] == ADMINS_ONLY.format(what="prompt")
        await bot.user_says("/prompt reset", chat_id=SUPERGROUP, user_id=MEMBER)
        assert bot.texts(SUPERGROUP)[-1] == ADMINS_ONLY.format(what="prompt")
        assert _participant_checks(bot) == ["ok", "ok", "ok"], "Telegram was asked each time"

        await bot.user_says("/mode", chat_id=SUPERGROUP, user_id=MEMBER)
        assert bot.texts(SUPERGROUP)[-1].startswith("This chat uses the default prompt.")
        await bot.user_says("/prompt", chat_id=SUPERGROUP, user_id=MEMBER)
        assert bot.texts(SUPERGROUP)[-1].endswith("Be brief.")
        assert len(_participant_checks(bot)) == 3, "showing them needs no rights"
        await bot.user_says("hi", chat_id=SUPERGROUP, user_id=MEMBER, mentioned=True)
        assert claude.message_requests[-1].json["system"] == "Be brief."


async def test_a_group_admin_changes_the_mode_for_everyone_in_the_group(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _group_bot(stack, tmp_path)
        bot.client.set_role(SUPERGROUP, GROUP_ADMIN, "admin")
        await bot.user_says("/mode coder", chat_id=SUPERGROUP, user_id=GROUP_ADMIN)
        assert bot.texts(SUPERGROUP)[-1].startswith("This chat's mode is now coder:")
        await bot.user_says("sort a list", chat_id=SUPERGROUP, user_id=MEMBER, mentioned=True)
        assert claude.message_requests[-1].json["system"] == CODER.prompt
        # A member's refused change leaves it as the admin set it.
        await bot.user_says("/mode concise", chat_id=SUPERGROUP, user_id=MEMBER)
        await bot.user_says("/mode", chat_id=SUPERGROUP, user_id=MEMBER)
        assert bot.texts(SUPERGROUP)[-1].startswith("This chat's mode: coder.")


async def test_the_creator_of_a_basic_group_sets_its_prompt_and_a_member_cannot_reset_it(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _group_bot(stack, tmp_path)
        bot.client.set_role(BASIC_GROUP, GROUP_ADMIN, "creator")
        await bot.user_says("/prompt Answer in French.", chat_id=BASIC_GROUP, user_id=GROUP_ADMIN)
        assert bot.texts(BASIC_GROUP)[-1].startswith("Done: this chat now answers with your prompt")
        await bot.user_says("/prompt reset", chat_id=BASIC_GROUP, user_id=MEMBER)
        assert bot.texts(BASIC_GROUP)[-1] == ADMINS_ONLY.format(what="prompt")
        await bot.user_says("hi", chat_id=BASIC_GROUP, user_id=MEMBER, mentioned=True)
        assert claude.message_requests[-1].json["system"] == "Answer in French."


async def test_the_bots_operator_may_change_a_groups_mode_without_being_its_admin(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _group_bot(stack, tmp_path, admin_ids=frozenset({USER}))
        await bot.user_says("/mode concise", chat_id=SUPERGROUP, user_id=USER)
        assert bot.texts(SUPERGROUP)[-1].startswith("This chat's mode is now concise:")
        assert _participant_checks(bot) == [], "ADMIN_IDS needs no question to Telegram"


async def test_when_telegram_cannot_say_who_is_admin_nothing_changes_and_the_user_is_told(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _group_bot(stack, tmp_path)
        bot.client.set_role(SUPERGROUP, GROUP_ADMIN, "admin")
        bot.client.fail_next("participants", errors.FloodWaitError(request=None, capture=30))
        await bot.user_says("/mode coder", chat_id=SUPERGROUP, user_id=GROUP_ADMIN)
        assert bot.texts(SUPERGROUP)[-1] == CANNOT_CHECK
        await bot.user_says("/mode", chat_id=SUPERGROUP, user_id=GROUP_ADMIN)
        assert bot.texts(SUPERGROUP)[-1].startswith("This chat uses the default prompt.")
        await bot.user_says("/mode coder", chat_id=SUPERGROUP, user_id=GROUP_ADMIN)
        assert bot.texts(SUPERGROUP)[-1].startswith("This chat's mode is now coder:"), "the next try works"


async def test_someone_who_left_the_group_is_not_its_admin(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _group_bot(stack, tmp_path)
        bot.client.set_role(SUPERGROUP, GROUP_ADMIN, "admin")
        await bot.user_says("hello", chat_id=SUPERGROUP, user_id=GROUP_ADMIN)
        bot.client.set_role(SUPERGROUP, GROUP_ADMIN, "left")
        await bot.user_says("/mode coder", chat_id=SUPERGROUP, user_id=GROUP_ADMIN)
        assert bot.texts(SUPERGROUP)[-1] == ADMINS_ONLY.format(what="mode")
        assert _participant_checks(bot) == ["UserNotParticipantError"]


async def test_private_chats_change_their_own_settings_without_asking_telegram(tmp_path):
    async with AsyncExitStack() as stack:
        claude, bot = await _group_bot(stack, tmp_path)
        await bot.user_says("/mode coder", chat_id=MEMBER, user_id=MEMBER)
        assert bot.texts(MEMBER)[-1].startswith("This chat's mode is now coder:")
        assert _participant_checks(bot) == []


async def test_an_anonymous_admin_writing_as_the_group_counts_as_its_admin(tmp_path):
    client = FakeTelegramClient(clock=None)  # type: ignore[arg-type]  # no call is made
    assert await TelegramChatAdmins(client).is_admin(SUPERGROUP, SUPERGROUP) is True
    assert client.calls == []

