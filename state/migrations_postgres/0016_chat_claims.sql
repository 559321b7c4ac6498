-- PostgreSQL twin of migrations/0016_chat_claims.sql: which instance answers which chat, until
-- when (an ISO timestamp; the claim expires then unless its holder keeps it alive).

CREATE TABLE chat_claims (
    chat_id  BIGINT PRIMARY KEY,
    instance TEXT   NOT NULL,
    until    TEXT   NOT NULL
);

CREATE INDEX chat_claims_by_instance ON chat_claims (instance);
