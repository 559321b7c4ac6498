-- PostgreSQL twin of migrations/0017_note_outbox_claims.sql: which instance is delivering a note,
-- until when (an ISO timestamp; the claim expires then unless its holder keeps it alive).

ALTER TABLE note_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE note_outbox ADD COLUMN claimed_until TEXT;
