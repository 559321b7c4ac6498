"""/note, /save and /notes: notes in a Notion database, written through a durable outbox.

A note is stored in SQLite first, then delivered at once if Notion can take it; if not, the reply
says it is queued and `NoteDelivery` sends the link once it lands. Telegram may deliver a message
twice: the idempotency key is derived from the chat, the message and its text, so a repeat finds
the note stored the first time instead of queuing another.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from handlers.commands import Command
from handlers.note_delivery import NoteDelivery, Notify, Outcome, outcome_text
from handlers.render import escape_markdown
from handlers.reply import NOTE_OUTCOME_STREAM, notify_once, reply
from handlers.services import Services
from handlers.transport import IncomingMessage
from integrations.errors import AuthFailed, Unavailable, UpstreamError
from integrations.notion_notes import NotionNotes
from integrations.notion_schema import (
    NoteContent,
    NoteSchema,
    hashtags,
    title_and_body,
    without_citations,
    without_hashtags,
)
from state.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)

DEFAULT_LIST = 10
MAX_LIST = 200
SETUP_HINT = (
    "Notes are not set up yet. To save notes to Notion:\n"
    "1. Create an internal integration at https://www.notion.so/my-integrations with the Read, Update and "
    "Insert content capabilities, and put its token in NOTION_TOKEN.\n"
    "2. In Notion, open the database for notes, choose ••• → Connections and add the integration.\n"
    "3. Put the database's id (the 32 characters in its URL) in NOTION_DATABASE_ID and restart the bot.\n"
    'Any database works: the bot adds the Text property "Switchboard ID" it needs, and fills a Multi-select '
    '"Tags" and a URL property "Source" if the database has them.'
)
NOTE_USAGE = (
    "Usage: /note <text>\n"
    "Saves the text to Notion. The first line becomes the title, #hashtags become tags, "
    "and Markdown (lists, code, links) is kept."
)
SAVE_NOTHING = "There is no answer to save yet: ask me something (or /search), then send /save."
_SUPERGROUP_OFFSET = 1_000_000_000_000
_SOURCES_HEADING = re.compile(r"^\W*(sources?|references?|citations?)\W*$", re.IGNORECASE)
_NUMBERED_LINE = re.compile(r"^\s*(?:\[\d+\]|\d+[.)])\s*(.*)$")
_MARKDOWN_LINK_URL = re.compile(r"\]\((https?://[^\s)]+)\)")
_BARE_URL = re.compile(r"https?://[^\s<>\]\[]+")


@dataclass(frozen=True)
class NotesHealth:
    ok: bool
    detail: str


@dataclass(frozen=True)
class NotesFeature:
    """What the commands and the composition root need (built in bot/app.py): `services.features.notes`."""

    outbox: Outbox
    notion: NotionNotes
    delivery: NoteDelivery

    async def start(self) -> None:
        """Look the database up once after start-up, so a setup problem shows in the log early.

        Meant to run in the background: it may take as long as Notion's retries. /health checks
        again, live."""
        try:
            health = await self.check()
        except Exception:  # nobody awaits this task: say what broke rather than lose it
            log.exception("notes: checking the Notion database failed")
            return
        if health.ok:
            log.info("notes: %s", health.detail)
        else:
            log.warning("notes: %s", health.detail)

    async def check(self) -> NotesHealth:
        """Fetch the schema afresh (a health check, which also adds the key property if it is
        missing) and say whether notes can be saved, each exactly once."""
        try:
            schema = await self.notion.schema(refresh=True)
        except AuthFailed as error:
            return NotesHealth(False, error.message)
        except UpstreamError as error:
            return NotesHealth(False, f"Notion database unreachable: {error}")
        problem = schema.problem()
        if problem is not None:
            return NotesHealth(False, problem)
        remarks = schema.remarks()
        extra = f" ({'; '.join(remarks)})" if remarks else ""
        return NotesHealth(True, f"Notion database ready, data source {schema.data_source_id}{extra}")

    async def probe(self) -> None:
        """/health's probe: the check, raising when notes cannot be saved (each exactly once)."""
        health = await self.check()
        if not health.ok:
            raise Unavailable(health.detail, upstream="notion")

    async def depth(self) -> int:
        return await self.outbox.depth()


def notes_commands() -> list[Command]:
    return [
        # Notes may be long (pasted in the console); the outbox splits them within Notion's limits.
        Command("note", "save a note to Notion", note, queued=True, usage="<text>", max_chars=200_000),
        Command("save", "save my last answer (with its sources) to Notion", save, queued=True, usage="[title]"),
        Command("notes", "list recent notes in Notion", list_notes, queued=True, usage="[count]"),
    ]


async def note(services: Services, message: IncomingMessage, args: str) -> None:
    feature = services.features.notes
    if feature is None:
        await reply(services, message, SETUP_HINT)
        return
    text = args.strip()
    if not text:
        await reply(services, message, NOTE_USAGE)
        return
    title, body = title_and_body(text)
    content = NoteContent(title, body, hashtags(text), telegram_link(message.chat_id, message.message_id))
    await _save_note(services, feature, message, content, fingerprint=text)


async def save(services: Services, message: IncomingMessage, args: str) -> None:
    feature = services.features.notes
    if feature is None:
        await reply(services, message, SETUP_HINT)
        return
    answer = await services.history.last_answer(message.chat_id)
    if not answer or not answer.strip():
        await reply(services, message, SAVE_NOTHING)
        return
    wanted_title = without_hashtags(args).strip()
    title = title_and_body(wanted_title or without_citations(answer))[0]
    sources = numbered_sources(answer)
    source = sources[0] if sources else telegram_link(message.chat_id, message.message_id)
    content = NoteContent(title, answer.strip(), hashtags(args), source)
    await _save_note(services, feature, message, content, fingerprint=answer)


async def list_notes(services: Services, message: IncomingMessage, args: str) -> None:
    feature = services.features.notes
    if feature is None:
        await reply(services, message, SETUP_HINT)
        return
    wanted = args.strip()
    if wanted and (not wanted.isdigit() or not 1 <= int(wanted) <= MAX_LIST):
        await reply(services, message, f"Usage: /notes [count], with a count from 1 to {MAX_LIST} (default {DEFAULT_LIST}).")
        return
    limit = int(wanted) if wanted else DEFAULT_LIST
    try:
        schema = await feature.notion.schema()
        notes = await feature.notion.recent(schema, limit)
    except AuthFailed:
        await reply(services, message, "I couldn't list your notes: Notion refused the bot's token, so the operator needs to check NOTION_TOKEN.")
        return
    except UpstreamError as error:
        await reply(services, message, f"I couldn't list your notes: {error.message}. Please try again later.")
        return
    if not notes:
        lines = ["There are no notes in the Notion database yet. Save one with /note <text>."]
    else:
        lines = [f"The {len(notes)} most recent notes, newest first:" if len(notes) > 1 else "The most recent note:"]
        lines += [f"{number}. {escape_markdown(item.title)} — {item.url}" for number, item in enumerate(notes, 1)]
    await reply(services, message, "\n".join(lines + _schema_warning(schema)))


async def tell_outcome(services: Services, origin: IncomingMessage, text: str) -> None:
    """Tell the user how their note ended (saved, with its link, or given up). Whoever tells it (the
    /note reply, the command resumed after a restart, the delivery worker) sends it under one key,
    so the chat shows it once: marking the note told can only follow the message, and a crash in
    between makes the next teller repeat a send Telegram has already made."""
    await notify_once(services, origin, text, stream=NOTE_OUTCOME_STREAM)


def chat_notifier(services: Services) -> Notify:
    """How the delivery worker tells a user about their note: a reply in the note's chat."""

    async def notify(entry: OutboxEntry, text: str) -> None:
        origin = IncomingMessage(
            chat_id=entry.chat_id,
            user_id=entry.user_id,
            message_id=entry.message_id or 0,
            text="",
            is_private=entry.chat_id > 0,
        )
        await tell_outcome(services, origin, text)

    return notify


def telegram_link(chat_id: int, message_id: int) -> str | None:
    """A link to the message, for supergroups and channels (private chats have none)."""
    if chat_id <= -_SUPERGROUP_OFFSET and message_id > 0:
        return f"https://t.me/c/{-chat_id - _SUPERGROUP_OFFSET}/{message_id}"
    return None


def numbered_sources(answer: str) -> list[str]:
    """The URLs of an answer's numbered sources ("1. [Title](url)", "[2] Title — url"), in order.

    Lines after a "Sources" heading are preferred, so a numbered list in the answer itself is
    not mistaken for its sources.
    """
    lines = answer.splitlines()
    heading = next((i for i, line in enumerate(lines) if _SOURCES_HEADING.match(line.strip())), None)
    candidates = lines[heading + 1 :] if heading is not None else lines
    urls: list[str] = []
    for line in candidates:
        match = _NUMBERED_LINE.match(line)
        if match is None:
            continue
        url = _first_url(match.group(1))
        if url is not None and url not in urls:
            urls.append(url)
    return urls


def note_key(message: IncomingMessage, fingerprint: str) -> str:
    digest = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]
    return f"{message.chat_id}:{message.message_id}:{digest}"


async def _save_note(
    services: Services, feature: NotesFeature, message: IncomingMessage, content: NoteContent, *, fingerprint: str
) -> None:
    entry, created = await feature.outbox.add(
        note_key(message, fingerprint),
        message.chat_id,
        message.user_id,
        content.to_payload(),
        message_id=message.message_id,
    )
    if not created:
        if entry.status in ("delivered", "failed"):
            # The note's outcome, told once: the delivery worker may be telling it right now, or
            # may have told it before a crash, under the same key (see `tell_outcome`).
            await tell_outcome(services, message, _repeat_text(entry))
            await feature.outbox.mark_told(entry.id)
        else:
            await reply(services, message, _repeat_text(entry))
        return

    async def announce(outcome: Outcome) -> None:
        if outcome.status == "queued":
            await reply(services, message, outcome_text(outcome))
        else:
            await tell_outcome(services, message, outcome_text(outcome))

    outcome = await feature.delivery.deliver(entry.id, announce=announce)
    if outcome is None:
        await reply(services, message, "Your note is queued. I'll send the link once it's saved.")


def _repeat_text(entry: OutboxEntry) -> str:
    if entry.status == "delivered":
        return f"Already saved to Notion: {entry.page_url}"
    if entry.status == "failed":
        return outcome_text(Outcome("failed", entry))
    return "That note is already queued. I'll send the link once it's saved."


def _schema_warning(schema: NoteSchema) -> list[str]:
    problem = schema.problem()
    return [] if problem is None else ["", f"⚠️ {escape_markdown(problem)}."]


def _first_url(text: str) -> str | None:
    linked = _MARKDOWN_LINK_URL.search(text)
    if linked is not None:
        return linked.group(1)
    bare = _BARE_URL.search(text)
    return bare.group(0).rstrip(".,;:)") if bare is not None else None
