-- PostgreSQL twin of migrations/0014_telegram_catch_up.sql: the leader's Telegram update state (one
-- JSON row), so that a standby taking over catches up from where the leader was.

CREATE TABLE telegram_catch_up (
    id          BIGINT  PRIMARY KEY CHECK (id = 1),
    state       TEXT    NOT NULL,
    written_by  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
