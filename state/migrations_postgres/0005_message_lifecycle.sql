-- PostgreSQL twin of migrations/0005_message_lifecycle.sql: every accepted message has one
-- lifecycle, kept in its row (see that file). PostgreSQL changes the table in place.

ALTER TABLE messages
    ADD COLUMN kind        TEXT    NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'command', 'media')),
    ADD COLUMN is_private  BIGINT  NOT NULL DEFAULT 1 CHECK (is_private IN (0, 1)),
    ADD COLUMN attempts    BIGINT  NOT NULL DEFAULT 0,
    ADD COLUMN shown_ids   TEXT    NOT NULL DEFAULT '[]',
    ADD COLUMN outcome     TEXT,
    ADD COLUMN reply_text  TEXT;

UPDATE messages SET is_private = CASE WHEN chat_id > 0 THEN 1 ELSE 0 END;

ALTER TABLE messages DROP CONSTRAINT messages_status;
ALTER TABLE messages ADD CONSTRAINT messages_status CHECK (status IN (
    'pending', 'answering', 'delivering', 'answered', 'failed', 'undeliverable', 'expired'));

DROP INDEX messages_pending;
CREATE INDEX messages_unfinished ON messages (id) WHERE status IN ('pending', 'answering', 'delivering');
CREATE INDEX messages_answer ON messages (in_reply_to) WHERE role = 'assistant';
