-- Answers from upstreams kept for a while (web searches, Notion schemas), by kind and key.

CREATE TABLE cache_entries (
    -- Insertion order: a refreshed entry is re-inserted, so the smallest id is the oldest entry.
    id          INTEGER PRIMARY KEY,
    kind        TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,  -- JSON
    stored_at   TEXT    NOT NULL,  -- ISO 8601 UTC, for "cached 2 min ago"
    -- Wall-clock seconds since the epoch: entries outlive the process, a monotonic clock does not.
    expires_at  REAL    NOT NULL,
    UNIQUE (kind, key)
);

CREATE INDEX cache_entries_by_expiry ON cache_entries (expires_at);
