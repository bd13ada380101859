-- Loyalty's walking-skeleton state: one account per profile, counting resolved touchpoints.
-- The points ledger, tiers and rewards replace the counter in their own migrations.
CREATE TABLE accounts (
    profile_id      text        PRIMARY KEY,
    touchpoints     integer     NOT NULL,
    last_event_id   text        NOT NULL,
    last_event_time timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
