-- The points ledger replaces the walking skeleton's touchpoint counter.
DROP TABLE accounts;

-- One account per profile that earned; its balance is the sum of its ledger entries.
CREATE TABLE accounts (
    profile_id   text        PRIMARY KEY,
    balance      bigint      NOT NULL,
    tier         text        NOT NULL,
    tier_since   timestamptz NOT NULL,
    once_bonuses text[]      NOT NULL DEFAULT '{}',
    review_at    timestamptz,  -- the next tier review (above the base tier only)
    below_since  timestamptz,  -- the first review that found it below its tier's threshold
    opened_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Append-only: one entry per (source event, rule); points signed.
CREATE TABLE ledger (
    entry_id        text          PRIMARY KEY,
    seq             bigint        GENERATED ALWAYS AS IDENTITY UNIQUE,
    profile_id      text          NOT NULL,
    source_event_id text          NOT NULL,
    rule            text          NOT NULL,
    kind            text          NOT NULL,
    points          bigint        NOT NULL,
    qualifying      numeric(22,4) NOT NULL,
    occurred_at     timestamptz   NOT NULL,
    expires_at      timestamptz,
    order_id        text,
    program_version integer       NOT NULL,
    recorded_at     timestamptz   NOT NULL DEFAULT now(),
    UNIQUE (source_event_id, rule)
);
CREATE INDEX ledger_by_account ON ledger (profile_id, seq);

-- Credits with points left (a row goes when its lot is empty).
CREATE TABLE lots (
    entry_id   text        PRIMARY KEY REFERENCES ledger,
    profile_id text        NOT NULL,
    earned_at  timestamptz NOT NULL,
    expires_at timestamptz,
    remaining  bigint      NOT NULL CHECK (remaining > 0),
    order_id   text,
    warned     boolean     NOT NULL DEFAULT false  -- points_expiring went out for it
);
CREATE INDEX lots_by_account ON lots (profile_id, earned_at);

-- Debits the account's points did not cover (a refund after the points were spent).
CREATE TABLE debts (
    entry_id   text   PRIMARY KEY REFERENCES ledger,
    profile_id text   NOT NULL,
    unpaid     bigint NOT NULL CHECK (unpaid > 0)
);
CREATE INDEX debts_by_account ON debts (profile_id);

-- Which credits paid which debits: a credit's points are its lot plus what it paid out.
CREATE TABLE allocations (
    debit_id  text   NOT NULL REFERENCES ledger,
    credit_id text   NOT NULL REFERENCES ledger,
    points    bigint NOT NULL CHECK (points > 0),
    PRIMARY KEY (debit_id, credit_id)
);
CREATE INDEX allocations_by_credit ON allocations (credit_id);

-- What each order earned and what refunds took back; a refund that comes first waits here.
CREATE TABLE orders (
    order_id             text          PRIMARY KEY,
    profile_id           text          NOT NULL,
    order_event_id       text,
    ordered_at           timestamptz,
    revenue              numeric(22,4),
    earned_points        bigint        NOT NULL,
    earned_qualifying    numeric(22,4) NOT NULL,
    refunded             numeric(22,4) NOT NULL,
    refunded_all         boolean       NOT NULL,
    reversed_points      bigint        NOT NULL,
    reversed_qualifying  numeric(22,4) NOT NULL,
    last_refund_event_id text,
    updated_at           timestamptz   NOT NULL DEFAULT now()
);

-- Qualifying points or spend per account and calendar month: the tier window sums these.
CREATE TABLE qualifying_months (
    profile_id text          NOT NULL,
    month      date          NOT NULL,
    amount     numeric(22,4) NOT NULL,
    PRIMARY KEY (profile_id, month)
);
