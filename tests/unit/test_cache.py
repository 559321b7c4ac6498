"""The SQLite cache: hits, misses, expiry on the injected clock, eviction of the oldest, stats."""
import json

import pytest

from integrations.clock import ManualClock
from state.cache import SqliteCache


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def db(state_backend, clock):
    database = await state_backend.open(clock)
    yield database
    await database.close()


@pytest.fixture
def cache(db, clock) -> SqliteCache:
    return SqliteCache(db, clock, max_entries=3)


async def test_stored_value_is_a_hit_with_its_age(cache, clock):
    await cache.put("search", "rust async", json.dumps({"text": "Tokio."}), ttl=300)
    await clock.advance(90)
    hit = await cache.get("search", "rust async")
    assert hit is not None
    assert json.loads(hit.value) == {"text": "Tokio."}
    assert hit.age_seconds == pytest.approx(90)
    assert hit.stored_at.startswith("2026-11-26T12:00:00")


async def test_unknown_key_and_other_kind_are_misses(cache):
    await cache.put("search", "rust async", "{}", ttl=300)
    assert await cache.get("search", "python async") is None
    assert await cache.get("notion_schema", "rust async") is None


async def test_entry_expires_after_its_ttl_and_is_removed(cache, clock, db):
    await cache.put("search", "q", "{}", ttl=300)
    await clock.advance(299)
    assert await cache.get("search", "q") is not None
    await clock.advance(1)
    assert await cache.get("search", "q") is None
    row = await db.fetchone("SELECT COUNT(*) FROM cache_entries")
    assert row[0] == 0


async def test_ttl_is_chosen_per_put(cache, clock):
    await cache.put("search", "short", "{}", ttl=10)
    await cache.put("notion_schema", "long", "{}", ttl=3600)
    await clock.advance(60)
    assert await cache.get("search", "short") is None
    assert await cache.get("notion_schema", "long") is not None


async def test_zero_ttl_stores_nothing(cache):
    await cache.put("search", "q", "{}", ttl=0)
    assert await cache.get("search", "q") is None


async def test_storing_beyond_the_bound_evicts_the_oldest(cache, clock):
    for key in ("a", "b", "c"):
        await cache.put("search", key, json.dumps(key), ttl=300)
        await clock.advance(1)
    await cache.put("search", "d", '"d"', ttl=300)
    assert await cache.get("search", "a") is None
    assert [await cache.get("search", k) is not None for k in ("b", "c", "d")] == [True, True, True]
    assert (await cache.stats()).entries == 3


async def test_eviction_keeps_exactly_the_newest_entries_across_gaps_in_ids(db, clock):
    cache = SqliteCache(db, clock, max_entries=5)
    for round_ in range(4):
        for key in "abcdefgh":
            await cache.put("search", key, json.dumps([round_, key]), ttl=300)
        await cache.put("search", "short", "1", ttl=1)  # expires, and is swept by a later put
        await clock.advance(2)
    await cache.put("search", "last", '"last"', ttl=300)
    rows = await db.fetchall("SELECT key FROM cache_entries ORDER BY id")
    assert [row["key"] for row in rows] == ["e", "f", "g", "h", "last"]


async def test_a_cache_over_its_bound_is_trimmed_at_the_next_put(db, clock):
    """E.g. the bound was lowered between runs: the next put evicts all the oldest surplus."""
    roomy = SqliteCache(db, clock, max_entries=100)
    for n in range(10):
        await roomy.put("search", f"k{n}", "1", ttl=300)
    await SqliteCache(db, clock, max_entries=3).put("search", "new", "1", ttl=300)
    rows = await db.fetchall("SELECT key FROM cache_entries ORDER BY id")
    assert [row["key"] for row in rows] == ["k8", "k9", "new"]


async def test_a_cache_below_its_bound_evicts_nothing(db, clock):
    cache = SqliteCache(db, clock, max_entries=10)
    for n in range(10):
        await cache.put("search", f"k{n}", "1", ttl=300)
    assert (await cache.stats()).entries == 10


async def test_refreshing_an_entry_makes_it_the_newest(cache):
    for key in ("a", "b", "c"):
        await cache.put("search", key, "1", ttl=300)
    await cache.put("search", "a", "2", ttl=300)
    await cache.put("search", "d", "1", ttl=300)
    assert await cache.get("search", "b") is None
    hit = await cache.get("search", "a")
    assert hit is not None and hit.value == "2"


async def test_expired_entries_make_room_before_live_ones_are_evicted(cache, clock):
    await cache.put("search", "old", "1", ttl=10)
    await cache.put("search", "keep1", "1", ttl=300)
    await cache.put("search", "keep2", "1", ttl=300)
    await clock.advance(20)
    await cache.put("search", "new", "1", ttl=300)
    assert all([await cache.get("search", k) is not None for k in ("keep1", "keep2", "new")])


async def test_stats_count_hits_misses_and_entries_by_kind(cache):
    await cache.put("search", "q", "{}", ttl=300)
    await cache.put("notion_schema", "db", "{}", ttl=300)
    await cache.get("search", "q")
    await cache.get("search", "q")
    await cache.get("search", "nope")
    await cache.get("notion_schema", "other")
    stats = await cache.stats()
    assert (stats.entries, stats.hits, stats.misses) == (2, 2, 2)
    assert stats.hit_rate == pytest.approx(0.5)
    assert stats.by_kind["search"].entries == 1
    assert stats.by_kind["search"].hit_rate == pytest.approx(2 / 3)
    assert stats.by_kind["notion_schema"].hits == 0


async def test_stats_hit_rate_is_unknown_before_any_lookup(cache):
    assert (await cache.stats()).hit_rate is None


async def test_clear_removes_one_kind_or_everything(cache):
    await cache.put("search", "a", "{}", ttl=300)
    await cache.put("search", "b", "{}", ttl=300)
    await cache.put("notion_schema", "db", "{}", ttl=300)
    assert await cache.clear("search") == 2
    assert await cache.get("notion_schema", "db") is not None
    assert await cache.clear() == 1
    assert (await cache.stats()).entries == 0


async def test_entries_survive_reopening_the_database(state_backend, clock):
    first = await state_backend.open(clock)
    await SqliteCache(first, clock).put("search", "q", '"kept"', ttl=300)
    await first.close()
    second = await state_backend.open(clock)
    try:
        hit = await SqliteCache(second, clock).get("search", "q")
        assert hit is not None and hit.value == '"kept"'
    finally:
        await second.close()
