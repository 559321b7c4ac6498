-- Speech to text is billed by the minute of audio, not by the token: each usage row keeps the
-- seconds of audio transcribed (on `stt:<model>` rows; 0 on a chat model's), so /usage shows
-- minutes of audio and their cost instead of "0 tokens". Rows written before this migration
-- keep 0 seconds: their cost is right, their minutes unknown.

ALTER TABLE usage_daily ADD COLUMN audio_seconds REAL NOT NULL DEFAULT 0;
