-- PostgreSQL twin of migrations/0013_instances.sql: the instances sharing this database, each
-- row written by its own process (role, last seen), read by /status and `switchboard status`.

CREATE TABLE instances (
    name         TEXT    PRIMARY KEY,
    role         TEXT    NOT NULL CHECK (role IN ('standby', 'leader', 'stopped')),
    pid          BIGINT  NOT NULL,
    host         TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    last_seen    TEXT    NOT NULL,
    leader_since TEXT
);
