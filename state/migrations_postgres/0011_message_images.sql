-- PostgreSQL twin of migrations/0011_message_images.sql: which user message carries a photo or
-- image file, where Telegram keeps it, its album, and the question it was asked with.
CREATE TABLE message_images (
    message_id          BIGINT  PRIMARY KEY REFERENCES messages (id),
    chat_id             BIGINT  NOT NULL,
    telegram_message_id BIGINT  NOT NULL,
    album               BIGINT,
    size                BIGINT,
    question_id         BIGINT  REFERENCES messages (id)
);
CREATE INDEX message_images_by_album ON message_images (chat_id, album);
CREATE INDEX message_images_by_question ON message_images (question_id);
