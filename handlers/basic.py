"""The everyday commands: /start, /reset, /model."""
from __future__ import annotations

from handlers.commands import Command
from handlers.reply import reply
from handlers.services import Services
from handlers.transport import IncomingMessage
from integrations.chain import ModelChain
from integrations.llm import ModelRef

GREETING = (
    "Hi! I'm Switchboard. Ask me anything and I'll answer as I think, using the best model available. "
    "Type /help to see what else I can do."
)


async def start(services: Services, message: IncomingMessage, args: str) -> None:
    await reply(services, message, GREETING)


async def reset(services: Services, message: IncomingMessage, args: str) -> None:
    await services.history.reset(message.chat_id)
    await reply(services, message, "Started a new conversation. The previous one is kept, but I won't use it.")


async def model(services: Services, message: IncomingMessage, args: str) -> None:
    refs = services.chain.refs
    if not refs:
        await reply(services, message, "No model is configured.")
        return
    current_name = await services.preferences.model_for(message.user_id)
    current = services.chain.find(current_name) if current_name else None
    choice = args.strip()
    if not choice:
        lines = [f"Your model: `{current or refs[0]}`" + ("" if current else " (the default)"), "", "Available:"]
        lines += [f"{i}. `{ref}`" for i, ref in enumerate(refs, 1)]
        lines += ["", "Pick one with /model <number or name>, or /model default."]
        await reply(services, message, "\n".join(lines))
        return
    if choice.lower() == "default":
        await services.preferences.set_model(message.user_id, None)
        await reply(services, message, f"Back to the default order, starting with `{refs[0]}`.")
        return
    picked = pick_model(services.chain, choice)
    if picked is None:
        await reply(services, message, no_such_model(services.chain, choice))
        return
    await services.preferences.set_model(message.user_id, str(picked))
    await reply(services, message, f"Your model is now `{picked}`. If it fails, the others still stand in.")


def pick_model(chain: ModelChain, choice: str) -> ModelRef | None:
    """The model `choice` names: its number in /model's list, `provider:model` or the bare name."""
    refs = chain.refs
    return refs[int(choice) - 1] if choice.isdigit() and 1 <= int(choice) <= len(refs) else chain.find(choice)


def no_such_model(chain: ModelChain, choice: str) -> str:
    options = ", ".join(f"`{ref}`" for ref in chain.refs)
    return f"I don't have a model called `{choice[:100]}`. Available: {options}."


def basic_commands() -> list[Command]:
    return [
        Command("start", "say hello", start),
        Command("reset", "start a new conversation (the old one is kept)", reset),
        Command("model", "show or pick your model", model, usage="[number|name|default]"),
    ]
