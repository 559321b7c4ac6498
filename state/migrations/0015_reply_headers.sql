-- What a user's message replies to (Telegram's reply_to_msg_id, and the part quoted, quote_text),
-- written when it arrives, so that a message taken up after a restart is quoted without asking
-- Telegram again, and only replies are looked up at all. A row only for replies; a row with
-- reply_to NULL: not known (stored before this table; Telegram is asked, as before).
CREATE TABLE reply_headers (
    message_id  INTEGER PRIMARY KEY REFERENCES messages (id),
    reply_to    INTEGER,
    quote       TEXT
);
INSERT INTO reply_headers (message_id)
    SELECT id FROM messages WHERE role = 'user' AND status IN ('pending', 'answering');
