-- PostgreSQL twin of migrations/0009_conversation_control.sql: /retry replaces an answer, and
-- each chat may choose its system prompt.

ALTER TABLE messages ADD COLUMN replaced_by BIGINT REFERENCES messages (id);

CREATE TABLE chat_prompts (
    chat_id     BIGINT  PRIMARY KEY,
    mode        TEXT,
    prompt      TEXT,
    changed_by  BIGINT  NOT NULL,
    changed_at  TEXT    NOT NULL,
    CHECK ((mode IS NULL) <> (prompt IS NULL))
);
