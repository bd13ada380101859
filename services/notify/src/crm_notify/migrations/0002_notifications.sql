-- Every notification a trigger asked for, from request to its last state; the in-app inbox;
-- and the loyalty account holders, who count as members of the loyalty program.
CREATE TABLE notifications (
    notification_id text        PRIMARY KEY,
    dedupe_key      text        NOT NULL,
    profile_id      text        NOT NULL,
    trigger         text        NOT NULL,
    category        text        NOT NULL,
    template        text        NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('waiting', 'sent', 'delivered', 'failed', 'suppressed', 'cancelled')),
    reason          text,
    channel         text,
    address         text,
    language        text,
    context         jsonb       NOT NULL,
    cause_source    text        NOT NULL,
    cause_event_id  text        NOT NULL,
    cause_time      timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    provider_id     text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    sent_at         timestamptz,
    seq             bigint      GENERATED ALWAYS AS IDENTITY UNIQUE
);
-- One live notification per (trigger, profile, occurrence); suppressed and cancelled ones
-- stay as the record of what did not go out, and do not hold the key.
CREATE UNIQUE INDEX notifications_dedupe ON notifications (dedupe_key)
    WHERE status NOT IN ('suppressed', 'cancelled');
CREATE INDEX notifications_profile ON notifications (profile_id, seq);
CREATE INDEX notifications_waiting ON notifications (profile_id, trigger) WHERE status = 'waiting';
CREATE INDEX notifications_sent ON notifications (profile_id, sent_at) WHERE sent_at IS NOT NULL;

CREATE TABLE inbox (
    notification_id text        PRIMARY KEY REFERENCES notifications ON DELETE CASCADE,
    profile_id      text        NOT NULL,
    subject         text        NOT NULL,
    body            text        NOT NULL,
    created_at      timestamptz NOT NULL,
    read_at         timestamptz,
    seq             bigint      GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX inbox_profile ON inbox (profile_id, seq);

CREATE TABLE loyalty_members (
    profile_id text        PRIMARY KEY,
    since      timestamptz NOT NULL
);
