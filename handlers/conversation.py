"""Conversation control: /retry (the last answer again), /mode and /prompt (this chat's system prompt).

In a group, /mode and /prompt show the group's choice to anyone, and change it only for its
admins and the bot's operators (handlers/chat_admins.py).
"""
from __future__ import annotations

from handlers import chat, documents
from handlers.basic import no_such_model, pick_model
from handlers.chat_admins import refusal_to_change
from handlers.commands import Command
from handlers.modes import DEFAULT_MODE, PROMPT_MAX_CHARS, chat_prompt, find_mode
from handlers.render import escape_markdown
from handlers.reply import reply
from handlers.services import Services
from handlers.transport import IncomingMessage
from state.history import StoredMessage

NOTHING_TO_RETRY = "Nothing to retry: this conversation has no answer yet. Ask me something first."
NOTHING_TO_RETRY_AFTER_DOCUMENT = (
    "Nothing to retry: I've only read {name}, there is no answer to it yet. Ask me about it and I'll answer."
)
NOT_A_CHAT_ANSWER = (
    "The last answer here came from a command (such as /search), not from a question to me: "
    "send that command again for a fresh one."
)


async def retry(services: Services, message: IncomingMessage, stored: StoredMessage, args: str) -> None:
    """The last question answered again (by the model named in `args`, if any); the new answer
    replaces the old one in the conversation."""

    async def plan() -> chat.Turn | str:
        choice = args.strip()
        model = pick_model(services.chain, choice) if choice else None
        if choice and model is None:
            return no_such_model(services.chain, choice)
        question = await services.history.last_question(stored)
        if question is None:
            return NOTHING_TO_RETRY
        if question.telegram_message_id is None:  # recorded by a command (history.record_exchange)
            return NOT_A_CHAT_ANSWER
        document = documents.only_read(question)
        if document is not None:  # "Got it: …" is no answer to retry; the file stays in the context
            return NOTHING_TO_RETRY_AFTER_DOCUMENT.format(name=escape_markdown(document))
        return chat.Turn(question, model)

    await chat.answer(services, message, stored, plan)


async def mode(services: Services, message: IncomingMessage, args: str) -> None:
    modes = services.chat.modes
    choice = args.strip()
    if not choice:
        current = await chat_prompt(services, message.chat_id)
        if current.custom:
            lines = ["This chat uses its own prompt (/prompt shows it)."]
        elif current.mode is not None:
            lines = [f"This chat's mode: *{current.mode}*."]
        else:
            lines = ["This chat uses the default prompt."]
        lines += ["", "Modes:"]
        lines += [f"• `{m.name}` — {escape_markdown(m.description)}" for m in modes]
        lines += ["", "Switch with /mode <name>, or set your own prompt with /prompt <text>."]
        await reply(services, message, "\n".join(lines))
        return
    refusal = await refusal_to_change(services, message, "mode")
    if refusal is not None:
        await reply(services, message, refusal)
        return
    picked = find_mode(modes, choice)
    if picked is None:
        options = ", ".join(f"`{m.name}`" for m in modes)
        await reply(services, message, f"I don't have a mode called `{escape_markdown(choice[:40])}`. Modes: {options}.")
        return
    if picked.prompt is None:  # the default mode: the operator's prompt
        await services.prompts.clear(message.chat_id)
    else:
        await services.prompts.choose_mode(message.chat_id, picked.name, by=message.user_id)
    await reply(
        services,
        message,
        f"This chat's mode is now *{picked.name}*: {escape_markdown(picked.description)}. "
        f"/mode lists the others; /mode {DEFAULT_MODE} goes back to the default.",
    )


async def prompt(services: Services, message: IncomingMessage, args: str) -> None:
    text = args.strip()
    if not text:
        current = await chat_prompt(services, message.chat_id)
        if current.custom:
            head = "This chat's own prompt (/prompt reset goes back to the default):"
        elif current.mode is not None:
            head = f"This chat's prompt, from the mode *{current.mode}* (/mode lists the others):"
        else:
            head = "This chat uses the default prompt (/prompt <text> sets its own):"
        await reply(services, message, f"{head}\n\n{_quoted(current.text)}")
        return
    refusal = await refusal_to_change(services, message, "prompt")
    if refusal is not None:
        await reply(services, message, refusal)
        return
    if text.lower() == "reset":
        await services.prompts.clear(message.chat_id)
        await reply(services, message, "This chat is back on the default prompt.")
        return
    if len(text) > PROMPT_MAX_CHARS:
        await reply(
            services,
            message,
            f"That prompt is {len(text):,} characters long; the limit is {PROMPT_MAX_CHARS:,}. "
            "Please shorten it. (The prompt is sent with every question, so a long one costs on every answer.)",
        )
        return
    await services.prompts.set_custom(message.chat_id, text, by=message.user_id)
    await reply(
        services,
        message,
        f"Done: this chat now answers with your prompt ({len(text):,} characters). "
        "/prompt shows it; /prompt reset goes back to the default.",
    )


def _quoted(text: str) -> str:
    """`text` shown as it is, each line quoted."""
    return "\n".join(f"> {escape_markdown(line)}" if line.strip() else ">" for line in text.splitlines())


def conversation_commands() -> list[Command]:
    return [
        Command.answering("retry", "the last answer again (optionally from another model)", retry, usage="[model]"),
        Command("mode", "list the modes, or switch this chat's mode", mode, usage="[name]"),
        Command("prompt", "show, set or reset this chat's own system prompt", prompt, usage="[text|reset]"),
    ]
