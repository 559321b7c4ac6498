"""Notion's API through the official SDK (notion-client, Notion-Version 2025-09-03), as a thin adapter.

It makes exactly one HTTP request per method call (the SDK's own retries are off, so the
resilience layer's retry loop is the only one) and translates every failure into the project's
error types:

- 429 `rate_limited` and 529 `service_overload` with Retry-After: `RateLimited` (529 without one
  is `Unavailable`);
- 5xx, 409 `conflict_error`, timeouts and broken connections: `Unavailable`;
- 401 `unauthorized`: `AuthFailed`;
- 403 `restricted_resource` and 404 `object_not_found`: `BadRequest` saying how to share the
  database with the integration;
- 400 `validation_error` and any other 4xx: `BadRequest` with Notion's own message;
- an answer that is not the documented JSON: `MalformedResponse`.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping, Sequence

import httpx
from notion_client import AsyncClient
from notion_client.errors import HTTPResponseError, NotionClientErrorBase, RequestTimeoutError

from integrations.errors import (
    AuthFailed,
    BadRequest,
    MalformedResponse,
    RateLimited,
    Unavailable,
    UpstreamError,
    Where,
)
from integrations.http_errors import retry_after_seconds, utc_now

logger = logging.getLogger(__name__)

NOTION_VERSION = "2025-09-03"
_MESSAGE_LIMIT = 300
SHARE_HINT = (
    "open the database in Notion, choose ••• → Connections and add the bot's integration, "
    "and check that NOTION_DATABASE_ID is the id from the database's URL"
)


class NotionApi:
    """The calls the notes feature needs; each returns Notion's JSON object as a dict."""

    def __init__(
        self,
        *,
        token: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        name: str = "notion",
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.name = name
        self._now = now
        options: dict[str, Any] = {
            "auth": token,
            "notion_version": NOTION_VERSION,
            "timeout_ms": int(timeout * 1000),
            "retry": False,
            # The SDK logs every failure at WARNING on its own stdout handler; we report them ourselves.
            "logger": logging.getLogger(f"{__name__}.sdk"),
            "log_level": logging.ERROR,
        }
        if base_url:
            options["base_url"] = base_url.rstrip("/")
        self._client = AsyncClient(**options)

    def __repr__(self) -> str:
        return f"NotionApi(name={self.name!r}, base_url={self._client.options.base_url!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def retrieve_database(self, database_id: str) -> dict[str, Any]:
        return await self._call(lambda: self._client.databases.retrieve(database_id=database_id))

    async def retrieve_data_source(self, data_source_id: str) -> dict[str, Any]:
        return await self._call(lambda: self._client.data_sources.retrieve(data_source_id=data_source_id))

    async def update_data_source(self, data_source_id: str, *, properties: Mapping[str, Any]) -> dict[str, Any]:
        """Change the data source's schema (`{"Name": {"rich_text": {}}}` adds a Text property).

        Needs the integration's "Update content" capability; without it Notion answers 403
        `restricted_resource`."""
        return await self._call(
            lambda: self._client.data_sources.update(data_source_id=data_source_id, properties=properties)
        )

    async def query_data_source(
        self,
        data_source_id: str,
        *,
        filter: Mapping[str, Any] | None = None,
        sorts: Sequence[Mapping[str, Any]] | None = None,
        start_cursor: str | None = None,
        page_size: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if filter is not None:
            body["filter"] = filter
        if sorts is not None:
            body["sorts"] = sorts
        if start_cursor is not None:
            body["start_cursor"] = start_cursor
        if page_size is not None:
            body["page_size"] = page_size
        return await self._call(lambda: self._client.data_sources.query(data_source_id=data_source_id, **body))

    async def create_page(
        self, *, data_source_id: str, properties: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        # A data source parent: a database_id parent fails once a database has two data sources.
        parent = {"type": "data_source_id", "data_source_id": data_source_id}
        body: dict[str, Any] = {"parent": parent, "properties": properties}
        if children:
            body["children"] = children
        return await self._call(lambda: self._client.pages.create(**body))

    async def append_children(self, block_id: str, children: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return await self._call(lambda: self._client.blocks.children.append(block_id=block_id, children=children))

    async def list_children(
        self, block_id: str, *, start_cursor: str | None = None, page_size: int | None = None
    ) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if start_cursor is not None:
            query["start_cursor"] = start_cursor
        if page_size is not None:
            query["page_size"] = page_size
        return await self._call(lambda: self._client.blocks.children.list(block_id=block_id, **query))

    async def retrieve_page(self, page_id: str) -> dict[str, Any]:
        return await self._call(lambda: self._client.pages.retrieve(page_id=page_id))

    async def _call(self, request: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        try:
            answer = await request()
        except HTTPResponseError as err:
            raise self._translate(err) from None
        except RequestTimeoutError:
            raise Unavailable("timed out", upstream=self.name) from None
        except NotionClientErrorBase as err:
            raise BadRequest(f"the request was refused before sending ({err})", upstream=self.name) from None
        except httpx.TimeoutException:
            raise Unavailable("timed out", upstream=self.name) from None
        except httpx.TransportError as err:
            raise Unavailable(f"connection failed ({type(err).__name__})", upstream=self.name) from None
        except ValueError as err:
            # json.JSONDecodeError from the SDK's response.json(): not the documented JSON.
            raise MalformedResponse(f"unreadable answer ({type(err).__name__})", upstream=self.name) from None
        if not isinstance(answer, dict) or "object" not in answer:
            raise MalformedResponse("the answer is not a Notion object", upstream=self.name)
        return answer

    def _translate(self, err: HTTPResponseError) -> UpstreamError:
        status = err.status
        code = str(getattr(err.code, "value", err.code))
        request_id = err.request_id
        where: Where = {"upstream": self.name, "status": status, "request_id": request_id}
        message = _short(str(err))
        if status in (429, 529):
            wait = retry_after_seconds(err.headers, self._now())
            if status == 429 or wait is not None:
                return RateLimited(f"rate limited ({code})", **where, retry_after=wait)
            return Unavailable(f"overloaded ({code})", **where)
        if status == 401:
            return AuthFailed("the token was refused (unauthorized); check NOTION_TOKEN", **where)
        if status == 403:
            return BadRequest(f"the integration may not use this database ({message}); {SHARE_HINT}", **where)
        if status == 404:
            return BadRequest(f"Notion cannot find it ({message}); {SHARE_HINT}", **where)
        if status == 409 or status == 408 or status >= 500:
            return Unavailable(f"{code}: {message}" if message else code, **where)
        if 400 <= status < 500:
            return BadRequest(f"{code}: {message}" if message else code, **where)
        return Unavailable(f"unexpected answer ({code})", **where)


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MESSAGE_LIMIT else message[: _MESSAGE_LIMIT - 1] + "…"
