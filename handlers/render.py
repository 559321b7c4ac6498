"""An LLM's Markdown as Telegram text plus entities, rendered whole or as it grows.

`render_markdown` tokenizes with markdown-it (CommonMark, plus strikethrough and tables) and writes
plain text while recording entities in UTF-16 code units. Half-written Markdown must come out
readable, as a streaming reply shows every prefix: CommonMark already runs an unclosed fence to
the end of the document and leaves an unclosed `**` as literal asterisks. Rendering may simplify
formatting but never drops words: blocks nested past markdown-it's nesting limit come out as
plain paragraphs instead of being skipped.

`MarkdownStream` renders the successive versions of one growing reply exactly as
`render_markdown` would, but parses and renders each completed top-level block once: a top-level
block is parsed the same whatever came before it, and one that a later block follows on a
complete line cannot change as text is appended. Only the rest is rendered again. Splitting into
sendable parts is `handlers/split.py`.
"""
from __future__ import annotations

import bisect
import functools
import logging
import re
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.token import Token

from handlers.richtext import SPLITTABLE, VERBATIM, Entity, EntityKind, RichText, entity_order, utf16_len

logger = logging.getLogger(__name__)

_LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_HORIZONTAL_RULE = "———"
_NESTED_INDENT = "  "
_NESTS_ONCE: frozenset[EntityKind] = SPLITTABLE | {"blockquote", "text_url"}


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


class MarkdownStream:
    """The successive versions of one growing Markdown text, each rendered as `render_markdown` would.

    What is kept between versions: the Markdown of the completed top-level blocks (whole lines),
    the writer's state after them, and their entities, normalized. A block is completed once a
    later top-level block starts on a complete line that is followed by another complete line:
    no text appended can then move that start (the furthest any block rule looks ahead is a
    table's delimiter row, the line after its start). A top-level block is tokenized the same
    whatever precedes it, so each version parses only the text after the completed blocks; its
    entities, which never cross a block, are normalized alone. Link reference definitions are the
    exception, as they change links anywhere: a version with one is rendered whole. A version that
    does not extend the kept Markdown starts over.
    """

    def __init__(self) -> None:
        self._reset()

    def render(self, markdown: str) -> RichText:
        try:
            return self._render(markdown)
        except Exception:
            self._reset()
            return render_markdown(markdown)

    def prepare(self, markdown: str) -> None:
        """Render the blocks `markdown` completes now, so that rendering a later version has less
        to do (the final text, right after the model's last word, comes out sooner)."""
        try:
            rest = self._rest(markdown)
            complete = rest[: rest.rfind("\n") + 1]  # an unfinished line may still change any block
            env: dict[str, object] = {}
            tokens = _parser().parse(complete, env)
            if env.get("references"):
                return
            completed, line = _completed_blocks(tokens, complete.count("\n"))
            if completed:
                self._complete(tokens[:completed], rest, line)
        except Exception:
            self._reset()

    def behind(self, markdown: str) -> int:
        """About how many characters of `markdown` a `render` would parse."""
        return len(markdown) - len(self._source)

    def _reset(self) -> None:
        self._source = ""  # the completed blocks' Markdown, newlines normalized as markdown-it does
        self._text = ""  # their text, not yet stripped
        self._writer = _Writer()  # where the completed blocks left off (it keeps no text itself)
        self._document = _Container(tight=False)
        self._raw_entities: list[Entity] = []
        self._entities: tuple[Entity, ...] = ()  # normalized

    def _rest(self, markdown: str) -> str:
        """The Markdown after the completed blocks (all of it, if it does not extend them)."""
        source = _NULLS.sub("\ufffd", _NEWLINES.sub("\n", markdown))
        if not source.startswith(self._source):
            self._reset()
        return source[len(self._source) :]

    def _render(self, markdown: str) -> RichText:
        rest = self._rest(markdown)
        env: dict[str, object] = {}
        tokens = _parser().parse(rest, env)
        if env.get("references"):
            return render_markdown(markdown)
        completed, line = _completed_blocks(tokens, rest.count("\n"))
        if completed:
            self._complete(tokens[:completed], rest, line)
            tokens = tokens[completed:]
        writer = self._writer.continued()
        _render_blocks(writer, tokens, _Container(tight=False, has_child=self._document.has_child))
        text = (self._text + "".join(writer.chunks)).rstrip()
        length = utf16_len(text)
        if length < self._writer.pos:  # nothing visible after the completed blocks' trailing space
            return RichText(text, _normalized(self._raw_entities + writer.entities, length))
        return RichText(text, self._entities + _normalized(writer.entities, length))

    def _complete(self, tokens: list[Token], rest: str, line: int) -> None:
        """Render `tokens`, the completed blocks in `rest`'s first `line` lines, once for good."""
        _render_blocks(self._writer, tokens, self._document)
        self._text += "".join(self._writer.chunks)
        self._raw_entities += self._writer.entities
        self._entities += _normalized(self._writer.entities, self._writer.pos)
        self._writer.chunks, self._writer.entities = [], []
        end = 0
        for _ in range(line):
            end = rest.index("\n", end) + 1
        self._source += rest[:end]


_NEWLINES = re.compile(r"\r\n?|\n")  # as markdown-it's own normalize step
_NULLS = re.compile(r"\0")


def _completed_blocks(tokens: list[Token], complete_lines: int) -> tuple[int, int]:
    """How many leading tokens make up completed top-level blocks, and the line after them (see
    `MarkdownStream`); (0, 0) for none."""
    for index in range(len(tokens) - 1, 0, -1):
        token = tokens[index]
        if token.level == 0 and token.nesting >= 0 and token.map and token.map[0] + 1 < complete_lines:
            return index, token.map[0]
    return 0, 0


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

    def continued(self) -> "_Writer":
        """A writer for what follows this one's text, between top-level blocks: it writes only the
        new text and records only the new entities."""
        return _Writer(pos=self.pos, _at_line_start=self._at_line_start, _pending_newlines=self._pending_newlines)

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


def _render_blocks(writer: _Writer, tokens: list[Token], document: _Container | None = None) -> None:
    # A walk over markdown-it's flat token stream; building its syntax tree first costs a third
    # of the render time, and this runs on every streamed prefix.
    containers = [document or _Container(tight=False)]
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
        end = entity.offset + entity.length
        if end > text_length:
            if text_length > entity.offset >= 0:
                clipped.append(_resized(entity, entity.offset, text_length))
        elif entity.length > 0 and entity.offset >= 0:
            clipped.append(entity)
    clipped.sort(key=entity_order)

    kept: list[Entity] = []
    ancestors: list[Entity] = []
    for entity in clipped:
        while ancestors and _end(ancestors[-1]) <= entity.offset:
            ancestors.pop()
        if ancestors:
            if _end(ancestors[-1]) < _end(entity):
                entity = _resized(entity, entity.offset, _end(ancestors[-1]))
            if _forbidden_inside(entity, ancestors):
                continue
        kept.append(entity)
        ancestors.append(entity)

    verbatim = [entity for entity in kept if entity.kind in VERBATIM]  # sorted and disjoint
    if verbatim:
        verbatim_starts = [entity.offset for entity in verbatim]
        result: list[Entity] = []
        for entity in kept:
            if entity.kind in SPLITTABLE:
                result.extend(_cut_around(entity, verbatim, bisect.bisect_left(verbatim_starts, entity.offset)))
            else:
                result.append(entity)
        kept = result
    kept.sort(key=entity_order)
    return tuple(kept)


def _resized(entity: Entity, start: int, end: int) -> Entity:
    # Not dataclasses.replace: that costs several times a plain construction, once per entity.
    return Entity(entity.kind, start, end - start, entity.url, entity.language)


def _forbidden_inside(entity: Entity, ancestors: list[Entity]) -> bool:
    for ancestor in ancestors:
        if ancestor.kind in VERBATIM:
            return True
        if ancestor.kind == entity.kind and entity.kind in _NESTS_ONCE:
            return True
        if ancestor.kind == "text_url" and entity.kind in VERBATIM:
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
            pieces.append(_resized(entity, cursor, hole.offset))
        cursor = max(cursor, _end(hole))
    if end > cursor:
        pieces.append(_resized(entity, cursor, end))
    return pieces


def _end(entity: Entity) -> int:
    return entity.offset + entity.length
