-- Conversation control: /retry replaces an answer, and each chat may choose its system prompt.

-- The /retry message whose answer replaced this one. A replaced answer stays (what the user saw is
-- on record) but leaves the conversation's context, so the models never see both.
ALTER TABLE messages ADD COLUMN replaced_by INTEGER REFERENCES messages (id);

-- /mode and /prompt: a chat's preset mode (by name, so it follows the operator's edits) or its own
-- prompt, never both; no row means the operator's LLM_SYSTEM_PROMPT.
CREATE TABLE chat_prompts (
    chat_id     INTEGER PRIMARY KEY,
    mode        TEXT,
    prompt      TEXT,
    changed_by  INTEGER NOT NULL,
    changed_at  TEXT    NOT NULL,
    CHECK ((mode IS NULL) <> (prompt IS NULL))
);
