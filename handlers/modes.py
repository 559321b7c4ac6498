"""A chat's system prompt: a preset mode (built in, or from the operator's file) or the chat's own text.

The built-in modes are a small set; `LLM_MODES_FILE` (TOML or JSON) adds modes or replaces built-in
ones by name:

    [pirate]
    description = "answers like a pirate"
    prompt = "You are a pirate. ..."

A chat with no choice of its own uses the operator's `LLM_SYSTEM_PROMPT`, and so does the
`assistant` mode unless the file gives it a prompt. A mode is kept by name, so a chat follows the operator's
edits to it; a chat whose mode the operator has since removed is back on the default.
"""
from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # handlers.services imports this module for `Mode`
    from handlers.services import Services

# The longest prompt a user may set with /prompt.
PROMPT_MAX_CHARS = 4000
DEFAULT_MODE = "assistant"

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_FIELDS = frozenset({"prompt", "description"})
_FORMATTING = (
    " Format replies in Markdown (bold, italics, lists, links, inline code and fenced code blocks); "
    "avoid tables and HTML, which Telegram cannot display."
)


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    # None: the operator's LLM_SYSTEM_PROMPT (the default mode).
    prompt: str | None


BUILTIN_MODES: tuple[Mode, ...] = (
    Mode(DEFAULT_MODE, "the default: a helpful general assistant", None),
    Mode(
        "translator",
        "translates what you send (into English, or into the language you ask for)",
        "You are a professional translator. Translate every message the user sends: into English when "
        "it is in another language, otherwise into the language the user asked for earlier in the "
        "conversation (ask which one if they have not said). Keep the meaning, tone and formatting, and "
        "reply with the translation only, without comments." + _FORMATTING,
    ),
    Mode(
        "coder",
        "a programmer: working code first, then a short explanation",
        "You are an expert programmer. Answer with working, idiomatic code in fenced code blocks that "
        "name their language, followed by a short explanation. Ask about the language, version or "
        "constraints when they matter and are unclear, and point out bugs and security problems you "
        "notice in code the user shows." + _FORMATTING,
    ),
    Mode(
        "concise",
        "answers in one to three sentences",
        "Answer in as few words as the question allows: one to three sentences, no preamble, no "
        "repetition of the question, no lists unless asked for. Say so in one sentence when you are "
        "not sure." + _FORMATTING,
    ),
)


class ModesFileError(Exception):
    """The operator's modes file cannot be used: says which file, where, and what to fix."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def with_modes_file(path: Path | None, builtin: Sequence[Mode] = BUILTIN_MODES) -> tuple[Mode, ...]:
    """The built-in modes, extended (or replaced by name) by the modes in `path`."""
    modes = {mode.name: mode for mode in builtin}
    if path is not None:
        modes.update((mode.name, mode) for mode in load_modes_file(path))
    return tuple(modes.values())


def load_modes_file(path: Path) -> list[Mode]:
    """The modes a TOML or JSON file defines, each a table with `prompt` and an optional `description`."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ModesFileError(path, "must be a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ModesFileError(path, f"cannot be read ({reason})") from None
    table = _parse_toml(path, text) if suffix == ".toml" else _parse_json(path, text)
    if not table:
        raise ModesFileError(path, "defines no modes; add at least one, e.g. [pirate] with prompt = \"...\"")
    return [_mode(path, text, name, entry) for name, entry in table.items()]


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        # Python 3.11's message ends in "(at line N, column M)"; the attribute came in 3.14.
        found = re.search(r"\(at line (\d+), column \d+\)$", message)
        line = int(found.group(1)) if found else None
        raise ModesFileError(path, f"is not valid TOML: {message[: found.start()].strip() if found else message}", line) from None


def _parse_json(path: Path, text: str) -> dict[str, Any]:
    try:
        table = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModesFileError(path, f"is not valid JSON: {error.msg}", error.lineno) from None
    if not isinstance(table, dict):
        raise ModesFileError(path, "must hold one object, mode name → {\"prompt\": ..., \"description\": ...}", 1)
    return table


def _mode(path: Path, text: str, name: str, entry: object) -> Mode:
    line = _line_of(text, name)
    key = name.lower()
    if not _NAME.fullmatch(key):
        raise ModesFileError(
            path, f"mode name {name[:40]!r} must be 1-32 letters, digits, - or _ (it is typed after /mode)", line
        )
    if not isinstance(entry, Mapping):
        raise ModesFileError(path, f"mode {key!r} must be a table with a prompt (and optionally a description)", line)
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ModesFileError(path, f"mode {key!r} has unknown field(s) {', '.join(unknown)}; only prompt and description", line)
    prompt, description = entry.get("prompt"), entry.get("description", "")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ModesFileError(path, f"mode {key!r} needs a prompt: a non-empty text", line)
    if not isinstance(description, str):
        raise ModesFileError(path, f"mode {key!r}: description must be a text", line)
    return Mode(key, " ".join(description.split()) or "(no description)", prompt.strip())


def _line_of(text: str, name: str) -> int | None:
    """The line that starts mode `name` ([name] in TOML, "name": in JSON), for the error message."""
    quoted = re.escape(name)
    pattern = re.compile(rf'^[ \t]*(\[[ \t]*"?{quoted}"?[ \t]*\]|"{quoted}"[ \t]*:|{quoted}[ \t]*=)', re.MULTILINE)
    found = pattern.search(text) or re.search(rf'"{quoted}"\s*:', text)
    return text.count("\n", 0, found.start()) + 1 if found else None


def find_mode(modes: Sequence[Mode], name: str) -> Mode | None:
    wanted = name.strip().lower()
    return next((mode for mode in modes if mode.name == wanted), None)


@dataclass(frozen=True)
class ChatPrompt:
    """What a chat's answers use as their system prompt, and where it comes from."""

    text: str
    # The chat's mode by name; None for the default (the operator's prompt) or the chat's own text.
    mode: str | None = None
    custom: bool = False


async def chat_prompt(services: Services, chat_id: int) -> ChatPrompt:
    """The chat's system prompt: its own text, its mode's, or the operator's LLM_SYSTEM_PROMPT."""
    default = services.chat.system_prompt
    chosen = await services.prompts.get(chat_id)
    if chosen is None:
        return ChatPrompt(default)
    if chosen.custom is not None:
        return ChatPrompt(chosen.custom, custom=True)
    mode = find_mode(services.chat.modes, chosen.mode or "")
    if mode is None:  # the operator has removed it since
        return ChatPrompt(default)
    return ChatPrompt(mode.prompt or default, mode.name)
