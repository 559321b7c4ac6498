"""A small SQLite cache of upstream answers, by kind (one of `KINDS`) and key.

Entries expire after the time-to-live their caller chose; an expired entry is a miss and is
removed when it is read (and swept when something is stored). The table holds at most
`max_entries` rows: storing beyond that evicts the oldest entries. Hits and misses are counted
in memory since start, per kind, for `/status`. Values are JSON text; what may be cached (never
errors or partial answers) is the caller's decision.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from integrations.clock import Clock
from state.database import Database
from state.db import iso_timestamp

logger = logging.getLogger(__name__)

# Every kind a feature stores, for /cache to name and check: "search" is the web search's
# answers (handlers.search.CACHE_KIND). Add a feature's kind here when it starts caching.
KINDS = ("search",)

# How many entries there are: asked on its own, as SQLite answers a bare COUNT(*) of a table from
# the b-tree pages without decoding rows (~10 us at 100k entries); inside another statement it
# scans an index row by row (~0.4 ms at 100k, which was most of every put's time).
_COUNT = "SELECT COUNT(*) AS entries FROM cache_entries"
# Deletes the `excess` oldest entries: those below the id of the (excess + 1)-th oldest, found by
# walking the primary key from its small end, so a put touches only the rows it evicts (usually one)
# instead of the `bound` newest ones.
_EVICT_OLDEST = (
    "DELETE FROM cache_entries WHERE id < (SELECT id FROM cache_entries ORDER BY id LIMIT 1 OFFSET :excess)"
)


@dataclass(frozen=True)
class CacheHit:
    value: str  # JSON, as stored
    stored_at: str  # ISO 8601 UTC
    age_seconds: float


@dataclass(frozen=True)
class KindStats:
    entries: int = 0
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float | None:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


@dataclass(frozen=True)
class CacheStats:
    entries: int
    hits: int
    misses: int
    by_kind: dict[str, KindStats] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float | None:
        """Hits per lookup since start; None before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


class SqliteCache:
    def __init__(self, db: Database, clock: Clock, *, max_entries: int = 2000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._db = db
        self._clock = clock
        self._max_entries = max_entries
        self._hits: Counter[str] = Counter()
        self._misses: Counter[str] = Counter()

    async def get(self, kind: str, key: str) -> CacheHit | None:
        now = self._epoch()
        row = await self._db.fetchone(
            "SELECT id, value, stored_at, expires_at FROM cache_entries WHERE kind = ? AND key = ?",
            (kind, key),
        )
        if row is None:
            self._misses[kind] += 1
            return None
        if row["expires_at"] <= now:
            # Delete this very row only: a concurrent put may have replaced it with a fresh one.
            await self._db.execute("DELETE FROM cache_entries WHERE id = ?", (row["id"],))
            self._misses[kind] += 1
            return None
        self._hits[kind] += 1
        return CacheHit(row["value"], row["stored_at"], self._age(row["stored_at"]))

    async def put(self, kind: str, key: str, value: str, ttl: float) -> None:
        """Store `value` for `ttl` seconds, replacing any entry under the same key."""
        if ttl <= 0:
            return
        moment = self._clock.now()
        expires_at = moment.timestamp() + ttl
        async with self._db.transaction():
            await self._db.execute("DELETE FROM cache_entries WHERE expires_at <= ?", (moment.timestamp(),))
            # The entry under the same key is deleted and a new row inserted (not an upsert, which
            # would keep the old id), so a refreshed entry counts as the newest.
            await self._db.execute("DELETE FROM cache_entries WHERE kind = ? AND key = ?", (kind, key))
            await self._db.execute(
                "INSERT INTO cache_entries (kind, key, value, stored_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (kind, key, value, iso_timestamp(moment), expires_at),
            )
            count = await self._db.fetchone(_COUNT)
            excess = int(count["entries"]) - self._max_entries
            evicted = await self._db.execute_rowcount(_EVICT_OLDEST, {"excess": excess}) if excess > 0 else 0
        if evicted:
            logger.debug("cache full: evicted %d oldest entries", evicted)

    async def clear(self, kind: str | None = None) -> int:
        """Remove every entry (of `kind`, if given); returns how many were removed."""
        if kind is None:
            return await self._db.execute_rowcount("DELETE FROM cache_entries")
        return await self._db.execute_rowcount("DELETE FROM cache_entries WHERE kind = ?", (kind,))

    async def stats(self) -> CacheStats:
        """Live entries per kind, and hits and misses since start."""
        rows = await self._db.fetchall(
            "SELECT kind, COUNT(*) AS entries FROM cache_entries WHERE expires_at > ? GROUP BY kind",
            (self._epoch(),),
        )
        entries = {row["kind"]: int(row["entries"]) for row in rows}
        kinds = sorted(set(entries) | set(self._hits) | set(self._misses))
        by_kind = {kind: KindStats(entries.get(kind, 0), self._hits[kind], self._misses[kind]) for kind in kinds}
        return CacheStats(
            entries=sum(entries.values()),
            hits=sum(self._hits.values()),
            misses=sum(self._misses.values()),
            by_kind=by_kind,
        )

    def _epoch(self) -> float:
        return self._clock.now().timestamp()

    def _age(self, stored_at: str) -> float:
        return max(0.0, (self._clock.now() - datetime.fromisoformat(stored_at)).total_seconds())
