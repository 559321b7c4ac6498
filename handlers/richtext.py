"""Formatted text as Telegram understands it: plain text plus entities.

Offsets and lengths count UTF-16 code units, as Telegram does. Transports translate `Entity`
to their own types (Telethon's MessageEntity*, ANSI for a terminal).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

EntityKind = Literal["bold", "italic", "underline", "strike", "code", "pre", "text_url", "blockquote", "spoiler"]

# Telegram lets these contain, and be contained by, anything except pre and code.
SPLITTABLE: frozenset[EntityKind] = frozenset({"bold", "italic", "underline", "strike", "spoiler"})
# Nothing may go inside these.
VERBATIM: frozenset[EntityKind] = frozenset({"code", "pre"})
# Of two entities over the same range, the one that may contain the other sorts first.
_NESTING_RANK: dict[str, int] = {"blockquote": 0, "text_url": 1, "pre": 3, "code": 3}


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


def entity_order(entity: Entity) -> tuple[int, int, int]:
    """Sorts entities by start, outer ones before those they contain."""
    return (entity.offset, -entity.length, _NESTING_RANK.get(entity.kind, 2))


def utf16_len(text: str) -> int:
    if text.isascii():  # O(1): CPython knows it
        return len(text)
    return len(text.encode("utf-16-le")) // 2
