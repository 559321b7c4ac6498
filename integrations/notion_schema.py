"""What the notes database looks like, and how a note fills its properties.

The bot adapts to the database rather than dictating it: the title property is used whatever it
is called; a multi-select called "Tags" gets the note's #hashtags and a URL property called
"Source" or "URL" gets its source, when the database has them. One more property matters: a Text
property called "Switchboard ID", holding each note's idempotency key, which is how the bot finds
a page it created before when Notion's answer to the create was lost. The bot adds it itself
(see `integrations.notion_notes`); when Notion will not let it, notes are still saved, and the
schema says that one may then be saved twice, and how to fix that.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from integrations.errors import BadRequest, MalformedResponse
from integrations.notion_blocks import MAX_URL, block_text, markdown_to_blocks, plain_rich_text

KEY_PROPERTY = "Switchboard ID"
TAGS_PROPERTY = "Tags"
SOURCE_PROPERTIES = ("Source", "URL")
TITLE_LIMIT = 200
_TAG_LIMIT = 100
# A first line of these kinds stands alone; any other (a list item, a code fence) belongs to what follows.
_LINE_BLOCKS = {"paragraph", "heading_1", "heading_2", "heading_3"}
_HASHTAG = re.compile(r"(?<![\w#&/])#(\w[\w-]*)")
# "[1]", "[12]": a search answer's citation markers, which mean nothing in a title.
_CITATION = re.compile(r"[ \t]*\[\d{1,3}\]")
# Notion's names for property types, as its column menu shows them.
_KIND_NAMES = {
    "rich_text": "Text", "title": "Title", "multi_select": "Multi-select", "select": "Select", "url": "URL",
    "number": "Number", "date": "Date", "checkbox": "Checkbox", "status": "Status", "people": "Person",
}
INTEGRATIONS_URL = "https://www.notion.so/my-integrations"


class SchemaProblem(BadRequest):
    """The database lacks what the bot needs; the message says what and how to add it."""


@dataclass(frozen=True)
class NoteContent:
    """One note as queued: everything needed to write its page, whatever the schema is by then."""

    title: str
    body: str = ""
    tags: tuple[str, ...] = ()
    source_url: str | None = None

    def to_payload(self) -> dict[str, Any]:
        return {"title": self.title, "body": self.body, "tags": list(self.tags), "source_url": self.source_url}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> NoteContent:
        return cls(
            title=str(payload.get("title", "")),
            body=str(payload.get("body", "")),
            tags=tuple(str(tag) for tag in payload.get("tags", ())),
            source_url=payload.get("source_url") or None,
        )


@dataclass(frozen=True)
class NoteSchema:
    database_id: str
    data_source_id: str
    # Property name -> Notion property type ("title", "rich_text", "multi_select", "url", ...).
    properties: Mapping[str, str] = field(default_factory=dict)
    # Why Notion would not let the bot add the key property (None: not refused, or not needed).
    key_refused: str | None = None

    @property
    def title_property(self) -> str | None:
        return next((name for name, kind in self.properties.items() if kind == "title"), None)

    @property
    def key_property(self) -> str | None:
        return self._named((KEY_PROPERTY,), "rich_text")

    @property
    def key_addable(self) -> bool:
        """The key property is missing, nothing else has its name, and adding it was not refused."""
        return self._named((KEY_PROPERTY,), None) is None and self.key_refused is None

    def with_key_refused(self, reason: str) -> NoteSchema:
        return replace(self, key_refused=reason)

    @property
    def tags_property(self) -> str | None:
        return self._named((TAGS_PROPERTY,), "multi_select")

    @property
    def source_property(self) -> str | None:
        return self._named(SOURCE_PROPERTIES, "url")

    def problem(self) -> str | None:
        """What keeps notes from being saved, or from being saved exactly once, with how to fix
        it in Notion; None when nothing does. Only a missing title stops notes altogether."""
        if self.title_property is None:
            return (
                "The Notion database cannot take notes: it has no title property "
                "(every Notion database has one: is NOTION_DATABASE_ID a database?)"
            )
        wrong = self._named((KEY_PROPERTY,), None)
        duplicates = (
            "Notes are saved, but one whose answer from Notion is lost (a timeout, a dropped "
            "connection) may be saved twice"
        )
        if self.key_property is None and wrong is not None:
            return (
                f'{duplicates}: the property "{wrong}" that marks each note is of type '
                f"{kind_name(self.properties[wrong])}, not Text. To fix it, click the \"{wrong}\" "
                "column header → Edit property → Type → Text"
            )
        if self.key_property is None and self.key_refused is not None:
            return (
                f'{duplicates}: the database has no Text property "{KEY_PROPERTY}" to mark each note, '
                f"and the bot may not add one ({self.key_refused}). To fix it, open {INTEGRATIONS_URL}, "
                "choose the bot's integration → Capabilities, tick \"Update content\" and save (the bot "
                "then adds the property the next time it reads the database, e.g. at /health or "
                "switchboard check), or add a Text property named "
                f'"{KEY_PROPERTY}" to the database yourself'
            )
        return None

    def require_usable(self) -> None:
        """Raise `SchemaProblem` unless notes can be saved at all (a missing key does not stop them)."""
        if self.title_property is None:
            raise SchemaProblem(f"{self.problem()}.", upstream="notion")

    def remarks(self) -> list[str]:
        """Optional properties that are missing or of another type (notes are saved without them)."""
        found = []
        wanted = (((TAGS_PROPERTY,), "multi_select", "#hashtags are"), (SOURCE_PROPERTIES, "url", "the note's source is"))
        for names, kind, use in wanted:
            if self._named(names, kind) is not None:
                continue
            other = self._named(names, None)
            if other is None:
                found.append(f'no {kind_name(kind)} property "{names[0]}" ({use} not saved; optional)')
            else:
                found.append(
                    f'"{other}" is of type {kind_name(self.properties[other])}, so {use} not saved in it: '
                    f"click its column header → Edit property → Type → {kind_name(kind)}"
                )
        return found

    def key_filter(self, key: str) -> dict[str, Any]:
        assert self.key_property is not None
        return {"property": self.key_property, "rich_text": {"equals": key}}

    def page_properties(self, note: NoteContent, key: str) -> dict[str, Any]:
        """The page's property values for `note`; call `require_usable` first."""
        title, key_property = self.title_property, self.key_property
        assert title is not None
        properties: dict[str, Any] = {title: {"title": plain_rich_text(note.title)}}
        if key_property is not None:
            properties[key_property] = {"rich_text": plain_rich_text(key)}
        tags = self.tags_property
        if tags is not None and note.tags:
            properties[tags] = {"multi_select": [{"name": tag} for tag in note.tags]}
        source = self.source_property
        if source is not None and note.source_url and len(note.source_url) <= MAX_URL:
            properties[source] = {"url": note.source_url}
        return properties

    def page_title(self, page: Mapping[str, Any]) -> str:
        title = self.title_property
        value = page.get("properties", {}).get(title, {}) if title else {}
        items = value.get("title", []) if isinstance(value, dict) else []
        return "".join(_item_text(item) for item in items if isinstance(item, dict))

    def to_json(self) -> dict[str, Any]:
        return {
            "database_id": self.database_id,
            "data_source_id": self.data_source_id,
            "properties": dict(self.properties),
            "key_refused": self.key_refused,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> NoteSchema:
        refused = value.get("key_refused")
        return cls(
            str(value["database_id"]), str(value["data_source_id"]), dict(value["properties"]),
            str(refused) if refused is not None else None,
        )

    def _named(self, names: tuple[str, ...], kind: str | None) -> str | None:
        wanted = {name.casefold() for name in names}
        for name, property_kind in self.properties.items():
            if name.strip().casefold() in wanted and (kind is None or property_kind == kind):
                return name
        return None


def data_source_id(database: Mapping[str, Any]) -> str:
    """The database's first data source (a database made in the Notion app has exactly one)."""
    sources = database.get("data_sources")
    if not isinstance(sources, list) or not sources or not isinstance(sources[0], dict) or "id" not in sources[0]:
        raise MalformedResponse("the database lists no data sources", upstream="notion")
    return str(sources[0]["id"])


def schema_from(database_id: str, data_source: Mapping[str, Any]) -> NoteSchema:
    properties = data_source.get("properties")
    if not isinstance(properties, dict):
        raise MalformedResponse("the data source has no properties object", upstream="notion")
    kinds = {
        str(value.get("name", name)): str(value.get("type", ""))
        for name, value in properties.items()
        if isinstance(value, dict)
    }
    return NoteSchema(database_id, str(data_source.get("id", "")), kinds)


def hashtags(text: str) -> tuple[str, ...]:
    """#hashtags in order of appearance, each once (ignoring case), as Notion option names."""
    seen: dict[str, str] = {}
    for match in _HASHTAG.finditer(text):
        tag = match.group(1)[:_TAG_LIMIT]
        seen.setdefault(tag.casefold(), tag)
    return tuple(seen.values())


def without_hashtags(text: str) -> str:
    return _HASHTAG.sub("", text)


def without_citations(text: str) -> str:
    """`text` without citation markers: "Made from oats [1][2]." → "Made from oats."."""
    return _CITATION.sub("", text)


def kind_name(kind: str) -> str:
    return _KIND_NAMES.get(kind, kind.replace("_", " ").capitalize())


def title_and_body(text: str) -> tuple[str, str]:
    """The first line as the title, its Markdown read (no heading marks, emphasis or link syntax);
    the rest as the body.

    The body keeps the whole text when the title had to be cut, or when the first line begins a
    structure (a list, a code fence, a quote) that the rest continues.
    """
    stripped = text.strip()
    first, _, rest = stripped.partition("\n")
    blocks = markdown_to_blocks(first)
    title = (block_text(blocks[0]) if blocks else first).strip()
    whole = bool(blocks) and blocks[0]["type"] not in _LINE_BLOCKS
    if len(title) > TITLE_LIMIT:
        return title[: TITLE_LIMIT - 1].rstrip() + "…", stripped
    return title or "Untitled note", stripped if whole else rest.strip("\n")


def _item_text(item: Mapping[str, Any]) -> str:
    if "plain_text" in item:
        return str(item["plain_text"])
    text = item.get("text")
    return str(text.get("content", "")) if isinstance(text, dict) else ""
