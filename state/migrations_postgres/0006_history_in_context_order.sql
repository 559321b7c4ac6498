-- PostgreSQL twin of migrations/0006_history_in_context_order.sql: a conversation's context in
-- the order HistoryStore.context_for reads it.

CREATE INDEX messages_in_context_order ON messages (conversation_id, COALESCE(in_reply_to, id), id);
