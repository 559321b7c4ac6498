-- The instances sharing one database (issue 15: a standby that takes over): each row is one bot
-- process's last word about itself, written by that process, read by /status and
-- `switchboard status`. A row whose `last_seen` stops moving is an instance that died or stopped.
-- SQLite keeps one bot per state directory, so this table stays empty there; it exists so both
-- engines have the same schema.

CREATE TABLE instances (
    name         TEXT    PRIMARY KEY,
    role         TEXT    NOT NULL CHECK (role IN ('standby', 'leader', 'stopped')),
    pid          INTEGER NOT NULL,
    host         TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    last_seen    TEXT    NOT NULL,
    leader_since TEXT
);
