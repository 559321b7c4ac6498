"""What every store needs of a database, whichever engine holds it (SQLite or PostgreSQL).

Statements are written once, in SQL both engines accept: `?` or `:name` placeholders, ON CONFLICT
instead of INSERT OR IGNORE/REPLACE, `INSERT ... RETURNING id` to learn a new row's id, timestamps
computed in Python from the injected clock (`timestamp()`), no PRAGMAs, no engine functions such
as datetime() or json_each(). Where the engines truly differ, a store branches on `dialect`.

Rows are read by column name (`row["id"]`) or position (`row[0]`), and unpack like tuples.
`transaction()` gives the calling task the connection until it commits or rolls back; every other
task's statements wait for their turn, so nothing runs inside somebody else's transaction.
`write_all()` runs statements whose results nobody reads as one transaction in one go (on SQLite
without a trip to its thread when the connection is free): the answer the user waits for is
stored that way.
"""
from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Protocol, Sequence

Params = Sequence[Any] | Mapping[str, Any]
Dialect = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class Write:
    """One statement of `Database.write_all`. `missing`: when it changes no row, the whole batch
    is undone and `LookupError(missing)` raised (a write that must find its row)."""

    sql: str
    params: Params = ()
    missing: str | None = None


class Row(Protocol):
    """One result row: by column name or position, and iterable like a tuple."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class Database(Protocol):
    @property
    def dialect(self) -> Dialect: ...

    @property
    def schema_version(self) -> int: ...

    @property
    def where(self) -> str:
        """Where the data lives, for messages (a path, or a URL without its password)."""
        ...

    def timestamp(self) -> str:
        """Now, as stored in the database."""
        ...

    async def execute(self, sql: str, params: Params = ()) -> object:
        """Run one statement. Its result is not portable: use `INSERT ... RETURNING id` with
        `fetchone` to learn a new row's id."""
        ...

    async def execute_rowcount(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns how many rows it inserted, changed or deleted."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Any: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]: ...

    def transaction(self) -> AbstractAsyncContextManager[None]: ...

    async def write_all(self, writes: Sequence[Write]) -> None:
        """All of `writes`, in order, in one transaction (or in the caller's own), or none of them.

        Once begun it runs to its end even if the calling task is cancelled meanwhile: the cancel
        then waits for it, and is raised at the task's next await if the writes were kept (so the
        caller never takes kept writes for lost ones and repeats them)."""
        ...

    async def close(self) -> None: ...
