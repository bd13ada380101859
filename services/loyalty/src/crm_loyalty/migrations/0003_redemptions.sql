-- Rewards as redeemed so far (stock comes from the program file and may change with it).
CREATE TABLE rewards (
    reward_id text    PRIMARY KEY,
    stock     integer,
    redeemed  integer NOT NULL DEFAULT 0
);

-- One row per redemption; the idempotency key makes a retried request the same redemption.
CREATE TABLE redemptions (
    redemption_id   text        PRIMARY KEY,
    seq             bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    idempotency_key text        NOT NULL UNIQUE,
    profile_id      text        NOT NULL,
    reward_id       text        NOT NULL,
    cost            bigint      NOT NULL,
    status          text        NOT NULL CHECK (status IN ('redeemed', 'cancelled')),
    redeemed_at     timestamptz NOT NULL,
    cancelled_at    timestamptz,
    answer          text        NOT NULL  -- the first answer's body, given again to a retry
);
CREATE INDEX redemptions_by_account ON redemptions (profile_id, seq);
