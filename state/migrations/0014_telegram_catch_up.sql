-- Where Telegram's catch-up starts (issue 15, a standby that takes over): the leader's update state
-- (Telethon's pts, qts, date, seq, and each channel's pts with its access hash) as one JSON object,
-- written by the leader every second, read by a standby before it logs in, so that it asks Telegram
-- for what was missed since then instead of starting from now with an empty session. One row.
-- Unused with SQLite (one bot per state directory keeps the state in its own session file).

CREATE TABLE telegram_catch_up (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    state       TEXT    NOT NULL,
    written_by  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
