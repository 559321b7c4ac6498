-- Chat history, one open conversation per chat, and per-user model choices.

CREATE TABLE conversations (
    id          INTEGER PRIMARY KEY,
    chat_id     INTEGER NOT NULL,
    started_at  TEXT    NOT NULL,
    ended_at    TEXT
);

-- /reset ends a conversation; at most one per chat is still open.
CREATE UNIQUE INDEX conversations_open_per_chat ON conversations (chat_id) WHERE ended_at IS NULL;

CREATE TABLE messages (
    id                   INTEGER PRIMARY KEY,
    conversation_id      INTEGER NOT NULL REFERENCES conversations (id),
    chat_id              INTEGER NOT NULL,
    user_id              INTEGER,
    telegram_message_id  INTEGER,
    role                 TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    content              TEXT    NOT NULL,
    status               TEXT    NOT NULL CHECK (status IN ('pending', 'answered', 'failed')),
    model                TEXT,
    -- An assistant message names the user message it answers, so context keeps question and
    -- answer together even when answers were written out of order.
    in_reply_to          INTEGER REFERENCES messages (id),
    created_at           TEXT    NOT NULL,
    CHECK (role = 'assistant' OR user_id IS NOT NULL),
    CHECK (role = 'user' OR in_reply_to IS NOT NULL)
);

-- A redelivered Telegram update must not be stored (and answered) twice.
CREATE UNIQUE INDEX messages_telegram_id ON messages (chat_id, telegram_message_id)
    WHERE role = 'user' AND telegram_message_id IS NOT NULL;
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX messages_pending ON messages (id) WHERE status = 'pending';

CREATE TABLE user_preferences (
    user_id     INTEGER PRIMARY KEY,
    model       TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
