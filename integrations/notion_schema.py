"""What the notes database looks like, and how a note fills its properties.

The bot adapts to the database rather than dictating it: the title property is used whatever it
is called; a multi-select called "Tags" gets the note's #hashtags and a URL property called
"Source" or "URL" gets its source, when the database has them. One property is required: a text
property called "Switchboard ID", holding each note's idempotency key, which is how the bot
finds a page it created before when Notion's answer to the create was lost.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
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

    @property
    def title_property(self) -> str | None:
        return next((name for name, kind in self.properties.items() if kind == "title"), None)

    @property
    def key_property(self) -> str | None:
        return self._named((KEY_PROPERTY,), "rich_text")

    @property
    def tags_property(self) -> str | None:
        return self._named((TAGS_PROPERTY,), "multi_select")

    @property
    def source_property(self) -> str | None:
        return self._named(SOURCE_PROPERTIES, "url")

    def problems(self) -> list[str]:
        """What is missing, each with how to fix it in Notion; empty when notes can be saved."""
        found: list[str] = []
        if self.title_property is None:
            found.append("it has no title property (every Notion database has one: is this a database?)")
        if self.key_property is None:
            wrong = self._named((KEY_PROPERTY,), None)
            if wrong is not None:
                found.append(
                    f'its property "{wrong}" is of type {self.properties[wrong]}, but it must be Text: '
                    f'click the "{wrong}" column header → Edit property → Type → Text'
                )
            else:
                found.append(
                    f'it has no Text property named "{KEY_PROPERTY}", which the bot uses so that a note '
                    "is never saved twice: open the database in Notion, click + at the end of the "
                    f'column headers, choose Text and name it "{KEY_PROPERTY}"'
                )
        return found

    def require_usable(self) -> None:
        problems = self.problems()
        if problems:
            raise SchemaProblem(
                "The Notion database cannot take notes yet: " + "; ".join(problems) + ".",
                upstream="notion",
            )

    def optional_missing(self) -> list[str]:
        """Optional properties the database does not have (notes are saved without them)."""
        missing = []
        if self.tags_property is None:
            missing.append(f'a Multi-select "{TAGS_PROPERTY}" for #hashtags')
        if self.source_property is None:
            missing.append(f'a URL property "{SOURCE_PROPERTIES[0]}" for the note\'s source')
        return missing

    def key_filter(self, key: str) -> dict[str, Any]:
        assert self.key_property is not None
        return {"property": self.key_property, "rich_text": {"equals": key}}

    def page_properties(self, note: NoteContent, key: str) -> dict[str, Any]:
        """The page's property values for `note`; call `require_usable` first."""
        title, key_property = self.title_property, self.key_property
        assert title is not None and key_property is not None
        properties: dict[str, Any] = {
            title: {"title": plain_rich_text(note.title)},
            key_property: {"rich_text": plain_rich_text(key)},
        }
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
        return {"database_id": self.database_id, "data_source_id": self.data_source_id, "properties": dict(self.properties)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> NoteSchema:
        return cls(str(value["database_id"]), str(value["data_source_id"]), dict(value["properties"]))

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
