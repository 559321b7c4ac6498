-- Which instance answers which chat (issue 15: several instances answering at once). A chat's
-- messages are answered by the instance holding its claim, in order; the claim is kept alive while
-- the chat has work there and expires at `until` (an ISO timestamp) when its holder dies.
-- SQLite keeps one bot per state directory, so this table stays empty there; it exists so both
-- engines have the same schema.

CREATE TABLE chat_claims (
    chat_id  INTEGER PRIMARY KEY,
    instance TEXT    NOT NULL,
    until    TEXT    NOT NULL
);

CREATE INDEX chat_claims_by_instance ON chat_claims (instance);
