-- Notes on their way to Notion (a durable outbox), and the Notion database's schema, cached.

-- Every note is stored here before any call to Notion, so a note survives Notion being down and
-- the bot restarting. `idempotency_key` is also written into the page, which is how a retry finds
-- the page an earlier attempt created when Notion's answer to it was lost.
CREATE TABLE note_outbox (
    id               INTEGER PRIMARY KEY,
    idempotency_key  TEXT    NOT NULL UNIQUE,
    chat_id          INTEGER NOT NULL,
    user_id          INTEGER NOT NULL,
    message_id       INTEGER,            -- the command's message, so a later notice can answer it
    payload          TEXT    NOT NULL,   -- JSON: title, body, tags, source_url
    status           TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT    NOT NULL,
    last_error       TEXT,
    page_id          TEXT,
    page_url         TEXT,
    -- Top-level blocks already on the page: a resumed delivery appends only the rest.
    blocks_done      INTEGER NOT NULL DEFAULT 0,
    -- Whether the user has been told how it ended (the link, or why it failed).
    user_told        INTEGER NOT NULL DEFAULT 0 CHECK (user_told IN (0, 1)),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL
);
CREATE INDEX note_outbox_due ON note_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX note_outbox_untold ON note_outbox (id) WHERE status <> 'pending' AND user_told = 0;

CREATE TABLE notion_schema_cache (
    database_id  TEXT PRIMARY KEY,
    schema       TEXT NOT NULL,   -- JSON: data source id and property name -> type
    fetched_at   TEXT NOT NULL
);
