"""Long replies split into parts Telegram accepts.

`split_rich_text` cuts a `RichText` into parts of at most `limit` UTF-16 code units and 100
entities each, at the most natural seam available and never inside an entity that could have
fitted whole into one part. `SplitSoFar` does the same for a reply that is still growing, where
a preview needs only the parts that may still change.
"""
from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

from handlers.richtext import VERBATIM, Entity, RichText, entity_order, utf16_len

TELEGRAM_TEXT_LIMIT = 4096
TELEGRAM_ENTITY_LIMIT = 100

# Seams in order of preference; in each pattern, group 1 starts where a part may end.
_SEAMS = (
    re.compile(r"(\n)[ \t]*\n"),
    re.compile(r"(\n)"),
    re.compile(r"[.!?…][\"'”’»)\]]*(\s)"),
    re.compile(r"(\s)"),
)


def split_rich_text(text: RichText, limit: int = TELEGRAM_TEXT_LIMIT) -> list[RichText]:
    """Split into parts of at most `limit` UTF-16 code units and 100 entities each.

    Parts end at a blank line if one is in reach, else a newline, a sentence end, a space, and
    only then anywhere. No part ends inside an entity that could fit whole into one part; an
    entity longer than that is cut and each part carries a copy over its piece, so a long code
    block stays a code block, in its language, in the next message. Whitespace at the seams is
    dropped; a text that is only whitespace gives no parts.
    """
    if not text.text.strip():
        return []
    if utf16_len(text.text) <= limit and len(text.entities) <= TELEGRAM_ENTITY_LIMIT:
        return [text]
    return _Splitter(text, max(limit, 2)).parts()


class SplitSoFar:
    """The parts of a reply that is still growing, split again only from its last part on.

    A preview is split at every update, and a long reply's earlier parts do not change once a
    later part has begun: they are kept as they were cut then, and only the text from the last
    part on is split again. The final text is split whole (`split_rich_text`), so a seam chosen
    a little differently for a preview costs one edit at the end, never a lost word. When the
    text no longer begins with what the kept parts covered, or its formatting there changed (a
    line below a paragraph can make it a heading), the split starts over.
    """

    def __init__(self, limit: int = TELEGRAM_TEXT_LIMIT) -> None:
        self._limit = max(limit, 2)
        self._kept: list[RichText] = []
        self._covered = ""  # the text the kept parts were cut from, seams included
        # The entities that begin in it, as they came (a growing reply's rendering keeps its
        # earlier entities as they were: comparing those is cheap).
        self._covered_entities: tuple[Entity, ...] = ()

    def parts(self, text: RichText) -> list[RichText]:
        if self._covered and not (text.text.startswith(self._covered) and self._same_formatting(text.entities)):
            self._kept, self._covered, self._covered_entities = [], "", ()
        rest = _from(text, len(self._covered))
        if not rest.text.strip():
            return list(self._kept)
        if utf16_len(rest.text) <= self._limit and len(rest.entities) <= TELEGRAM_ENTITY_LIMIT:
            return [*self._kept, rest]
        splitter = _Splitter(rest, self._limit)
        parts = splitter.parts()
        if len(parts) > 1:
            self._kept += parts[:-1]
            self._covered = text.text[: len(self._covered) + splitter.starts[-1]]
            self._covered_entities = _beginning_before(text.entities, utf16_len(self._covered))
        return [*self._kept, parts[-1]]

    def _same_formatting(self, entities: tuple[Entity, ...]) -> bool:
        """Whether `entities` format the covered text as they did when it was split."""
        if entities[: len(self._covered_entities)] == self._covered_entities:
            # The same objects, mostly: those of the completed blocks are kept from render to render.
            if len(entities) == len(self._covered_entities):
                return True
            if entities[len(self._covered_entities)].offset >= utf16_len(self._covered):
                return True
        end = utf16_len(self._covered)  # else compare them cut where the covered text ends
        return _cut_at(_beginning_before(entities, end), end) == _cut_at(self._covered_entities, end)


def _beginning_before(entities: tuple[Entity, ...], end: int) -> tuple[Entity, ...]:
    """The entities that begin before UTF-16 offset `end` (they come sorted by where they begin)."""
    return entities[: bisect.bisect_left([entity.offset for entity in entities], end)]


def _cut_at(entities: tuple[Entity, ...], end: int) -> tuple[Entity, ...]:
    """`entities`, each cut at UTF-16 offset `end`."""
    return tuple(
        Entity(entity.kind, entity.offset, min(entity.offset + entity.length, end) - entity.offset, entity.url,
               entity.language)
        for entity in entities
    )


def _from(text: RichText, start: int) -> RichText:
    """The text from code point `start` on, with the entities over it."""
    if not start:
        return text
    base = utf16_len(text.text[:start])
    entities = [
        Entity(entity.kind, max(entity.offset - base, 0), entity.offset + entity.length - max(entity.offset, base),
               entity.url, entity.language)
        for entity in text.entities
        if entity.offset + entity.length > base
    ]
    entities.sort(key=entity_order)
    return RichText(text.text[start:], tuple(entities))


class _Splitter:
    """Works in code point indices, so a surrogate pair is never cut, and measures in UTF-16."""

    def __init__(self, text: RichText, limit: int) -> None:
        self.text = text.text
        self.limit = limit
        # units[i]: the UTF-16 offset of code point i.
        if utf16_len(self.text) == len(self.text):
            self.units = list(range(len(self.text) + 1))
        else:
            self.units = [0, *itertools.accumulate(2 if ord(char) > 0xFFFF else 1 for char in self.text)]
        self.spans = sorted(
            (span for span in (self._to_span(entity) for entity in text.entities) if span.end > span.start),
            key=lambda span: span.start,
        )
        self.span_starts = [span.start for span in self.spans]
        # A cut strictly inside an entity that fits whole into one part would break it needlessly.
        self.blocked = self._covered([span for span in self.spans if self._width(span) <= limit], inner=True)
        self.verbatim = self._covered([span for span in self.spans if span.entity.kind in VERBATIM], inner=False)
        # Spans that began before the current part and reach into it, and the first that did not begin yet.
        self.open_spans: list[_Span] = []
        self.next_span = 0
        self.starts: list[int] = []

    def parts(self) -> list[RichText]:
        """The parts; `starts` then holds where each begins (code point index)."""
        parts = []
        start = self._skip_seam(0)
        while start < len(self.text):
            self._advance_to(start)
            end = self._cut(start)
            stop = end
            while stop > start and self.text[stop - 1].isspace():
                stop -= 1
            if stop > start:
                parts.append(self._part(start, stop))
                self.starts.append(start)
            start = self._skip_seam(end)
        return parts

    def _to_span(self, entity: Entity) -> _Span:
        start = bisect.bisect_left(self.units, max(entity.offset, 0))
        end = bisect.bisect_left(self.units, entity.offset + entity.length)
        return _Span(start, min(end, len(self.text)), entity)

    def _width(self, span: _Span) -> int:
        return self.units[span.end] - self.units[span.start]

    def _covered(self, spans: list[_Span], *, inner: bool) -> list[bool]:
        """For each position, whether one of `spans` covers it (only strictly inside, if `inner`)."""
        depth = [0] * (len(self.text) + 1)
        for span in spans:
            depth[span.start + 1 if inner else span.start] += 1
            depth[span.end] -= 1
        return [running > 0 for running in itertools.accumulate(depth)]

    def _advance_to(self, start: int) -> None:
        while self.next_span < len(self.spans) and self.spans[self.next_span].start < start:
            self.open_spans.append(self.spans[self.next_span])
            self.next_span += 1
        self.open_spans = [span for span in self.open_spans if span.end > start]

    def _cut(self, start: int) -> int:
        """Where the part beginning at `start` ends (exclusive)."""
        reach = bisect.bisect_right(self.units, self.units[start] + self.limit) - 1
        reach = max(min(reach, self._entity_reach(start)), start + 1)
        if reach >= len(self.text):
            return len(self.text)
        window = self.text[start : reach + 1]  # one char more: a seam right at the reach counts
        halfway = start + (reach - start) // 2
        for earliest in (halfway, start + 1):
            for seam in _SEAMS:
                cut = self._last_seam(seam, window, start, earliest, reach, respect_entities=True)
                if cut is not None:
                    return cut
        for cut in range(reach, start, -1):
            if not self.blocked[cut]:
                return cut
        # Only the entity limit can get here: the entity that would have fitted must be cut too.
        for seam in _SEAMS:
            cut = self._last_seam(seam, window, start, start + 1, reach, respect_entities=False)
            if cut is not None:
                return cut
        return reach

    def _last_seam(
        self, seam: re.Pattern[str], window: str, start: int, earliest: int, reach: int, *, respect_entities: bool
    ) -> int | None:
        best = None
        for match in seam.finditer(window):
            cut = start + match.start(1)
            if cut > reach:
                break
            if cut >= earliest and not (respect_entities and self.blocked[cut]):
                best = cut
        return best

    def _entity_reach(self, start: int) -> int:
        """The furthest end that keeps the part beginning at `start` within Telegram's entity limit."""
        room = TELEGRAM_ENTITY_LIMIT - len(self.open_spans)
        if room < 0:
            return start + 1
        if self.next_span + room >= len(self.spans):
            return len(self.text)
        return self.span_starts[self.next_span + room]

    def _skip_seam(self, position: int) -> int:
        while position < len(self.text) and self.text[position].isspace():
            # A code line's leading spaces are its indentation, not seam whitespace.
            at_line_start = position == 0 or self.text[position - 1] == "\n"
            if self.verbatim[position] and self.text[position] not in "\r\n" and at_line_start:
                break
            position += 1
        return position

    def _part(self, start: int, stop: int) -> RichText:
        base = self.units[start]
        entities = []
        for span in itertools.chain(self.open_spans, itertools.islice(self.spans, self.next_span, None)):
            if span.start >= stop:
                break
            piece_start, piece_end = max(span.start, start), min(span.end, stop)
            if piece_end > piece_start:
                offset, end = self.units[piece_start] - base, self.units[piece_end] - base
                entities.append(Entity(span.entity.kind, offset, end - offset, span.entity.url, span.entity.language))
        entities.sort(key=entity_order)
        return RichText(self.text[start:stop], tuple(entities[:TELEGRAM_ENTITY_LIMIT]))


@dataclass(frozen=True)
class _Span:
    """An entity in code point indices of the text being split."""

    start: int
    end: int
    entity: Entity
