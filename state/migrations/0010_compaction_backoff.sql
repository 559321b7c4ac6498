-- Compaction's failure backoff (handlers/compaction.py), kept so that a restart does not send a
-- failing summariser a burst of requests: a chat whose summaries failed `failures` times in a row
-- tries again no earlier than `retry_at` (UTC, ISO 8601). A summary that succeeds removes the row.

CREATE TABLE compaction_backoff (
    chat_id   INTEGER PRIMARY KEY,
    failures  INTEGER NOT NULL CHECK (failures > 0),
    retry_at  TEXT    NOT NULL
);
