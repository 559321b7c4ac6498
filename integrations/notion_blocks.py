"""Markdown to Notion blocks, cut to fit the API's size limits.

Notion answers 400 `validation_error` to a request over any of these limits, so every block this
module returns already fits them and `request_batches` packs blocks into requests that fit too:

- a rich text's `text.content` and a link's URL: at most 2000 characters. Counted here in UTF-16
  code units (what a JavaScript string's length counts), which is never fewer than characters;
- at most 100 rich text items in one array (a longer text becomes several blocks of its type);
- at most 100 blocks in one children array, and two levels of nesting per request: a top-level
  block may have children, those children may not (deeper lists are flattened into them);
- at most 1000 block elements and 500 KB per request.

Supported: paragraphs, headings (h4-h6 become heading 3), bulleted and numbered lists, fenced and
indented code with its language, quotes, rules, and inline bold, italic, strikethrough, code and
links. Tables become one paragraph per row; images become their alt text linked to the image.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

MAX_TEXT = 2000
MAX_URL = 2000
MAX_RICH_TEXT_ITEMS = 100
MAX_CHILDREN = 100
MAX_DEPTH = 2
MAX_ELEMENTS = 1000
MAX_REQUEST_BYTES = 500_000
# Room left in a request for the page's properties and the JSON around the children.
BATCH_BYTES = 400_000
# A single block stays far below a request: 100 items of 2000 four-byte characters would be 800 KB.
BLOCK_BYTES = 100_000

Block = dict[str, Any]
RichText = list[dict[str, Any]]

# Notion accepts exactly these code languages; anything else is a validation error.
CODE_LANGUAGES = frozenset((
    "abap", "abc", "agda", "arduino", "ascii art", "assembly", "bash", "basic", "bnf", "c", "c#", "c++",
    "clojure", "coffeescript", "coq", "css", "dart", "dhall", "diff", "docker", "ebnf", "elixir", "elm",
    "erlang", "f#", "flow", "fortran", "gherkin", "glsl", "go", "graphql", "groovy", "haskell", "hcl",
    "html", "idris", "java", "javascript", "json", "julia", "kotlin", "latex", "less", "lisp",
    "livescript", "llvm ir", "lua", "makefile", "markdown", "markup", "matlab", "mathematica", "mermaid",
    "nix", "notion formula", "objective-c", "ocaml", "pascal", "perl", "php", "plain text", "powershell",
    "prolog", "protobuf", "purescript", "python", "r", "racket", "reason", "ruby", "rust", "sass",
    "scala", "scheme", "scss", "shell", "smalltalk", "solidity", "sql", "swift", "toml", "typescript",
    "vb.net", "verilog", "vhdl", "visual basic", "webassembly", "xml", "yaml", "java/c/c++/c#",
))
PLAIN_TEXT = "plain text"
_LANGUAGE_ALIASES = {
    "": PLAIN_TEXT, "text": PLAIN_TEXT, "txt": PLAIN_TEXT, "plain": PLAIN_TEXT, "plaintext": PLAIN_TEXT,
    "py": "python", "python3": "python", "js": "javascript", "jsx": "javascript", "mjs": "javascript",
    "node": "javascript", "ts": "typescript", "tsx": "typescript", "sh": "shell", "zsh": "shell",
    "console": "shell", "shell-session": "shell", "ps1": "powershell", "pwsh": "powershell",
    "yml": "yaml", "cpp": "c++", "cxx": "c++", "hpp": "c++", "h": "c", "cs": "c#", "csharp": "c#",
    "fs": "f#", "fsharp": "f#", "golang": "go", "rs": "rust", "rb": "ruby", "kt": "kotlin", "kts": "kotlin",
    "md": "markdown", "dockerfile": "docker", "tex": "latex", "objc": "objective-c", "ml": "ocaml",
    "hs": "haskell", "ex": "elixir", "exs": "elixir", "erl": "erlang", "clj": "clojure", "proto": "protobuf",
    "tf": "hcl", "terraform": "hcl", "vb": "visual basic", "vbnet": "vb.net", "wasm": "webassembly",
    "patch": "diff", "htm": "html", "svg": "xml", "gql": "graphql", "pl": "perl", "mk": "makefile",
    "make": "makefile", "jl": "julia", "sol": "solidity", "pas": "pascal",
}
_ANNOTATION_NODES = {"strong": "bold", "em": "italic", "s": "strikethrough"}
# Notion refuses links that are not absolute URLs (a relative "docs/page" is a validation error).
_LINKABLE = re.compile(r"(?:https?://[^\s/$.?#]\S*|mailto:\S+)", re.IGNORECASE)


def code_language(info: str) -> str:
    """Notion's name for a fenced block's language; unknown languages become plain text."""
    words = info.strip().split()
    name = words[0].lower() if words else ""
    name = _LANGUAGE_ALIASES.get(name, name)
    return name if name in CODE_LANGUAGES else PLAIN_TEXT


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Cut `text` into pieces of at most `limit` UTF-16 units, never inside a surrogate pair."""
    if not text:
        return []
    if len(text) * 2 <= limit or utf16_units(text) <= limit:
        return [text]
    pieces: list[str] = []
    start = units = 0
    for index, char in enumerate(text):
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > limit:
            pieces.append(text[start:index])
            start, units = index, 0
        units += width
    pieces.append(text[start:])
    return pieces


@dataclass(frozen=True)
class Span:
    """A run of text with one set of annotations and at most one link."""

    text: str
    annotations: frozenset[str] = frozenset()
    link: str | None = None


def rich_text(spans: Iterable[Span]) -> RichText:
    """Notion rich text items for `spans`: neighbours with equal styling merged, long text cut."""
    items: RichText = []
    for span in _merged(spans):
        link = span.link if span.link and len(span.link) <= MAX_URL and _LINKABLE.fullmatch(span.link) else None
        for piece in split_text(span.text):
            text: dict[str, Any] = {"content": piece}
            if link is not None:
                text["link"] = {"url": link}
            item: dict[str, Any] = {"type": "text", "text": text}
            if span.annotations:
                item["annotations"] = {name: True for name in sorted(span.annotations)}
            items.append(item)
    return items


def plain_rich_text(text: str) -> RichText:
    return rich_text([Span(text)])


def markdown_to_blocks(markdown: str) -> list[Block]:
    """Top-level blocks for `markdown`, each within the limits (see the module docstring)."""
    if not markdown.strip():
        return []
    tree = SyntaxTreeNode(_parser().parse(markdown))
    draft = [block for node in tree.children for block in _convert(node)]
    return [_to_json(block) for block in _fit(draft, depth=1)]


def request_batches(blocks: list[Block], *, max_bytes: int = BATCH_BYTES) -> list[list[Block]]:
    """Consecutive groups of top-level blocks, each small enough for one request."""
    batches: list[list[Block]] = []
    current: list[Block] = []
    elements = size = 0
    for block in blocks:
        block_elements = element_count(block)
        block_size = len(_encoded(block)) + 1
        if current and (
            len(current) >= MAX_CHILDREN
            or elements + block_elements > MAX_ELEMENTS
            or size + block_size > max_bytes
        ):
            batches.append(current)
            current, elements, size = [], 0, 0
        current.append(block)
        elements += block_elements
        size += block_size
    if current:
        batches.append(current)
    return batches


def element_count(block: Block) -> int:
    """The block and every block nested in it."""
    body = block.get(block.get("type", ""), {})
    children = body.get("children", []) if isinstance(body, dict) else []
    return 1 + sum(element_count(child) for child in children)


def block_text(block: Block) -> str:
    """The plain text of a block's own rich text (not its children's)."""
    body = block.get(block.get("type", ""), {})
    items = body.get("rich_text", []) if isinstance(body, dict) else []
    return "".join(item.get("text", {}).get("content", "") for item in items)


# --- Markdown to a draft tree ----------------------------------------------------------------


@dataclass
class _Draft:
    type: str
    spans: list[Span] = field(default_factory=list)
    language: str | None = None
    children: list[_Draft] = field(default_factory=list)
    # Set once the spans were cut into Notion items (a long text's share of them).
    items: RichText | None = None


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable(["strikethrough", "table"])


def _convert(node: SyntaxTreeNode) -> list[_Draft]:
    kind = node.type
    if kind == "paragraph":
        return [_Draft("paragraph", _inline_spans(node))]
    if kind == "heading":
        level = min(3, int(node.tag[1:]))
        return [_Draft(f"heading_{level}", _inline_spans(node))]
    if kind in ("fence", "code_block"):
        language = code_language(node.info) if kind == "fence" else PLAIN_TEXT
        return [_Draft("code", [Span(node.content.rstrip("\n"))], language=language)]
    if kind in ("bullet_list", "ordered_list"):
        item_type = "bulleted_list_item" if kind == "bullet_list" else "numbered_list_item"
        return [_container(item_type, item) for item in node.children]
    if kind == "blockquote":
        return [_container("quote", node)]
    if kind == "hr":
        return [_Draft("divider")]
    if kind == "html_block":
        return [_Draft("paragraph", [Span(node.content.rstrip("\n"))])]
    if kind == "table":
        return [_Draft("paragraph", _row_spans(row)) for row in _table_rows(node)]
    return [block for child in node.children for block in _convert(child)]


def _container(block_type: str, node: SyntaxTreeNode) -> _Draft:
    """A list item or quote: its first paragraph is its text, everything after are its children."""
    children = list(node.children)
    spans: list[Span] = []
    if children and children[0].type == "paragraph":
        spans = _inline_spans(children.pop(0))
    nested = [block for child in children for block in _convert(child)]
    return _Draft(block_type, spans, children=nested)


def _table_rows(node: SyntaxTreeNode) -> Iterator[SyntaxTreeNode]:
    for section in node.children:
        yield from (row for row in section.children if row.type == "tr")


def _row_spans(row: SyntaxTreeNode) -> list[Span]:
    spans: list[Span] = []
    for index, cell in enumerate(row.children):
        if index:
            spans.append(Span(" | "))
        spans.extend(_inline_spans(cell))
    return spans


def _inline_spans(node: SyntaxTreeNode) -> list[Span]:
    spans: list[Span] = []
    for child in node.children:
        if child.type == "inline":
            _collect(child, frozenset(), None, spans)
    return spans


def _collect(node: SyntaxTreeNode, annotations: frozenset[str], link: str | None, out: list[Span]) -> None:
    for child in node.children:
        kind = child.type
        if kind == "text":
            out.append(Span(child.content, annotations, link))
        elif kind == "code_inline":
            out.append(Span(child.content, annotations | {"code"}, link))
        elif kind in ("softbreak", "hardbreak"):
            out.append(Span("\n", annotations, link))
        elif kind == "html_inline":
            out.append(Span(child.content, annotations, link))
        elif kind in _ANNOTATION_NODES:
            _collect(child, annotations | {_ANNOTATION_NODES[kind]}, link, out)
        elif kind == "link":
            _collect(child, annotations, str(child.attrs.get("href", "")) or link, out)
        elif kind == "image":
            alt = "".join(span.text for span in _spans_of(child)) or "image"
            out.append(Span(alt, annotations, str(child.attrs.get("src", "")) or link))
        else:
            _collect(child, annotations, link, out)


def _spans_of(node: SyntaxTreeNode) -> list[Span]:
    spans: list[Span] = []
    _collect(node, frozenset(), None, spans)
    return spans


# --- Fitting the draft into the limits -------------------------------------------------------


def _fit(blocks: list[_Draft], depth: int) -> list[_Draft]:
    """Blocks at `depth` (1 = top level) with their children trimmed to the nesting and count limits."""
    fitted: list[_Draft] = []
    for block in blocks:
        pieces = _split_long(block)
        last = pieces[-1]
        children = block.children
        fitted.extend(pieces)
        if not children:
            continue
        if depth >= MAX_DEPTH:
            # Too deep for one request: the nested blocks follow their parent as siblings.
            fitted.extend(_fit(children, depth))
            continue
        nested = _fit(children, depth + 1)
        last.children = nested[:MAX_CHILDREN]
        fitted.extend(nested[MAX_CHILDREN:])
    return fitted


def _split_long(block: _Draft) -> list[_Draft]:
    """One block, or several of the same type when its text needs over 100 items or ~100 KB."""
    groups: list[RichText] = [[]]
    size = 0
    for item in rich_text(block.spans):
        item_size = len(_encoded(item)) + 1
        if groups[-1] and (len(groups[-1]) >= MAX_RICH_TEXT_ITEMS or size + item_size > BLOCK_BYTES):
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item_size
    return [_Draft(block.type, language=block.language, items=group) for group in groups]


def _to_json(block: _Draft) -> Block:
    body: dict[str, Any] = {}
    if block.type != "divider":
        body["rich_text"] = block.items if block.items is not None else rich_text(block.spans)
    if block.type == "code":
        body["language"] = block.language or PLAIN_TEXT
    if block.children:
        body["children"] = [_to_json(child) for child in block.children]
    return {"object": "block", "type": block.type, block.type: body}


def _merged(spans: Iterable[Span]) -> Iterator[Span]:
    pending: Span | None = None
    for span in spans:
        if not span.text:
            continue
        if pending is not None and pending.annotations == span.annotations and pending.link == span.link:
            pending = Span(pending.text + span.text, span.annotations, span.link)
            continue
        if pending is not None:
            yield pending
        pending = span
    if pending is not None:
        yield pending


def _encoded(value: Any) -> bytes:
    # As httpx sends it: compact separators, UTF-8 rather than \u escapes.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
