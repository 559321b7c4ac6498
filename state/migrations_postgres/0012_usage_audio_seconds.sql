-- PostgreSQL twin of migrations/0012_usage_audio_seconds.sql: the seconds of audio transcribed
-- on each usage row (speech to text is billed by the minute).

ALTER TABLE usage_daily ADD COLUMN audio_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
