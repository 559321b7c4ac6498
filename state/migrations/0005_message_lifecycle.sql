-- Every accepted message has one lifecycle, kept in its row:
--   pending -> answering -> delivering -> answered
--                        \-> failed | undeliverable | expired
-- `kind` says what the message was (a chat question, a command, a medium the bot cannot read):
-- only chat questions are part of a conversation's context. `shown_ids` are the bot's messages
-- that showed this message's reply so far, so a reply resumed after a crash replaces them
-- instead of leaving a stale partial reply beside the new one. SQLite cannot change a CHECK
-- constraint in place, hence the copy.

PRAGMA defer_foreign_keys = ON;

CREATE TABLE messages_v5 (
    id                   INTEGER PRIMARY KEY,
    conversation_id      INTEGER NOT NULL REFERENCES conversations (id),
    chat_id              INTEGER NOT NULL,
    user_id              INTEGER,
    telegram_message_id  INTEGER,
    role                 TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    kind                 TEXT    NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'command', 'media')),
    content              TEXT    NOT NULL,
    status               TEXT    NOT NULL CHECK (status IN (
                             'pending', 'answering', 'delivering',
                             'answered', 'failed', 'undeliverable', 'expired')),
    model                TEXT,
    in_reply_to          INTEGER REFERENCES messages (id),
    created_at           TEXT    NOT NULL,
    is_private           INTEGER NOT NULL DEFAULT 1 CHECK (is_private IN (0, 1)),
    -- How many times answering began: a message that stops the bot every time is given up.
    attempts             INTEGER NOT NULL DEFAULT 0,
    -- JSON array of the bot's message ids that show this message's reply.
    shown_ids            TEXT    NOT NULL DEFAULT '[]',
    -- Why it ended as failed, undeliverable or expired (for the operator).
    outcome              TEXT,
    -- The final reply as the user is to see it (with its notes), stored before it is delivered,
    -- so a restart delivers it again without asking the model.
    reply_text           TEXT,
    CHECK (role = 'assistant' OR user_id IS NOT NULL),
    CHECK (role = 'user' OR in_reply_to IS NOT NULL)
);

INSERT INTO messages_v5 (id, conversation_id, chat_id, user_id, telegram_message_id, role, content, status,
                         model, in_reply_to, created_at, is_private)
SELECT id, conversation_id, chat_id, user_id, telegram_message_id, role, content, status,
       model, in_reply_to, created_at, CASE WHEN chat_id > 0 THEN 1 ELSE 0 END
FROM messages;

DROP TABLE messages;
ALTER TABLE messages_v5 RENAME TO messages;

-- A redelivered Telegram update must not be stored (and answered) twice.
CREATE UNIQUE INDEX messages_telegram_id ON messages (chat_id, telegram_message_id)
    WHERE role = 'user' AND telegram_message_id IS NOT NULL;
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX messages_unfinished ON messages (id) WHERE status IN ('pending', 'answering', 'delivering');
CREATE INDEX messages_answer ON messages (in_reply_to) WHERE role = 'assistant';
