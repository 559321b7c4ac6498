-- PostgreSQL twin of migrations/0010_compaction_backoff.sql: compaction's failure backoff per chat,
-- kept across restarts.

CREATE TABLE compaction_backoff (
    chat_id   BIGINT  PRIMARY KEY,
    failures  INTEGER NOT NULL CHECK (failures > 0),
    retry_at  TEXT    NOT NULL
);
