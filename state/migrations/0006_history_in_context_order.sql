-- A conversation's context lists each answer right after its question:
-- ORDER BY COALESCE(in_reply_to, id), id (see HistoryStore.context_for). An index on exactly that
-- order, within a conversation, lets SQLite read the rows in order instead of sorting them all in
-- a temporary B-tree each time a reply starts. The expression must stay spelled as in the query.

CREATE INDEX messages_in_context_order ON messages (conversation_id, COALESCE(in_reply_to, id), id);
