-- PostgreSQL twin of migrations/0007_budgets_per_period.sql: a user's own daily and monthly
-- budgets; the daily overrides of 0004 carry over.

CREATE TABLE user_budgets_by_period (
    user_id     BIGINT  NOT NULL,
    period      TEXT    NOT NULL CHECK (period IN ('day', 'month')),
    usd         DOUBLE PRECISION CHECK (usd IS NULL OR usd >= 0),
    changed_by  BIGINT  NOT NULL,
    changed_at  TEXT    NOT NULL,
    PRIMARY KEY (user_id, period)
);

INSERT INTO user_budgets_by_period (user_id, period, usd, changed_by, changed_at)
    SELECT user_id, 'day', daily_usd, changed_by, changed_at FROM user_budgets;

DROP TABLE user_budgets;
ALTER TABLE user_budgets_by_period RENAME TO user_budgets;
ALTER TABLE user_budgets RENAME CONSTRAINT user_budgets_by_period_pkey TO user_budgets_pkey;
