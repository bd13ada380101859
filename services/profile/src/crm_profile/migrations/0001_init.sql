-- Profile's own state: profiles, the identifiers that point at them, and their touchpoints.

CREATE TABLE profiles (
    profile_id    text        PRIMARY KEY,
    version       integer     NOT NULL,
    traits        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    consents      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    merged_into   text        REFERENCES profiles (profile_id),
    last_event_id text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every identifier belongs to exactly one profile.
CREATE TABLE identifiers (
    kind       text        NOT NULL,
    value      text        NOT NULL,
    profile_id text        NOT NULL REFERENCES profiles (profile_id),
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value)
);
CREATE INDEX identifiers_profile ON identifiers (profile_id);

-- A touchpoint is identified by its CloudEvents source and id together.
CREATE TABLE touchpoints (
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    profile_id  text        NOT NULL REFERENCES profiles (profile_id),
    type        text        NOT NULL,
    channel     text        NOT NULL,
    event_time  timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    event       jsonb       NOT NULL,
    PRIMARY KEY (source, event_id)
);
CREATE INDEX touchpoints_profile_time ON touchpoints (profile_id, event_time);
