"""An LLM's Markdown as Telegram text plus entities, and long replies split into sendable parts.

`render_markdown` tokenizes with markdown-it (CommonMark, plus strikethrough and tables) and writes
plain text while recording entities in UTF-16 code units. It is called on every growing prefix of
a streaming reply, so half-written Markdown must come out readable: CommonMark already runs an
unclosed fence to the end of the document and leaves an unclosed `**` as literal asterisks.
Rendering may simplify formatting but never drops words: blocks nested past markdown-it's nesting
limit come out as plain paragraphs instead of being skipped.

`split_rich_text` cuts a `RichText` into parts Telegram accepts (at most `limit` UTF-16 code units
and 100 entities each), at the most natural seam available and never inside an entity that could
have fitted whole into one part.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import logging
import re
from dataclasses import dataclass, field, replace

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.token import Token

from handlers.richtext import Entity, EntityKind, RichText, utf16_len

logger = logging.getLogger(__name__)

TELEGRAM_TEXT_LIMIT = 4096
TELEGRAM_ENTITY_LIMIT = 100

_LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_HORIZONTAL_RULE = "———"
_NESTED_INDENT = "  "
# Telegram lets these contain, and be contained by, anything except pre and code.
_SPLITTABLE: frozenset[EntityKind] = frozenset({"bold", "italic", "underline", "strike", "spoiler"})
_VERBATIM: frozenset[EntityKind] = frozenset({"code", "pre"})
# Of two entities over the same range, the one that may contain the other sorts first.
_NESTING_RANK: dict[str, int] = {"blockquote": 0, "text_url": 1, "pre": 3, "code": 3}


def _entity_order(entity: Entity) -> tuple[int, int, int]:
    return (entity.offset, -entity.length, _NESTING_RANK.get(entity.kind, 2))


@functools.lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # Building a parser compiles its rule chains; do it once, not on every streamed prefix.
    parser = MarkdownIt("commonmark").enable(["strikethrough", "table"])
    # First, so that near the nesting limit no container rule nests any deeper.
    first_rule = parser.block.ruler.get_all_rules()[0]
    parser.block.ruler.before(first_rule, "flat_when_too_deep", _flat_when_too_deep)
    return parser


_QUOTE_MARKERS = re.compile(r"^[ \t]*(?:>[ \t]*)+", re.MULTILINE)


def _flat_when_too_deep(state: StateBlock, start_line: int, end_line: int, silent: bool) -> bool:
    """Near the nesting limit, take each block as a plain paragraph rather than lose it.

    At its limit markdown-it skips the rest of the document. The limit guards its recursion, so
    the blocks past it stay flat instead: their text, nested list markers included, without quote
    markers (Telegram merges nested quotes into one anyway).
    """
    # A list opens two levels (list, item) before its items' blocks are parsed.
    if silent or state.level < state.md.options.maxNesting - 2:
        return False
    next_line = _flat_block_end(state, start_line, end_line)
    content = _QUOTE_MARKERS.sub("", state.getLines(start_line, next_line, state.blkIndent, False)).strip()
    state.line = next_line
    if content:
        state.push("paragraph_open", "p", 1).map = [start_line, next_line]
        inline = state.push("inline", "", 0)
        inline.content = content
        inline.map = [start_line, next_line]
        inline.children = []
        state.push("paragraph_close", "p", -1)
    return True


def _flat_block_end(state: StateBlock, start_line: int, end_line: int) -> int:
    """Where a paragraph starting at `start_line` would end, if no other block could interrupt it."""
    if not _QUOTE_MARKERS.sub("", state.getLines(start_line, start_line + 1, state.blkIndent, False)).strip():
        return start_line + 1  # an empty quote: no paragraph that the next lines could continue
    next_line = start_line + 1
    while next_line < end_line and not state.isEmpty(next_line):
        # Lazy continuation lines have a negative indent; a line outdented past blkIndent belongs
        # to an enclosing list item.
        if 0 <= state.sCount[next_line] < state.blkIndent:
            break
        next_line += 1
    return next_line


def render_markdown(markdown: str) -> RichText:
    """Render Markdown to text and entities; on any internal failure, return the Markdown as is."""
    try:
        writer = _Writer()
        _render_blocks(writer, _parser().parse(markdown))
        return writer.finish()
    except Exception:
        logger.warning("Markdown rendering failed; sending the reply as plain text", exc_info=True)
        return RichText.plain(markdown)


@dataclass(eq=False)
class _Mark:
    """Where an entity starts; fixed when its first content is written, so empty ones vanish."""

    pos: int | None = None


@dataclass
class _Writer:
    """Appends text, indenting continuation lines lazily so blank lines carry no trailing spaces."""

    chunks: list[str] = field(default_factory=list)
    pos: int = 0
    entities: list[Entity] = field(default_factory=list)
    indent: str = ""
    quote_depth: int = 0
    _at_line_start: bool = True
    _pending_newlines: int = 0
    _unplaced: list[_Mark] = field(default_factory=list)

    def separate(self, blank_line: bool) -> None:
        """Ask for a break before the next content; nothing is written if no content follows."""
        if self.pos:
            self._pending_newlines = max(self._pending_newlines, 2 if blank_line else 1)

    def write(self, text: str, *, indent_lines: bool = True) -> None:
        for index, line in enumerate(text.split("\n")):
            if index:
                self._append("\n")
                self._at_line_start = True
            if line:
                self._begin_content(indent=indent_lines or index == 0)
                self._append(line)
                self._at_line_start = False

    def start_entity(self) -> _Mark:
        mark = _Mark()
        self._unplaced.append(mark)
        return mark

    def end_entity(self, kind: EntityKind, mark: _Mark, url: str | None = None, language: str | None = None) -> None:
        self.drop(mark)
        if mark.pos is not None and self.pos > mark.pos:
            self.entities.append(Entity(kind, mark.pos, self.pos - mark.pos, url=url, language=language))

    def drop(self, mark: _Mark) -> None:
        """Forget an entity start that will not become an entity."""
        if mark in self._unplaced:
            self._unplaced.remove(mark)

    def finish(self) -> RichText:
        text = "".join(self.chunks).rstrip()
        return RichText(text, _normalized(self.entities, utf16_len(text)))

    def _begin_content(self, indent: bool) -> None:
        if self._pending_newlines:
            self._append("\n" * self._pending_newlines)
            self._pending_newlines = 0
            self._at_line_start = True
        if self._at_line_start and indent and self.indent:
            self._append(self.indent)
            self._at_line_start = False
        for mark in self._unplaced:
            mark.pos = self.pos
        self._unplaced.clear()

    def _append(self, text: str) -> None:
        self.chunks.append(text)
        self.pos += utf16_len(text)


_BLOCK_STARTS = frozenset(
    {
        "paragraph_open", "heading_open", "bullet_list_open", "ordered_list_open", "blockquote_open",
        "fence", "code_block", "hr", "html_block", "table_open",
    }
)


@dataclass
class _Container:
    """A document, list item or blockquote: how its child blocks are separated."""

    tight: bool
    has_child: bool = False


@dataclass
class _List:
    outer_indent: str
    next_number: int | None  # None for a bulleted list


def _render_blocks(writer: _Writer, tokens: list[Token]) -> None:
    # A walk over markdown-it's flat token stream; building its syntax tree first costs a third
    # of the render time, and this runs on every streamed prefix.
    containers = [_Container(tight=False)]
    lists: list[_List] = []
    marks: list[_Mark] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        kind = token.type
        if kind in _BLOCK_STARTS:
            container = containers[-1]
            if container.has_child:
                writer.separate(blank_line=not container.tight)
            container.has_child = True

        if kind == "inline":
            _render_inlines(writer, token.children or [])
        elif kind == "heading_open":
            marks.append(writer.start_entity())
        elif kind == "heading_close":
            writer.end_entity("bold", marks.pop())
        elif kind in ("bullet_list_open", "ordered_list_open"):
            number = int(token.attrs.get("start", 1)) if kind == "ordered_list_open" else None
            lists.append(_List(writer.indent, number))
            containers.append(_Container(tight=True))
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            containers.pop()
        elif kind == "list_item_open":
            _open_list_item(writer, lists[-1], containers[-1], empty=tokens[index + 1].type == "list_item_close")
            containers.append(_Container(tight=True))
        elif kind == "list_item_close":
            containers.pop()
            writer.indent = lists[-1].outer_indent
        elif kind == "blockquote_open":
            marks.append(writer.start_entity())
            writer.quote_depth += 1
            containers.append(_Container(tight=False))
        elif kind == "blockquote_close":
            containers.pop()
            writer.quote_depth -= 1
            # Telegram refuses a blockquote inside a blockquote; the inner one merges into the outer.
            if writer.quote_depth == 0:
                writer.end_entity("blockquote", marks.pop())
            else:
                writer.drop(marks.pop())
        elif kind in ("fence", "code_block"):
            language = token.info.split(maxsplit=1)[0] if token.info.strip() else None
            _render_pre(writer, token.content.rstrip("\n"), language)
        elif kind == "table_open":
            end = next(later for later in range(index, len(tokens)) if tokens[later].type == "table_close")
            _render_pre(writer, _table_text(tokens[index:end]), None)
            index = end
        elif kind == "hr":
            writer.write(_HORIZONTAL_RULE)
        elif kind == "html_block":
            writer.write(token.content.rstrip())
        index += 1


def _open_list_item(writer: _Writer, items: _List, container: _Container, empty: bool) -> None:
    if container.has_child:
        writer.separate(blank_line=False)
    container.has_child = True
    if items.next_number is None:
        marker = "•"
    else:
        marker = f"{items.next_number}."
        items.next_number += 1
    writer.write(marker if empty else marker + " ")
    writer.indent = items.outer_indent + _NESTED_INDENT


def _render_pre(writer: _Writer, code: str, language: str | None) -> None:
    # Code keeps its own indentation: list indentation would end up in whatever the user copies.
    mark = writer.start_entity()
    writer.write(code, indent_lines=False)
    writer.end_entity("pre", mark, language=language)


def _table_text(tokens: list[Token]) -> str:
    """The table's cells as source text, in aligned columns, to be shown monospaced."""
    rows: list[list[str]] = []
    head_rows = 0
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type in ("th_open", "td_open"):
            rows[-1].append("")
        elif token.type == "inline":
            rows[-1][-1] = token.content.strip()
        elif token.type == "thead_close":
            head_rows = len(rows)
    columns = max((len(row) for row in rows), default=0)
    rows = [row + [""] * (columns - len(row)) for row in rows]
    widths = [max(len(row[column]) for row in rows) for column in range(columns)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    if head_rows:
        lines.insert(head_rows, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


_INLINE_STYLES: dict[str, EntityKind] = {"strong_open": "bold", "em_open": "italic", "s_open": "strike"}
_INLINE_CLOSES = frozenset({"strong_close", "em_close", "s_close", "link_close"})


def _render_inlines(writer: _Writer, tokens: list[Token]) -> None:
    opened: list[tuple[_Mark, Token]] = []
    for token in tokens:
        kind = token.type
        if kind in ("text", "html_inline"):
            writer.write(token.content)
        elif kind in ("softbreak", "hardbreak"):
            # A chat reader sees the LLM's line breaks as it meant them, not joined into one line.
            writer.write("\n")
        elif kind == "code_inline":
            mark = writer.start_entity()
            writer.write(token.content)
            writer.end_entity("code", mark)
        elif kind in _INLINE_STYLES or kind == "link_open":
            opened.append((writer.start_entity(), token))
        elif kind in _INLINE_CLOSES:
            mark, opener = opened.pop()
            if opener.type == "link_open":
                _close_link(writer, mark, opener)
            else:
                writer.end_entity(_INLINE_STYLES[opener.type], mark)
        elif kind == "image":
            alt = _plain_text(token.children or [])
            src = str(token.attrs.get("src", ""))
            writer.write(f"{alt} ({src})" if alt else src)


def _close_link(writer: _Writer, mark: _Mark, opener: Token) -> None:
    url = str(opener.attrs.get("href", ""))
    if mark.pos is None:  # no visible text: show the address instead
        writer.drop(mark)
        writer.write(url)
    elif opener.markup != "autolink" and url.lower().startswith(_LINK_SCHEMES):
        # Autolinks already show their URL, and Telegram links those itself.
        writer.end_entity("text_url", mark, url=url)
    else:
        writer.drop(mark)


def _plain_text(tokens: list[Token]) -> str:
    parts: list[str] = []
    for token in tokens:
        if token.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif token.type == "image":
            parts.append(_plain_text(token.children or []))
        else:
            parts.append(token.content)
    return "".join(parts)


def _normalized(entities: list[Entity], text_length: int) -> tuple[Entity, ...]:
    """Clip entities to the text and drop or split those Telegram would refuse.

    Telegram's nesting rules: entities nest or are disjoint; nothing goes inside pre or code;
    blockquotes do not nest; links contain no links or code; bold, italic, underline, strike and
    spoiler may surround anything except pre and code, so they are cut around those.
    """
    clipped = []
    for entity in entities:
        end = min(entity.offset + entity.length, text_length)
        if end > entity.offset >= 0:
            clipped.append(replace(entity, length=end - entity.offset))
    clipped.sort(key=_entity_order)

    kept: list[Entity] = []
    ancestors: list[Entity] = []
    for entity in clipped:
        while ancestors and _end(ancestors[-1]) <= entity.offset:
            ancestors.pop()
        if ancestors and _end(ancestors[-1]) < _end(entity):
            entity = replace(entity, length=_end(ancestors[-1]) - entity.offset)
        if _forbidden_inside(entity, ancestors):
            continue
        kept.append(entity)
        ancestors.append(entity)

    verbatim = [entity for entity in kept if entity.kind in _VERBATIM]  # sorted and disjoint
    verbatim_starts = [entity.offset for entity in verbatim]
    result: list[Entity] = []
    for entity in kept:
        if entity.kind in _SPLITTABLE:
            result.extend(_cut_around(entity, verbatim, bisect.bisect_left(verbatim_starts, entity.offset)))
        else:
            result.append(entity)
    result.sort(key=_entity_order)
    return tuple(result)


def _forbidden_inside(entity: Entity, ancestors: list[Entity]) -> bool:
    for ancestor in ancestors:
        if ancestor.kind in _VERBATIM:
            return True
        if ancestor.kind == entity.kind and entity.kind in _SPLITTABLE | {"blockquote", "text_url"}:
            return True
        if ancestor.kind == "text_url" and entity.kind in _VERBATIM:
            return True
    return False


def _cut_around(entity: Entity, verbatim: list[Entity], first: int) -> list[Entity]:
    """The pieces of `entity` outside the verbatim entities it contains (from index `first` on)."""
    end = _end(entity)
    if first >= len(verbatim) or verbatim[first].offset >= end:
        return [entity]
    pieces = []
    cursor = entity.offset
    for hole in verbatim[first:]:
        if hole.offset >= end:
            break
        if hole.offset > cursor:
            pieces.append(replace(entity, offset=cursor, length=hole.offset - cursor))
        cursor = max(cursor, _end(hole))
    if end > cursor:
        pieces.append(replace(entity, offset=cursor, length=end - cursor))
    return pieces


def _end(entity: Entity) -> int:
    return entity.offset + entity.length


# --- Splitting -------------------------------------------------------------------------------

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
        self.verbatim = self._covered([span for span in self.spans if span.entity.kind in _VERBATIM], inner=False)
        # Spans that began before the current part and reach into it, and the first that did not begin yet.
        self.open_spans: list[_Span] = []
        self.next_span = 0

    def parts(self) -> list[RichText]:
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
        entities.sort(key=_entity_order)
        return RichText(self.text[start:stop], tuple(entities[:TELEGRAM_ENTITY_LIMIT]))


@dataclass(frozen=True)
class _Span:
    """An entity in code point indices of the text being split."""

    start: int
    end: int
    entity: Entity
