-- Notify's walking-skeleton state: the resolved touchpoints that triggers will read.
CREATE TABLE touchpoints_seen (
    source     text        NOT NULL,
    event_id   text        NOT NULL,
    profile_id text        NOT NULL,
    type       text        NOT NULL,
    event_time timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);
CREATE INDEX touchpoints_seen_profile ON touchpoints_seen (profile_id, event_time);
