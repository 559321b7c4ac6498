-- /budget per period: a user's own daily and monthly budgets, each replacing its default
-- (USER_DAILY_BUDGET_USD, USER_MONTHLY_BUDGET_USD). A period without a row follows the default;
-- a row with usd NULL means no limit for that period. The daily overrides of 0004 carry over.
-- (A month's spending is read through usage_daily_by_user (user_id, day): no new index needed.)

CREATE TABLE user_budgets_by_period (
    user_id     INTEGER NOT NULL,
    period      TEXT    NOT NULL CHECK (period IN ('day', 'month')),
    usd         REAL    CHECK (usd IS NULL OR usd >= 0),
    changed_by  INTEGER NOT NULL,
    changed_at  TEXT    NOT NULL,
    PRIMARY KEY (user_id, period)
);

INSERT INTO user_budgets_by_period (user_id, period, usd, changed_by, changed_at)
    SELECT user_id, 'day', daily_usd, changed_by, changed_at FROM user_budgets;

DROP TABLE user_budgets;
ALTER TABLE user_budgets_by_period RENAME TO user_budgets;
