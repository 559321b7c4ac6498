-- Photos and image files: which user message carries one, where Telegram keeps it (the message
-- is fetched again by chat and id, also after a restart), the album it belongs to, and the
-- question it was asked with (an album's photos are one question, the message `question_id`).
CREATE TABLE message_images (
    message_id          INTEGER PRIMARY KEY REFERENCES messages (id),
    chat_id             INTEGER NOT NULL,
    telegram_message_id INTEGER NOT NULL,
    album               INTEGER,
    size                INTEGER,
    question_id         INTEGER REFERENCES messages (id)
);
CREATE INDEX message_images_by_album ON message_images (chat_id, album);
CREATE INDEX message_images_by_question ON message_images (question_id);
