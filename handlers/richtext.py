"""Formatted text as Telegram understands it: plain text plus entities.

Offsets and lengths count UTF-16 code units, as Telegram does. Transports translate `Entity`
to their own types (Telethon's MessageEntity*, ANSI for a terminal).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

EntityKind = Literal["bold", "italic", "underline", "strike", "code", "pre", "text_url", "blockquote", "spoiler"]


@dataclass(frozen=True)
class Entity:
    kind: EntityKind
    offset: int
    length: int
    url: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class RichText:
    text: str
    entities: tuple[Entity, ...] = field(default_factory=tuple)

    @classmethod
    def plain(cls, text: str) -> "RichText":
        return cls(text, ())


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2
