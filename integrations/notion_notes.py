"""The notes database in Notion, through the resilience layer: its schema, and pages in it.

Reading the schema also prepares the database: when it lacks the key property (a Text property
"Switchboard ID"), it is added (PATCH /v1/data_sources/{id}, which needs the integration's
"Update content" capability). If Notion refuses, notes are still saved, without a key: a note
whose answer from Notion was lost may then be saved twice, and the schema says so.

Every request goes through the shared Notion `Upstream` (breaker, retry, the ~3 requests per
second limiter). Creating a page and appending blocks are not idempotent: when the retry loop
repeats one after a failure that may have come after Notion acted (a lost answer, a timeout, a
5xx), the repeat first looks at what is there. A page with the note's key is used instead of
creating another; blocks already appended are not appended again. Such a look is a request of
its own, so it takes a limiter token of its own. A refusal (429, 4xx) is repeated as it is.

A refused token opens the breaker at once, so the calls after it fail fast with `CircuitOpen`;
until some call gets through, those report the refused token again rather than an outage.
"""
from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Awaitable, Callable, Mapping, TypeVar

from notion_client.helpers import async_iterate_paginated_api

from integrations.errors import AuthFailed, BadRequest, CircuitOpen, MalformedResponse, Unavailable, UpstreamError
from integrations.notion import NotionApi
from integrations.notion_schema import KEY_PROPERTY, NoteSchema, data_source_id, schema_from
from integrations.resilience.compose import Upstream
from state.schema_cache import SchemaCache

logger = logging.getLogger(__name__)

T = TypeVar("T")
Call = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]

PAGE_SIZE = 100
NEWEST_FIRST = [{"timestamp": "created_time", "direction": "descending"}]


@dataclass(frozen=True)
class PageRef:
    id: str
    url: str


@dataclass(frozen=True)
class NoteSummary:
    title: str
    url: str
    created_time: str


class NotionNotes:
    def __init__(self, api: NotionApi, upstream: Upstream, database_id: str, cache: SchemaCache) -> None:
        self._api = api
        self._upstream = upstream
        self.database_id = database_id
        self._cache = cache
        # The last call's refused token, while no call has got through since.
        self._refused: AuthFailed | None = None

    async def schema(self, *, refresh: bool = False) -> NoteSchema:
        """The database's schema, from the cache while it is fresh (unless `refresh`), with the key
        property added when it was missing and Notion lets us."""
        schema = None if refresh else await self._cached_schema()
        fetched = schema is None
        if schema is None:
            schema = await read_schema(self._api, self.database_id, self._call)
        if schema.key_addable:
            schema = await with_key_property(self._api, schema, self._call)
        elif not fetched:
            return schema
        await self._cache.put(self.database_id, schema.to_json())
        return schema

    async def forget_schema(self) -> None:
        await self._cache.forget(self.database_id)

    async def _cached_schema(self) -> NoteSchema | None:
        cached = await self._cache.get(self.database_id)
        if cached is None:
            return None
        try:
            return NoteSchema.from_json(cached)
        except (KeyError, TypeError, ValueError):
            logger.warning("ignoring an unreadable cached Notion schema")
            return None

    async def find(self, schema: NoteSchema, key: str) -> PageRef | None:
        """The page holding `key`, if there is one."""
        return await self._call(lambda: self._find(schema, key))

    async def create(
        self,
        schema: NoteSchema,
        key: str,
        properties: Mapping[str, Any],
        children: list[dict[str, Any]],
        *,
        look_first: bool,
    ) -> tuple[PageRef, bool]:
        """The note's page and whether this call created it (False: it was there already).

        With `look_first` (an earlier attempt may have created it), and on a retry after a
        failure that may have happened after Notion acted (a lost answer, a timeout, a 5xx), the
        page is looked up by its key before anything is created. A database without the key
        property cannot be looked in: the page is created again, and may then be there twice.
        """
        unsure = look_first

        async def attempt() -> tuple[PageRef, bool]:
            nonlocal unsure
            if unsure and schema.key_property is None:
                logger.warning("note %s: no key property to find an earlier page by; it may be saved twice", key)
            elif unsure:
                found = await self._find(schema, key)
                if found is not None:
                    logger.info("page for note %s already exists; not creating another", key)
                    return found, False
                await self._another_token()
            # Until Notion says otherwise, a create we sent may have happened: a timeout cancels
            # this attempt from outside, and its retry must look before creating again.
            unsure = True
            try:
                page = await self._api.create_page(
                    data_source_id=schema.data_source_id, properties=properties, children=children
                )
            except UpstreamError as error:
                unsure = _maybe_applied(error)
                raise
            return _page_ref(page), True

        return await self._through(attempt, "pages.create")

    async def append(self, page_id: str, children: list[dict[str, Any]], *, blocks_before: int) -> None:
        """Append `children` to a page that had `blocks_before` top-level blocks before them."""
        unsure = False

        async def attempt() -> None:
            nonlocal unsure
            if unsure:
                present = await self._count_children(page_id, first_token_taken=True)
                if present >= blocks_before + len(children):
                    logger.info("blocks for page %s were appended before; not appending again", page_id)
                    return
                await self._another_token()
            unsure = True  # as in create: a timed-out append may have landed
            try:
                await self._api.append_children(page_id, children)
            except UpstreamError as error:
                unsure = _maybe_applied(error)
                raise

        await self._through(attempt, "blocks.children.append")

    async def count_children(self, page_id: str) -> int:
        """How many top-level blocks the page has."""
        count = 0
        async for _ in self._paginate(lambda **kw: self._api.list_children(page_id, **kw), page_size=PAGE_SIZE):
            count += 1
        return count

    async def recent(self, schema: NoteSchema, limit: int) -> list[NoteSummary]:
        """The newest `limit` pages, newest first, following Notion's pagination."""
        notes: list[NoteSummary] = []
        query = lambda **kw: self._api.query_data_source(schema.data_source_id, sorts=NEWEST_FIRST, **kw)  # noqa: E731
        async with aclosing(self._paginate(query, page_size=min(PAGE_SIZE, limit))) as pages:
            async for page in pages:
                if page.get("object") != "page":
                    continue
                title = schema.page_title(page) or "Untitled"
                notes.append(NoteSummary(title, str(page.get("url", "")), str(page.get("created_time", ""))))
                if len(notes) >= limit:
                    break
        return notes

    async def _find(self, schema: NoteSchema, key: str) -> PageRef | None:
        answer = await self._api.query_data_source(schema.data_source_id, filter=schema.key_filter(key), page_size=1)
        results = answer.get("results")
        if not isinstance(results, list):
            raise MalformedResponse("a query answer has no results list", upstream=self._api.name)
        return _page_ref(results[0]) if results else None

    async def _count_children(self, page_id: str, *, first_token_taken: bool) -> int:
        """Count inside an attempt: every request after the attempt's first takes its own token."""
        count, cursor, first = 0, None, True
        while True:
            if not (first and first_token_taken):
                await self._another_token()
            first = False
            answer = await self._api.list_children(page_id, start_cursor=cursor, page_size=PAGE_SIZE)
            count += len(answer.get("results") or [])
            cursor = answer.get("next_cursor")
            if not answer.get("has_more") or not cursor:
                return count

    async def _paginate(
        self, fetch: Callable[..., Awaitable[dict[str, Any]]], *, page_size: int
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Each page of a list is its own upstream call (a plain read: retrying it is harmless)."""

        async def one_page(**kwargs: Any) -> dict[str, Any]:
            answer = await self._call(lambda: fetch(**kwargs))
            if not isinstance(answer.get("results"), list) or "has_more" not in answer:
                raise MalformedResponse("a list answer lacks results or has_more", upstream=self._api.name)
            return answer

        async for item in async_iterate_paginated_api(one_page, page_size=page_size):
            yield item

    async def _another_token(self) -> None:
        limiter = self._upstream.limiter
        if limiter is not None:
            await limiter.acquire(max_pause=self._upstream.retry.retry_after_cap)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await self._through(fn, "call")

    async def _through(self, fn: Callable[[], Awaitable[T]], operation: str) -> T:
        """One call through the upstream's policies; a breaker opened by a refused token says so."""
        try:
            result = await self._upstream.call(fn, operation)
        except AuthFailed as refused:
            self._refused = refused
            raise
        except CircuitOpen:
            if self._refused is not None:
                raise AuthFailed(
                    self._refused.message, upstream=self._refused.upstream, status=self._refused.status
                ) from None
            raise
        except UpstreamError:
            self._refused = None
            raise
        self._refused = None
        return result


async def _direct(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


async def read_schema(
    api: NotionApi, database_id: str, call: Call = _direct, *, database: Mapping[str, Any] | None = None
) -> NoteSchema:
    """The schema of the database's first data source (`database`: its object, if already retrieved).

    `call` runs each request (through the resilience layer, in the bot)."""
    if database is None:
        database = await call(lambda: api.retrieve_database(database_id))
    source_id = data_source_id(database)
    source = await call(lambda: api.retrieve_data_source(source_id))
    return schema_from(database_id, {**source, "id": source.get("id", source_id)})


async def with_key_property(api: NotionApi, schema: NoteSchema, call: Call = _direct) -> NoteSchema:
    """`schema` after adding the key property to the data source; if Notion refuses, `schema`
    saying why (notes are then saved without a key).

    Adding a property that is already there with the same type changes nothing, so a retry after
    a lost answer is harmless."""
    change: dict[str, Any] = {KEY_PROPERTY: {"rich_text": {}}}
    try:
        source = await call(lambda: api.update_data_source(schema.data_source_id, properties=change))
    except BadRequest as refused:
        reason = (
            'Notion answered 403 restricted_resource: the integration lacks the "Update content" capability'
            if refused.status == 403
            else f"Notion answered: {refused.message}"
        )
        logger.warning("could not add the %r property to the Notion database: %s", KEY_PROPERTY, reason)
        return schema.with_key_refused(reason)
    logger.info("added the Text property %r to the Notion database, to mark each note", KEY_PROPERTY)
    if isinstance(source.get("properties"), dict):
        updated = schema_from(schema.database_id, {**source, "id": schema.data_source_id})
        if updated.key_property is not None:
            return updated
    return NoteSchema(schema.database_id, schema.data_source_id, {**schema.properties, KEY_PROPERTY: "rich_text"})


def _maybe_applied(error: UpstreamError) -> bool:
    """Whether Notion may have acted on a request that failed this way.

    A refusal (rate limited, a 4xx) is answered before anything is done; a lost connection, a
    timeout or a server error may come after the work was done.
    """
    return isinstance(error, (Unavailable, MalformedResponse))


def _page_ref(page: Mapping[str, Any]) -> PageRef:
    page_id, url = page.get("id"), page.get("url")
    if not isinstance(page_id, str) or not isinstance(url, str):
        raise MalformedResponse("a page lacks its id or url", upstream="notion")
    return PageRef(page_id, url)
