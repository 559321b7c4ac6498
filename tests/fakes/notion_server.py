"""A strict local Notion (API version 2025-09-03): one database with one data source, and its pages.

Endpoints: GET /v1/databases/{id}, GET and PATCH /v1/data_sources/{id} (the PATCH changes
properties only: adds, renames, removes; with `update_content=False`, as for an integration without
the "Update content" capability, it is 403 `restricted_resource`), POST /v1/data_sources/{id}/query,
POST /v1/pages, GET /v1/pages/{id}, PATCH and GET /v1/blocks/{id}/children.

Strict as the real API is, so a client bug shows here rather than in production: every request
needs `Authorization: Bearer <token>` (401 `unauthorized`) and `Notion-Version` (400
`missing_version`); bodies are checked against the documented limits (rich text content and link
URLs at most 2000 characters, counted in UTF-16 units as JavaScript does; at most 100 items per
rich text array; at most 100 blocks per children array; two levels of nesting per request; at
most 1000 block elements and 500 KB per request) and against the schema (unknown properties,
wrong value shapes, unknown filter or sort keys) with 400 `validation_error`. Errors use the
documented body `{"object": "error", "status", "code", "message", "request_id"}`.

Rate limit: more than `requests_per_second` requests within a rolling second (on the test's
clock) get 429 `rate_limited` with Retry-After. Faults: `down` refuses everything; `script()`
queues behaviours for the next matching requests: a `Refuse` (any error status, e.g. 503, 500,
429 with Retry-After) or `LOSE_RESPONSE` (the request takes effect, then the connection is reset
before any answer, as when a response is lost on the way back). `STALL_RESPONSE` and
`MALFORMED_RESPONSE` also take effect first, then send nothing until the client hangs up, or a 200
whose JSON body is cut off half way.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from integrations.clock import Clock
from tests.fakes.http_server import RESET, STALL, FakeUpstream, Fault, HttpServer, RecordedRequest, Response

NOTION_VERSION = "2025-09-03"
MAX_TEXT = 2000
MAX_URL = 2000
MAX_ARRAY = 100
MAX_CHILDREN = 100
MAX_DEPTH = 2
MAX_ELEMENTS = 1000
MAX_BODY_BYTES = 500_000

DEFAULT_PROPERTIES = {"Name": "title", "Switchboard ID": "rich_text", "Tags": "multi_select", "Source": "url"}

# Copied from Notion's validation message, not from the code under test, so a wrong entry there shows.
LANGUAGES = frozenset((
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
TEXT_BLOCKS = {
    "paragraph", "heading_1", "heading_2", "heading_3", "bulleted_list_item", "numbered_list_item",
    "quote", "to_do", "toggle", "code", "callout",
}
PARENT_BLOCKS = {"paragraph", "bulleted_list_item", "numbered_list_item", "quote", "to_do", "toggle", "callout"}
BLOCK_TYPES = TEXT_BLOCKS | {"divider"}
ANNOTATIONS = {"bold", "italic", "strikethrough", "underline", "code", "color"}
RICH_TEXT_FILTERS = {"equals", "does_not_equal", "contains", "does_not_contain", "starts_with", "ends_with", "is_empty", "is_not_empty"}
QUERY_KEYS = {"filter", "sorts", "start_cursor", "page_size", "archived", "in_trash", "result_type"}
DATA_SOURCE_UPDATE_KEYS = {"title", "description", "icon", "properties", "in_trash", "archived", "parent"}
PROPERTY_TYPES = {
    "title", "rich_text", "number", "select", "multi_select", "status", "date", "people", "files", "checkbox",
    "url", "email", "phone_number", "formula", "relation", "rollup", "created_time", "created_by",
    "last_edited_time", "last_edited_by", "unique_id",
}
_URL = re.compile(r"(https?://[^\s/$.?#][^\s]*|mailto:\S+)", re.IGNORECASE)


class NotionError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def invalid(message: str) -> NotionError:
    return NotionError(400, "validation_error", f"body failed validation: {message}")


@dataclass(frozen=True)
class Refuse:
    status: int = 503
    code: str = "service_unavailable"
    message: str = "Notion is unavailable. Try again later."
    retry_after: float | None = None


class _LoseResponse:
    def __repr__(self) -> str:
        return "LOSE_RESPONSE"


LOSE_RESPONSE = _LoseResponse()


@dataclass(frozen=True)
class _SpoiledResponse:
    """The request takes effect, then its answer goes wrong on the way back."""

    name: str

    def __repr__(self) -> str:
        return self.name


# No answer until the client gives up, as when Notion hangs after acting.
STALL_RESPONSE = _SpoiledResponse("STALL_RESPONSE")
# A 200 whose JSON is cut off half way, as a truncating proxy would send it.
MALFORMED_RESPONSE = _SpoiledResponse("MALFORMED_RESPONSE")
Behaviour = Refuse | _LoseResponse | _SpoiledResponse


def rate_limited(retry_after: float = 1) -> Refuse:
    return Refuse(429, "rate_limited", "You have been rate limited. Please try again in a few minutes.", retry_after)


def unavailable(status: int = 503) -> Refuse:
    code = {500: "internal_server_error", 502: "bad_gateway", 504: "gateway_timeout"}.get(status, "service_unavailable")
    return Refuse(status, code, "Notion is having trouble. Try again later.")


@dataclass
class Arrival:
    at: float
    method: str
    path: str
    status: int = 0


@dataclass
class _Scripted:
    behaviour: Behaviour
    method: str | None
    path: str | None


@dataclass
class FakePage:
    id: str
    created_time: str
    properties: dict[str, Any]
    url: str
    children: list[dict[str, Any]] = field(default_factory=list)


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def check_rich_text(items: Any, where: str) -> None:
    """Raise a validation error unless `items` is a rich text array Notion would accept."""
    if not isinstance(items, list):
        raise invalid(f"{where} should be an array, instead was `{type(items).__name__}`.")
    if len(items) > MAX_ARRAY:
        raise invalid(f"{where}.length should be ≤ `{MAX_ARRAY}`, instead was `{len(items)}`.")
    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("text"), dict):
            raise invalid(f"{at}.text should be defined, instead was `undefined`.")
        extra = set(item) - {"type", "text", "annotations"}
        if extra or item.get("type", "text") != "text":
            raise invalid(f"{at} should be a text rich text item (unexpected {sorted(extra) or item.get('type')}).")
        text = item["text"]
        if set(text) - {"content", "link"} or not isinstance(text.get("content"), str):
            raise invalid(f"{at}.text.content should be a string.")
        length = utf16_units(text["content"])
        if length > MAX_TEXT:
            raise invalid(f"{at}.text.content.length should be ≤ `{MAX_TEXT}`, instead was `{length}`.")
        link = text.get("link")
        if link is not None:
            url = link.get("url") if isinstance(link, dict) else None
            if not isinstance(url, str) or not _URL.fullmatch(url):
                raise invalid(f"{at}.text.link.url should be a valid URL, instead was `{url!r}`.")
            if len(url) > MAX_URL:
                raise invalid(f"{at}.text.link.url.length should be ≤ `{MAX_URL}`, instead was `{len(url)}`.")
        annotations = item.get("annotations", {})
        if not isinstance(annotations, dict) or set(annotations) - ANNOTATIONS:
            raise invalid(f"{at}.annotations has unknown keys.")
        if any(not isinstance(value, bool) for key, value in annotations.items() if key != "color"):
            raise invalid(f"{at}.annotations values should be booleans.")


def check_children(children: Any, where: str = "body.children") -> None:
    """Raise a validation error unless one request's children array is within every limit."""
    if not isinstance(children, list):
        raise invalid(f"{where} should be an array.")
    _check_blocks(children, where, depth=1)
    elements = sum(_elements(block) for block in children)
    if elements > MAX_ELEMENTS:
        raise invalid(f"{where} contains {elements} block elements; the limit is {MAX_ELEMENTS}.")


def _check_blocks(blocks: list[Any], where: str, depth: int) -> None:
    if len(blocks) > MAX_CHILDREN:
        raise invalid(f"{where}.length should be ≤ `{MAX_CHILDREN}`, instead was `{len(blocks)}`.")
    for index, block in enumerate(blocks):
        at = f"{where}[{index}]"
        if not isinstance(block, dict):
            raise invalid(f"{at} should be an object.")
        kind = block.get("type") or next((key for key in block if key in BLOCK_TYPES), None)
        if kind not in BLOCK_TYPES or not isinstance(block.get(kind), dict):
            raise invalid(f"{at} should be a block object with a supported type, instead was `{kind}`.")
        extra = set(block) - {"object", "type", kind}
        if extra:
            raise invalid(f"{at}.{sorted(extra)[0]} should be not present.")
        body = block[kind]
        if kind in TEXT_BLOCKS:
            check_rich_text(body.get("rich_text"), f"{at}.{kind}.rich_text")
        if kind == "code" and body.get("language") not in LANGUAGES:
            raise invalid(f"{at}.code.language should be one of Notion's languages, instead was `{body.get('language')!r}`.")
        children = body.get("children")
        if children is None:
            continue
        if kind not in PARENT_BLOCKS:
            raise invalid(f"{at}.{kind}.children should be not present.")
        if depth >= MAX_DEPTH:
            raise invalid(f"{at}.{kind}.children: at most {MAX_DEPTH} levels of nesting are allowed in one request.")
        if not isinstance(children, list):
            raise invalid(f"{at}.{kind}.children should be an array.")
        _check_blocks(children, f"{at}.{kind}.children", depth + 1)


def _elements(block: dict[str, Any]) -> int:
    body = block.get(block.get("type", ""), {})
    return 1 + sum(_elements(child) for child in body.get("children", []) or [])


class FakeNotion(FakeUpstream):
    """`async with FakeNotion(token=..., clock=clock) as notion:` then use `notion.base_url`."""

    def __init__(
        self,
        *,
        token: str,
        clock: Clock,
        properties: dict[str, str] | None = None,
        requests_per_second: int | None = 3,
        rate_limit_retry_after: float = 1,
        update_content: bool = True,
    ) -> None:
        self.token = token
        # The integration's "Update content" capability: without it, schema changes are refused.
        self.update_content = update_content
        self.clock = clock
        self.requests_per_second = requests_per_second
        self.rate_limit_retry_after = rate_limit_retry_after
        self._ids = itertools.count(1)
        self.database_id = self._new_id()
        self.data_source_id = self._new_id()
        self.properties: dict[str, dict[str, Any]] = {}
        for name, kind in (DEFAULT_PROPERTIES if properties is None else properties).items():
            self.properties[name] = _property(name, kind, "title" if kind == "title" else self._new_id()[:4])
        self.pages: list[FakePage] = []
        self._blocks: dict[str, dict[str, Any]] = {}
        self.down: Refuse | None = None
        self.arrivals: list[Arrival] = []
        self.refusals: list[tuple[int, str, str]] = []
        self._script: deque[_Scripted] = deque()
        self._accepted: deque[float] = deque()
        self._request_ids = itertools.count(1)
        self.server = HttpServer(self._handle)

    def script(self, *behaviours: Behaviour, method: str | None = None, path: str | None = None) -> None:
        """Apply `behaviours`, one each, to the next requests matching `method` and path prefix."""
        self._script.extend(_Scripted(b, method, path) for b in behaviours)

    def add_property(self, name: str, kind: str) -> None:
        """The database's owner adds a column in Notion."""
        self.properties[name] = _property(name, kind, self._new_id()[:4])
        for page in self.pages:
            page.properties[name] = self._value_json(self.properties[name], None)

    def add_page(self, title: str, **values: Any) -> FakePage:
        """Seed a page as if someone had created it in Notion."""
        properties = {self._title_name(): {"title": [{"text": {"content": title}}]}}
        properties.update(values)
        return self._create_page(properties, [])

    def page_with_key(self, key: str) -> list[FakePage]:
        name = next((n for n, p in self.properties.items() if p["type"] == "rich_text"), None)
        return [p for p in self.pages if name and _plain(p.properties[name]["rich_text"]) == key]

    def title_of(self, page: FakePage) -> str:
        return _plain(page.properties[self._title_name()]["title"])

    def page_lines(self, page: FakePage) -> list[str]:
        """The page's text, one line per block (nested blocks included, in order)."""
        lines: list[str] = []
        _walk_text(page.children, lines)
        return lines

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.server.requests if r.method == method and r.path.startswith(path_prefix)]

    # --- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: RecordedRequest) -> Response | Fault:
        arrival = Arrival(self.clock.monotonic(), request.method, request.path)
        self.arrivals.append(arrival)
        request_id = str(uuid.UUID(int=next(self._request_ids)))
        try:
            outcome = self._answer(request, arrival)
        except NotionError as error:
            arrival.status = error.status
            self.refusals.append((error.status, error.code, error.message))
            body = {"object": "error", "status": error.status, "code": error.code, "message": error.message, "request_id": request_id}
            return Response.json(body, error.status, {"x-request-id": request_id, **error.headers})
        if isinstance(outcome, Fault):
            arrival.status = -1
            return outcome
        if isinstance(outcome, Response):
            arrival.status = outcome.status
            return outcome
        arrival.status = 200
        return Response.json({**outcome, "request_id": request_id}, headers={"x-request-id": request_id})

    def _answer(self, request: RecordedRequest, arrival: Arrival) -> dict[str, Any] | Fault | Response:
        self._authenticate(request)
        self._limit_rate(arrival.at)
        if self.down is not None:
            raise _refusal(self.down)
        scripted = self._next_scripted(request)
        if isinstance(scripted, Refuse):
            raise _refusal(scripted)
        if len(request.body) > MAX_BODY_BYTES:
            raise invalid(f"the request body is {len(request.body)} bytes; the limit is {MAX_BODY_BYTES}.")
        answer = self._route(request)
        if scripted is STALL_RESPONSE:
            return STALL
        if scripted is MALFORMED_RESPONSE:
            whole = json.dumps(answer).encode()
            return Response(200, {"content-type": "application/json"}, whole[: len(whole) // 2])
        return RESET if scripted is LOSE_RESPONSE else answer

    def _authenticate(self, request: RecordedRequest) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or token != self.token:
            raise NotionError(401, "unauthorized", "API token is invalid.")
        version = request.headers.get("notion-version")
        if version is None:
            raise NotionError(400, "missing_version", "Notion-Version header failed validation: Notion-Version header should be defined, instead was `undefined`.")
        if version != NOTION_VERSION:
            raise NotionError(400, "validation_error", f"This fake only speaks Notion-Version {NOTION_VERSION}, not {version!r}.")

    def _limit_rate(self, now: float) -> None:
        if self.requests_per_second is None:
            return
        # A hair of tolerance: a limiter spacing requests exactly 1/3 s apart sums to 0.99999... s.
        while self._accepted and now - self._accepted[0] >= 1.0 - 1e-6:
            self._accepted.popleft()
        if len(self._accepted) >= self.requests_per_second:
            wait = max(self.rate_limit_retry_after, math.ceil(self._accepted[0] + 1.0 - now))
            raise NotionError(429, "rate_limited", "You have been rate limited. Please try again in a few minutes.", {"retry-after": f"{wait:g}"})
        self._accepted.append(now)

    def _next_scripted(self, request: RecordedRequest) -> Behaviour | None:
        for scripted in self._script:
            if (scripted.method in (None, request.method)) and (scripted.path is None or request.path.startswith(scripted.path)):
                self._script.remove(scripted)
                return scripted.behaviour
        return None

    def _route(self, request: RecordedRequest) -> dict[str, Any]:
        parts = request.path.strip("/").split("/")
        method = request.method
        if parts[:1] != ["v1"]:
            raise NotionError(400, "invalid_request_url", "Invalid request URL.")
        route = parts[1:]
        if method == "GET" and len(route) == 2 and route[0] == "databases":
            return self._database(route[1])
        if method == "GET" and len(route) == 2 and route[0] == "data_sources":
            return self._data_source(route[1])
        if method == "PATCH" and len(route) == 2 and route[0] == "data_sources":
            return self._update_data_source(route[1], _json_body(request))
        if method == "POST" and len(route) == 3 and route[0] == "data_sources" and route[2] == "query":
            return self._query(route[1], request)
        if method == "POST" and route == ["pages"]:
            return self._create(_json_body(request))
        if method == "GET" and len(route) == 2 and route[0] == "pages":
            return self._page_json(self._page(route[1]))
        if len(route) == 3 and route[0] == "blocks" and route[2] == "children":
            if method == "PATCH":
                return self._append(route[1], _json_body(request))
            if method == "GET":
                return self._list_children(route[1], request.query)
        raise NotionError(400, "invalid_request_url", "Invalid request URL.")

    # --- Databases and data sources -----------------------------------------------------------

    def _database(self, database_id: str) -> dict[str, Any]:
        if _norm(database_id) != _norm(self.database_id):
            raise _not_found("database", database_id)
        return {
            "object": "database",
            "id": self.database_id,
            "title": _rich_response([{"text": {"content": "Notes"}}]),
            "description": [],
            "parent": {"type": "workspace", "workspace": True},
            "is_inline": False,
            "in_trash": False,
            "is_locked": False,
            "created_time": "2026-01-01T00:00:00.000Z",
            "last_edited_time": "2026-01-01T00:00:00.000Z",
            "data_sources": [{"id": self.data_source_id, "name": "Notes"}],
            "icon": None,
            "cover": None,
            "url": f"https://www.notion.so/{_norm(self.database_id)}",
            "public_url": None,
        }

    def _data_source(self, data_source_id: str) -> dict[str, Any]:
        self._require_data_source(data_source_id)
        return {
            "object": "data_source",
            "id": self.data_source_id,
            "title": _rich_response([{"text": {"content": "Notes"}}]),
            "description": [],
            "parent": {"type": "database_id", "database_id": self.database_id},
            "database_parent": {"type": "workspace", "workspace": True},
            "properties": {name: dict(value) for name, value in self.properties.items()},
            "archived": False,
            "in_trash": False,
            "created_time": "2026-01-01T00:00:00.000Z",
            "last_edited_time": "2026-01-01T00:00:00.000Z",
            "url": f"https://www.notion.so/{_norm(self.data_source_id)}",
        }

    def _update_data_source(self, data_source_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self._require_data_source(data_source_id)
        if not self.update_content:
            raise NotionError(403, "restricted_resource", "Insufficient permissions for this endpoint.")
        unknown = set(body) - DATA_SOURCE_UPDATE_KEYS
        if unknown:
            raise invalid(f"body.{sorted(unknown)[0]} should be not present.")
        if set(body) != {"properties"}:
            raise invalid("this fake changes only properties.")
        changes = body["properties"]
        if not isinstance(changes, dict):
            raise invalid("body.properties should be an object.")
        # Checked as a whole first: Notion applies all of a request's changes or none.
        steps = [self._property_change(name, change) for name, change in changes.items()]
        for step in steps:
            step()
        return self._data_source(data_source_id)

    def _property_change(self, name: str, change: Any) -> Callable[[], None]:
        """Check one entry of `properties` in a data source update; return what applies it."""
        existing = self._find_property(name)
        if change is None:
            if existing is None:
                raise invalid(f"Could not find property with name or id: {name}")
            if existing["type"] == "title":
                raise invalid("The title property cannot be removed.")
            return lambda: self._remove_property(existing["name"])
        if not isinstance(change, dict):
            raise invalid(f"body.properties.{name} should be an object or `null`.")
        kinds = set(change) - {"name", "description"}
        new_name = change.get("name", existing["name"] if existing else name)
        if not isinstance(new_name, str) or not new_name.strip():
            raise invalid(f"body.properties.{name}.name should be a non-empty string.")
        if len(kinds) > 1 or (kinds and next(iter(kinds)) not in PROPERTY_TYPES):
            raise invalid(f"body.properties.{name} should name one property type, instead was `{sorted(kinds)}`.")
        kind = next(iter(kinds), None)
        if kind is not None and not isinstance(change[kind], dict):
            raise invalid(f"body.properties.{name}.{kind} should be an object.")
        if new_name != (existing["name"] if existing else None) and new_name in self.properties:
            raise invalid(f"A property named {new_name} already exists.")
        if existing is None:
            if kind is None:
                raise invalid(f"Could not find property with name or id: {name}")
            if kind == "title":
                raise invalid("A data source has exactly one title property.")
            return lambda: self.add_property(new_name, kind)
        if kind is not None and kind != existing["type"]:
            raise invalid(f"this fake does not change property types ({existing['type']} to {kind}).")
        return lambda: self._rename_property(existing["name"], new_name)

    def _find_property(self, name_or_id: str) -> dict[str, Any] | None:
        return self.properties.get(name_or_id) or next((p for p in self.properties.values() if p["id"] == name_or_id), None)

    def _remove_property(self, name: str) -> None:
        del self.properties[name]
        for page in self.pages:
            page.properties.pop(name, None)

    def _rename_property(self, old: str, new: str) -> None:
        if old == new:
            return
        self.properties = {(new if n == old else n): p for n, p in self.properties.items()}
        self.properties[new]["name"] = new
        for page in self.pages:
            page.properties = {(new if n == old else n): v for n, v in page.properties.items()}

    def _require_data_source(self, data_source_id: str) -> None:
        if _norm(data_source_id) != _norm(self.data_source_id):
            raise _not_found("data_source", data_source_id)

    def _query(self, data_source_id: str, request: RecordedRequest) -> dict[str, Any]:
        self._require_data_source(data_source_id)
        body = _json_body(request) if request.body else {}
        unknown = set(body) - QUERY_KEYS
        if unknown:
            raise invalid(f"body.{sorted(unknown)[0]} should be not present.")
        pages = [p for p in self.pages if self._matches(p, body.get("filter"))]
        pages = self._sorted(pages, body.get("sorts"))
        page_size = body.get("page_size", 100)
        if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= 100:
            raise invalid(f"body.page_size should be a number between 1 and 100, instead was `{page_size!r}`.")
        start = _cursor_index([p.id for p in pages], body.get("start_cursor"))
        chunk = pages[start : start + page_size]
        has_more = start + page_size < len(pages)
        return {
            "object": "list",
            "results": [self._page_json(p) for p in chunk],
            "next_cursor": pages[start + page_size].id if has_more else None,
            "has_more": has_more,
            "type": "page_or_data_source",
            "page_or_data_source": {},
        }

    def _matches(self, page: FakePage, query_filter: Any) -> bool:
        if query_filter is None:
            return True
        if not isinstance(query_filter, dict) or "property" not in query_filter:
            raise invalid("body.filter should be a property filter (this fake knows no compound filters).")
        name = query_filter["property"]
        prop = self._find_property(name)
        if prop is None:
            raise invalid(f"Could not find property with name or id: {name}")
        kind = prop["type"]
        condition = query_filter.get(kind)
        if set(query_filter) != {"property", kind} or not isinstance(condition, dict) or len(condition) != 1:
            raise invalid(f"body.filter.{kind} should be defined for a {kind} property.")
        if kind not in ("rich_text", "title"):
            raise invalid(f"this fake filters only text properties, not {kind}.")
        (operator, operand), = condition.items()
        if operator not in RICH_TEXT_FILTERS:
            raise invalid(f"body.filter.{kind}.{operator} should be not present.")
        value = _plain(page.properties[prop["name"]][kind])
        if operator in ("is_empty", "is_not_empty"):
            return (value == "") == (operator == "is_empty")
        if not isinstance(operand, str):
            raise invalid(f"body.filter.{kind}.{operator} should be a string.")
        return {
            "equals": value == operand,
            "does_not_equal": value != operand,
            "contains": operand in value,
            "does_not_contain": operand not in value,
            "starts_with": value.startswith(operand),
            "ends_with": value.endswith(operand),
        }[operator]

    def _sorted(self, pages: list[FakePage], sorts: Any) -> list[FakePage]:
        if sorts is None:
            return list(pages)
        if not isinstance(sorts, list):
            raise invalid("body.sorts should be an array.")
        ordered = list(pages)
        for sort in reversed(sorts):
            if not isinstance(sort, dict) or sort.get("direction") not in ("ascending", "descending"):
                raise invalid("body.sorts[].direction should be `ascending` or `descending`.")
            if sort.get("timestamp") in ("created_time", "last_edited_time") and set(sort) == {"timestamp", "direction"}:
                key = lambda p: self.pages.index(p)  # noqa: E731  creation order is time order here
            elif "property" in sort and sort["property"] in self.properties and set(sort) == {"property", "direction"}:
                name = sort["property"]
                key = lambda p, n=name: json.dumps(p.properties[n])  # noqa: E731
            else:
                raise invalid(f"body.sorts entry {sort!r} should sort by a timestamp or an existing property.")
            ordered.sort(key=key, reverse=sort["direction"] == "descending")
        return ordered

    # --- Pages and blocks -----------------------------------------------------------------------

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"parent", "properties", "children", "icon", "cover"}
        if unknown:
            raise invalid(f"body.{sorted(unknown)[0]} should be not present.")
        parent = body.get("parent")
        if not isinstance(parent, dict):
            raise invalid("body.parent should be defined, instead was `undefined`.")
        if "data_source_id" in parent:
            self._require_data_source(str(parent["data_source_id"]))
        elif "database_id" in parent:
            if _norm(str(parent["database_id"])) != _norm(self.database_id):
                raise _not_found("database", str(parent["database_id"]))
        else:
            raise invalid("body.parent.data_source_id should be defined, instead was `undefined`.")
        properties = body.get("properties", {})
        if not isinstance(properties, dict):
            raise invalid("body.properties should be an object.")
        children = body.get("children", [])
        check_children(children)
        values = {name: self._property_value(name, value) for name, value in properties.items()}
        return self._page_json(self._create_page(values, children))

    def _property_value(self, name: str, value: Any) -> dict[str, Any]:
        prop = self._find_property(name)
        if prop is None:
            raise invalid(f"{name} is not a property that exists.")
        kind = prop["type"]
        if not isinstance(value, dict) or set(value) - {"type", kind} or kind not in value:
            raise invalid(f"body.properties.{name}.{kind} should be defined, instead was `undefined`.")
        inner = value[kind]
        if kind in ("title", "rich_text"):
            check_rich_text(inner, f"body.properties.{name}.{kind}")
        elif kind == "multi_select":
            if not isinstance(inner, list) or len(inner) > MAX_ARRAY:
                raise invalid(f"body.properties.{name}.multi_select should be an array of at most {MAX_ARRAY}.")
            for option in inner:
                option_name = option.get("name") if isinstance(option, dict) else None
                if not isinstance(option_name, str) or not option_name or "," in option_name or len(option_name) > 100:
                    raise invalid(f"body.properties.{name}.multi_select option names are 1-100 characters without commas, instead was `{option_name!r}`.")
                self._add_option(prop, option_name)
        elif kind == "url":
            if inner is not None and (not isinstance(inner, str) or len(inner) > MAX_URL):
                raise invalid(f"body.properties.{name}.url should be a string (at most {MAX_URL}) or `null`.")
        else:
            raise invalid(f"this fake does not set {kind} properties.")
        return {kind: inner}

    def _add_option(self, prop: dict[str, Any], name: str) -> None:
        options = prop["multi_select"]["options"]
        if all(option["name"] != name for option in options):
            options.append({"id": self._new_id()[:8], "name": name, "color": "default"})

    def _create_page(self, values: dict[str, Any], children: list[dict[str, Any]]) -> FakePage:
        page_id = self._new_id()
        created = self.clock.now().strftime("%Y-%m-%dT%H:%M:%S.000Z")
        properties = {}
        for name, prop in self.properties.items():
            kind = prop["type"]
            given = values.get(name, {}).get(kind)
            properties[name] = self._value_json(prop, given)
        title = _plain(properties[self._title_name()]["title"]) if self._title_name() else ""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-")[:50]
        url = f"https://www.notion.so/{slug + '-' if slug else ''}{_norm(page_id)}"
        page = FakePage(page_id, created, properties, url)
        page.children = [self._store_block(block, page_id) for block in children]
        self.pages.append(page)
        return page

    def _value_json(self, prop: dict[str, Any], given: Any) -> dict[str, Any]:
        kind = prop["type"]
        value: Any
        if kind in ("title", "rich_text"):
            value = _rich_response(given or [])
        elif kind == "multi_select":
            options = {o["name"]: o for o in prop["multi_select"]["options"]}
            value = [options[o["name"]] for o in (given or [])]
        else:
            value = given
        return {"id": prop["id"], "type": kind, kind: value}

    def _store_block(self, block: dict[str, Any], parent_id: str) -> dict[str, Any]:
        kind = block.get("type") or next(key for key in block if key in BLOCK_TYPES)
        body = dict(block[kind])
        children = body.pop("children", None) or []
        stored = {"object": "block", "id": self._new_id(), "type": kind, kind: body, "parent_id": parent_id, "children": []}
        self._blocks[_norm(stored["id"])] = stored
        stored["children"] = [self._store_block(child, stored["id"]) for child in children]
        return stored

    def _append(self, block_id: str, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"children", "after", "position"}
        if unknown:
            raise invalid(f"body.{sorted(unknown)[0]} should be not present.")
        if "children" not in body:
            raise invalid("body.children should be defined, instead was `undefined`.")
        check_children(body["children"])
        siblings, parent_id = self._children_of(block_id)
        added = [self._store_block(block, parent_id) for block in body["children"]]
        siblings.extend(added)
        return {
            "object": "list",
            "results": [_block_json(block) for block in added],
            "next_cursor": None,
            "has_more": False,
            "type": "block",
            "block": {},
        }

    def _list_children(self, block_id: str, query: dict[str, str]) -> dict[str, Any]:
        siblings, _ = self._children_of(block_id)
        try:
            page_size = int(query.get("page_size", "100"))
        except ValueError:
            raise invalid("page_size should be a number.") from None
        if not 1 <= page_size <= 100:
            raise invalid(f"page_size should be between 1 and 100, instead was `{page_size}`.")
        start = _cursor_index([b["id"] for b in siblings], query.get("start_cursor"))
        chunk = siblings[start : start + page_size]
        has_more = start + page_size < len(siblings)
        return {
            "object": "list",
            "results": [_block_json(block) for block in chunk],
            "next_cursor": siblings[start + page_size]["id"] if has_more else None,
            "has_more": has_more,
            "type": "block",
            "block": {},
        }

    def _children_of(self, block_id: str) -> tuple[list[dict[str, Any]], str]:
        page = next((p for p in self.pages if _norm(p.id) == _norm(block_id)), None)
        if page is not None:
            return page.children, page.id
        block = self._blocks.get(_norm(block_id))
        if block is None:
            raise _not_found("block", block_id)
        if block["type"] not in PARENT_BLOCKS:
            raise invalid(f"Block type {block['type']} does not support children.")
        return block["children"], block["id"]

    def _page(self, page_id: str) -> FakePage:
        page = next((p for p in self.pages if _norm(p.id) == _norm(page_id)), None)
        if page is None:
            raise _not_found("page", page_id)
        return page

    def _page_json(self, page: FakePage) -> dict[str, Any]:
        return {
            "object": "page",
            "id": page.id,
            "created_time": page.created_time,
            "last_edited_time": page.created_time,
            "created_by": {"object": "user", "id": "00000000-0000-0000-0000-0000000000b0"},
            "last_edited_by": {"object": "user", "id": "00000000-0000-0000-0000-0000000000b0"},
            "cover": None,
            "icon": None,
            "parent": {"type": "data_source_id", "data_source_id": self.data_source_id, "database_id": self.database_id},
            "archived": False,
            "in_trash": False,
            "is_locked": False,
            "properties": page.properties,
            "url": page.url,
            "public_url": None,
        }

    def _title_name(self) -> str:
        return next((name for name, p in self.properties.items() if p["type"] == "title"), "")

    def _new_id(self) -> str:
        return str(uuid.UUID(int=(0x5B0A << 112) + next(self._ids)))


def _property(name: str, kind: str, prop_id: str) -> dict[str, Any]:
    config: dict[str, Any] = {"options": []} if kind in ("multi_select", "select") else {}
    return {"id": prop_id, "name": name, "type": kind, kind: config, "description": None}


def _rich_response(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = []
    for item in items:
        text = item["text"]
        link = text.get("link")
        annotations = {"bold": False, "italic": False, "strikethrough": False, "underline": False, "code": False, "color": "default"}
        annotations.update(item.get("annotations", {}))
        answer.append({
            "type": "text",
            "text": {"content": text["content"], "link": link},
            "annotations": annotations,
            "plain_text": text["content"],
            "href": link["url"] if link else None,
        })
    return answer


def _block_json(block: dict[str, Any]) -> dict[str, Any]:
    kind = block["type"]
    body = dict(block[kind])
    if "rich_text" in body:
        body["rich_text"] = _rich_response(body["rich_text"])
    return {
        "object": "block",
        "id": block["id"],
        "parent": {"type": "block_id", "block_id": block["parent_id"]},
        "type": kind,
        kind: body,
        "has_children": bool(block["children"]),
        "archived": False,
        "in_trash": False,
    }


def _walk_text(blocks: list[dict[str, Any]], lines: list[str]) -> None:
    for block in blocks:
        body = block[block["type"]]
        lines.append("".join(item["text"]["content"] for item in body.get("rich_text", [])))
        _walk_text(block["children"], lines)


def _plain(items: list[dict[str, Any]]) -> str:
    return "".join(item.get("plain_text", item.get("text", {}).get("content", "")) for item in items)


def _norm(object_id: str) -> str:
    return object_id.replace("-", "").lower()


def _cursor_index(ids: list[str], cursor: Any) -> int:
    if cursor is None:
        return 0
    if not isinstance(cursor, str):
        raise invalid("start_cursor should be a string.")
    for index, object_id in enumerate(ids):
        if object_id == cursor:
            return index
    raise invalid(f"start_cursor {cursor!r} is not a cursor this list returned.")


def _json_body(request: RecordedRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body)
    except ValueError:
        raise NotionError(400, "invalid_json", "Error parsing JSON body.") from None
    if not isinstance(body, dict):
        raise NotionError(400, "invalid_json", "The body should be a JSON object.")
    return body


def _not_found(kind: str, object_id: str) -> NotionError:
    return NotionError(
        404,
        "object_not_found",
        f"Could not find {kind} with ID: {object_id}. Make sure the relevant pages and databases are shared with your integration.",
    )


def _refusal(refuse: Refuse) -> NotionError:
    headers = {"retry-after": f"{refuse.retry_after:g}"} if refuse.retry_after is not None else {}
    return NotionError(refuse.status, refuse.code, refuse.message, headers)
