-- Which instance is delivering a note (issue 15: several instances answering at once). Every
-- instance runs the delivery worker; an entry is worked on only by the instance whose claim it
-- holds, until `claimed_until` (an ISO timestamp), kept alive during the attempt, so two instances
-- never create the same Notion page or tell the same user twice. A claim of a dead instance expires.

ALTER TABLE note_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE note_outbox ADD COLUMN claimed_until TEXT;
