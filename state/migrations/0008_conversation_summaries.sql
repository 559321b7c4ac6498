-- A long conversation's older turns, summarised by a model (handlers/compaction.py). The summary
-- stands in for every turn up to and including `covers_through` (a question's id, the turn key
-- COALESCE(in_reply_to, id) of migration 0006) in what models are sent; the turns themselves stay
-- in `messages` for the record. Each new summary folds in the one before, so only a
-- conversation's newest summary is ever read.

CREATE TABLE conversation_summaries (
    id               INTEGER PRIMARY KEY,
    conversation_id  INTEGER NOT NULL REFERENCES conversations (id),
    covers_through   INTEGER NOT NULL,
    content          TEXT    NOT NULL,
    -- provider:model that wrote it
    model            TEXT    NOT NULL,
    created_at       TEXT    NOT NULL
);

CREATE INDEX conversation_summaries_newest ON conversation_summaries (conversation_id, covers_through);
