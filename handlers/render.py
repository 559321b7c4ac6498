"""An LLM's Markdown as Telegram text plus entities, rendered whole or as it grows.

`render_markdown` reads the events of pyromark (pulldown-cmark: CommonMark, plus strikethrough
and tables) and writes plain text while recording entities in UTF-16 code units. Half-written
Markdown must come out readable, as a streaming reply shows every prefix: CommonMark already runs
an unclosed fence to the end of the document and leaves an unclosed `**` as literal asterisks.
Rendering may simplify formatting but never drops words.

`MarkdownStream` renders the successive versions of one growing reply exactly as
`render_markdown` would, but parses and renders each completed top-level block once: a top-level
block is parsed the same whatever came before it, and one that a later block follows on a
complete line cannot change as text is appended. Only the rest is rendered again. Splitting into
sendable parts is `handlers/split.py`.
"""
from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyromark

from handlers.richtext import SPLITTABLE, VERBATIM, Entity, EntityKind, RichText, entity_order, utf16_len

logger = logging.getLogger(__name__)

_LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_HORIZONTAL_RULE = "———"
_NESTED_INDENT = "  "
_NESTS_ONCE: frozenset[EntityKind] = SPLITTABLE | {"blockquote", "text_url"}
_OPTIONS = pyromark.Options.ENABLE_TABLES | pyromark.Options.ENABLE_STRIKETHROUGH

# One parser event and the byte range (UTF-8) of the source it came from.
Event = tuple[Any, Any]


def _events(source: str) -> list[Event]:
    """`source` (newlines and NULs already normalized) as pulldown-cmark's events."""
    return list(pyromark.events_with_range(source, options=_OPTIONS))


def _normalize(markdown: str) -> str:
    """Line endings and NULs as CommonMark reads them, so the stream's prefixes compare alike."""
    if "\r" in markdown:
        markdown = _NEWLINES.sub("\n", markdown)
    return markdown.replace("\0", "\ufffd") if "\0" in markdown else markdown


def render_markdown(markdown: str) -> RichText:
    """Render Markdown to text and entities; on any internal failure, return the Markdown as is."""
    try:
        source = _normalize(markdown)
        writer = _Writer()
        _render_blocks(writer, _events(source), source)
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
    table's delimiter row, the line after its start). A top-level block is parsed the same
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
            if _has_references(complete):
                return
            events = _events(complete)
            completed, line = _completed_blocks(events, complete, complete.count("\n"))
            if completed:
                self._complete(events[:completed], rest, line)
        except Exception:
            self._reset()

    def behind(self, markdown: str) -> int:
        """About how many characters of `markdown` a `render` would parse."""
        return len(markdown) - len(self._source)

    def _reset(self) -> None:
        self._source = ""  # the completed blocks' Markdown, newlines normalized as CommonMark does
        self._text = ""  # their text, not yet stripped
        self._writer = _Writer()  # where the completed blocks left off (it keeps no text itself)
        self._document = _Container(tight=False)
        self._entities: tuple[Entity, ...] = ()  # normalized

    def _rest(self, markdown: str) -> str:
        """The Markdown after the completed blocks (all of it, if it does not extend them)."""
        source = _normalize(markdown)
        if not source.startswith(self._source):
            self._reset()
        return source[len(self._source) :]

    def _render(self, markdown: str) -> RichText:
        rest = self._rest(markdown)
        if _has_references(rest):
            return render_markdown(markdown)
        events = _events(rest)
        completed, line = _completed_blocks(events, rest, rest.count("\n"))
        if completed:
            self._complete(events[:completed], rest, line)
            events = events[completed:]
        writer = self._writer.continued()
        _render_blocks(writer, events, rest, _Container(tight=False, has_child=self._document.has_child))
        text = (self._text + "".join(writer.chunks)).rstrip()
        length = utf16_len(text)
        if length < self._writer.pos:
            # Nothing visible after the completed blocks' trailing space, so their entities would
            # be cut there: rare enough to render whole rather than keep them unnormalized too.
            return render_markdown(markdown)
        return RichText(text, self._entities + _normalized(writer.entities, length))

    def _complete(self, events: list[Event], rest: str, line: int) -> None:
        """Render `events`, the completed blocks in `rest`'s first `line` lines, once for good."""
        _render_blocks(self._writer, events, rest, self._document)
        self._text += "".join(self._writer.chunks)
        self._entities += _normalized(self._writer.entities, self._writer.pos)
        self._writer.chunks, self._writer.entities = [], []
        end = 0
        for _ in range(line):
            end = rest.index("\n", end) + 1
        self._source += rest[:end]


# Every ASCII punctuation mark CommonMark (with GFM's tables and strikethrough) could act on; `&`
# begins an entity reference ("&copy;"). A backslash before any ASCII punctuation is that mark.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()#+\-.!<>|~{}=&])")


def escape_markdown(text: str) -> str:
    """`text` shown literally once rendered, whatever it holds (a title, a file name, an error)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


_NEWLINES = re.compile(r"\r\n?|\n")  # as CommonMark reads line endings
# Where a link reference definition may be (then confirmed by pyromark's block pass alone).
_MAYBE_REFERENCE = re.compile(r"\]:")


def _has_references(source: str) -> bool:
    return _MAYBE_REFERENCE.search(source) is not None and bool(pyromark.reference_definitions(source))


def _completed_blocks(events: list[Event], source: str, complete_lines: int) -> tuple[int, int]:
    """How many leading events make up completed top-level blocks, and the line after them (see
    `MarkdownStream`); (0, 0) for none."""
    # pyromark's ranges count UTF-8 bytes: counted in the text itself while it is ASCII.
    encoded = None if source.isascii() else source.encode()
    depth = 0
    last = (0, 0)
    for index, (event, span) in enumerate(events):
        if isinstance(event, dict) and "End" in event:
            depth -= 1
            continue
        top = depth == 0 and index > 0 and (isinstance(event, dict) and "Start" in event or event == "Rule")
        if top:
            line = source.count("\n", 0, span["start"]) if encoded is None else encoded.count(b"\n", 0, span["start"])
            if line + 1 < complete_lines:
                last = (index, line)
            else:
                break
        if isinstance(event, dict) and "Start" in event:
            depth += 1
    return last


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


# Tags whose start begins a block (a Rule is an event of its own, also a block).
_BLOCKS = frozenset({"Paragraph", "Heading", "List", "BlockQuote", "CodeBlock", "HtmlBlock", "Table"})
_INLINE_STYLES: dict[str, EntityKind] = {"Strong": "bold", "Emphasis": "italic", "Strikethrough": "strike"}
# Inline content directly in a list item is a tight item's paragraph, which pulldown-cmark leaves
# implicit: these events open it.
_INLINE_CONTENT = frozenset({"Text", "Code", "InlineHtml", "Html", "FootnoteReference", "InlineMath"})


@dataclass
class _Container:
    """A document, list item or blockquote: how its child blocks are separated."""

    tight: bool
    has_child: bool = False


@dataclass
class _List:
    outer_indent: str
    next_number: int | None  # None for a bulleted list


def _tag(value: Any) -> str:
    """The name of a Start or End event's tag ("Paragraph", or the key of {"Heading": {...}})."""
    return value if isinstance(value, str) else next(iter(value))


def _render_blocks(writer: _Writer, events: Sequence[Event], source: str, document: _Container | None = None) -> None:
    # One pass over pulldown-cmark's flat event stream; `source` gives table cells their text.
    containers = [document or _Container(tight=False)]
    lists: list[_List] = []
    marks: list[_Mark] = []
    opened: list[tuple[_Mark, dict[str, Any] | None]] = []  # inline styles and links (their attributes)
    in_text = False  # inside a paragraph or heading, or a tight item's implicit paragraph
    code: list[str] | None = None  # a code or HTML block's text, while in one
    language: str | None = None
    index = 0
    while index < len(events):
        event = events[index][0]
        index += 1
        if isinstance(event, str):  # SoftBreak, HardBreak, Rule
            if event == "Rule":
                _start_block(writer, containers[-1])
                writer.write(_HORIZONTAL_RULE)
                in_text = False
            elif code is None:
                # A chat reader sees the LLM's line breaks as it meant them, not joined into one line.
                writer.write("\n")
            continue
        kind, value = next(iter(event.items()))
        if kind == "Start":
            tag = _tag(value)
            if tag in _BLOCKS:
                in_text = tag in ("Paragraph", "Heading")
                _start_block(writer, containers[-1])
            elif not in_text and (tag in _INLINE_STYLES or tag in ("Link", "Image")):
                in_text = True
                _start_block(writer, containers[-1])
            if tag == "Heading":
                marks.append(writer.start_entity())
            elif tag in _INLINE_STYLES:
                opened.append((writer.start_entity(), None))
            elif tag == "Link":
                opened.append((writer.start_entity(), value["Link"]))
            elif tag == "Image":
                index = _render_image(writer, events, index, value["Image"])
            elif tag == "List":
                lists.append(_List(writer.indent, value["List"]))
                containers.append(_Container(tight=True))
            elif tag == "Item":
                in_text = False
                empty = index < len(events) and events[index][0] == {"End": "Item"}
                _open_list_item(writer, lists[-1], containers[-1], empty=empty)
                containers.append(_Container(tight=True))
            elif tag == "BlockQuote":
                in_text = False
                marks.append(writer.start_entity())
                writer.quote_depth += 1
                containers.append(_Container(tight=False))
            elif tag in ("CodeBlock", "HtmlBlock"):
                code = []
                language = _code_language(value)
            elif tag == "Table":
                index = _render_table(writer, events, index, source)
        elif kind == "End":
            tag = _tag(value)
            if tag in ("Paragraph", "Heading"):
                in_text = False
                if tag == "Heading":
                    writer.end_entity("bold", marks.pop())
            elif tag in _INLINE_STYLES:
                writer.end_entity(_INLINE_STYLES[tag], opened.pop()[0])
            elif tag == "Link":
                mark, link = opened.pop()
                assert link is not None
                _close_link(writer, mark, link)
            elif tag == "List":
                lists.pop()
                containers.pop()
            elif tag == "Item":
                in_text = False
                containers.pop()
                writer.indent = lists[-1].outer_indent
            elif tag == "BlockQuote":
                in_text = False
                containers.pop()
                writer.quote_depth -= 1
                # Telegram refuses a blockquote inside a blockquote; the inner one merges into the outer.
                if writer.quote_depth == 0:
                    writer.end_entity("blockquote", marks.pop())
                else:
                    writer.drop(marks.pop())
            elif tag == "CodeBlock" and code is not None:
                _render_pre(writer, "".join(code).rstrip("\n"), language)
                code = None
            elif tag == "HtmlBlock" and code is not None:
                writer.write("".join(code).rstrip())
                code = None
        elif code is not None:
            code.append(value)
        else:
            if not in_text and kind in _INLINE_CONTENT:
                in_text = True
                _start_block(writer, containers[-1])
            if kind == "Code":
                mark = writer.start_entity()
                writer.write(value)
                writer.end_entity("code", mark)
            elif kind in _INLINE_CONTENT:
                writer.write(value)


def _start_block(writer: _Writer, container: _Container) -> None:
    if container.has_child:
        writer.separate(blank_line=not container.tight)
    container.has_child = True


def _code_language(block: Any) -> str | None:
    """A fenced code block's language: the first word of its info string."""
    fence = block.get("CodeBlock") if isinstance(block, dict) else None
    if isinstance(fence, dict) and str(fence.get("Fenced", "")).strip():
        return str(fence["Fenced"]).split(maxsplit=1)[0]
    return None


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


def _render_table(writer: _Writer, events: Sequence[Event], index: int, source: str) -> int:
    """The table starting before `index`, shown as its cells' source text in aligned columns
    (monospaced); returns the index after its End."""
    data: str | bytes = source if source.isascii() else source.encode()  # ranges count UTF-8 bytes
    rows: list[list[str]] = []
    head_rows = 0
    in_head = False
    while index < len(events):
        event, span = events[index]
        index += 1
        if not isinstance(event, dict):
            continue
        if "Start" in event:
            tag = _tag(event["Start"])
            if tag in ("TableHead", "TableRow"):
                in_head = tag == "TableHead"
                rows.append([])
            elif tag == "TableCell":
                cell = data[span["start"] : span["end"]]
                rows[-1].append((cell if isinstance(cell, str) else cell.decode()).strip())
        elif "End" in event:
            tag = _tag(event["End"])
            if tag == "TableHead" and in_head:
                head_rows = len(rows)
            elif tag == "Table":
                break
    columns = max((len(row) for row in rows), default=0)
    rows = [row + [""] * (columns - len(row)) for row in rows]
    widths = [max(len(row[column]) for row in rows) for column in range(columns)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    if head_rows:
        lines.insert(head_rows, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    _render_pre(writer, "\n".join(lines), None)
    return index


def _render_image(writer: _Writer, events: Sequence[Event], index: int, image: dict[str, Any]) -> int:
    """An image as its alt text and address; returns the index after its End."""
    parts: list[str] = []
    depth = 1
    while index < len(events) and depth:
        event = events[index][0]
        index += 1
        if isinstance(event, str):
            if event in ("SoftBreak", "HardBreak"):
                parts.append(" ")
        elif "Start" in event:
            depth += 1
        elif "End" in event:
            depth -= 1
        else:
            parts.append(str(next(iter(event.values()))))
    alt, src = "".join(parts), str(image.get("dest_url", ""))
    writer.write(f"{alt} ({src})" if alt else src)
    return index


def _close_link(writer: _Writer, mark: _Mark, link: dict[str, Any]) -> None:
    url = str(link.get("dest_url", ""))
    if mark.pos is None:  # no visible text: show the address instead
        writer.drop(mark)
        writer.write(url)
    elif link.get("link_type") not in ("Autolink", "Email") and url.lower().startswith(_LINK_SCHEMES):
        # Autolinks already show their URL, and Telegram links those itself.
        writer.end_entity("text_url", mark, url=url)
    else:
        writer.drop(mark)


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
