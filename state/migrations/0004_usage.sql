-- Usage and cost per user, model and UTC day; admin settings that outlive restarts; recent upstream errors.

CREATE TABLE usage_daily (
    day            TEXT    NOT NULL,  -- YYYY-MM-DD in UTC: budgets reset at 00:00 UTC
    user_id        INTEGER NOT NULL,
    model          TEXT    NOT NULL,  -- provider:model
    requests       INTEGER NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    cost_usd       REAL    NOT NULL DEFAULT 0,
    -- Requests to a model with no known price: their cost is counted as 0, and /usage says so.
    unpriced       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, user_id, model)
);
CREATE INDEX usage_daily_by_user ON usage_daily (user_id, day);

-- /allow and /deny: runtime grants and revocations on top of ALLOWED_USER_IDS.
CREATE TABLE user_access (
    user_id     INTEGER PRIMARY KEY,
    access      TEXT    NOT NULL CHECK (access IN ('allowed', 'denied')),
    changed_by  INTEGER NOT NULL,
    changed_at  TEXT    NOT NULL
);

-- /budget: a per-user daily budget replacing USER_DAILY_BUDGET_USD; NULL means no limit.
CREATE TABLE user_budgets (
    user_id     INTEGER PRIMARY KEY,
    daily_usd   REAL    CHECK (daily_usd IS NULL OR daily_usd >= 0),
    changed_by  INTEGER NOT NULL,
    changed_at  TEXT    NOT NULL
);

-- The last upstream errors (already redacted), so `switchboard status` can show them with the bot down.
CREATE TABLE recent_errors (
    id        INTEGER PRIMARY KEY,
    at        TEXT    NOT NULL,
    source    TEXT    NOT NULL,
    message   TEXT    NOT NULL
);
