-- PostgreSQL twin of migrations/0015_reply_headers.sql: what a user's message replies to (a row
-- only for replies; reply_to NULL: not known, stored before this table).
CREATE TABLE reply_headers (
    message_id  BIGINT  PRIMARY KEY REFERENCES messages (id),
    reply_to    BIGINT,
    quote       TEXT
);
INSERT INTO reply_headers (message_id)
    SELECT id FROM messages WHERE role = 'user' AND status IN ('pending', 'answering');
