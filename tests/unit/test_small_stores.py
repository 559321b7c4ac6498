"""The small stores on SQLite and PostgreSQL: a chat's prompt, the Notion schema cache, and the
lookup of a quoted message by its Telegram id."""
from state.chat_prompts import ChatPrompts, ChosenPrompt
from state.history import HistoryStore
from state.quoted_messages import StoredMessages
from state.schema_cache import SchemaCache

GROUP = -1001234567890  # past 2^31, as Telegram's supergroup ids are


async def test_a_chats_prompt_is_a_mode_or_its_own_text_replaced_and_cleared(state_db):
    prompts = ChatPrompts(state_db)
    assert await prompts.get(GROUP) is None
    await prompts.choose_mode(GROUP, "coder", by=7)
    assert await prompts.get(GROUP) == ChosenPrompt("coder", None)
    await prompts.set_custom(GROUP, "Answer in French.", by=7)
    assert await prompts.get(GROUP) == ChosenPrompt(None, "Answer in French.")
    await prompts.clear(GROUP)
    assert await prompts.get(GROUP) is None


async def test_the_notion_schema_is_kept_for_its_ttl_and_replaced_by_a_newer_one(state_db, clock):
    cache = SchemaCache(state_db, clock, ttl=60)
    await cache.put("db-1", {"Name": "title"})
    await cache.put("db-1", {"Name": "title", "Tags": "multi_select"})
    assert await cache.get("db-1") == {"Name": "title", "Tags": "multi_select"}
    await clock.advance(60)
    assert await cache.get("db-1") is None
    await cache.forget("db-1")
    assert await cache.get("db-1") is None


async def test_a_quoted_message_is_found_by_its_telegram_id_the_users_or_the_bots(state_db, clock):
    history = HistoryStore(state_db, clock)
    question = await history.record_incoming(GROUP, 42, 10, "what is 2+2?")
    await history.record_answer(question, "4", "test:model")
    await history.record_shown(question.id, [11])
    quoted = StoredMessages(state_db)

    users = await quoted.by_telegram_id(GROUP, 10)
    bots = await quoted.by_telegram_id(GROUP, 11)
    assert (users.text, users.from_bot, users.user_id) == ("what is 2+2?", False, 42)
    assert (bots.text, bots.from_bot) == ("4", True)
    assert await quoted.by_telegram_id(GROUP, 12) is None
