-- Notify's walking-skeleton state: the resolved touchpoints that triggers will read.
CREATE TABLE touchpoints_seen (
    event_id   text        PRIMARY KEY,
    profile_id text        NOT NULL,
    type       text        NOT NULL,
    event_time timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX touchpoints_seen_profile ON touchpoints_seen (profile_id, event_time);
