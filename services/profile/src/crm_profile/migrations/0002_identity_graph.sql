-- The identity graph's history: every merge and every link a rule refused.

-- A merged-away profile points at its survivor (always a live one: chains are shortened on
-- every merge), so an old id can still be redirected.
CREATE INDEX profiles_merged_into ON profiles (merged_into) WHERE merged_into IS NOT NULL;

CREATE TABLE merges (
    merge_id     bigserial   PRIMARY KEY,
    survivor     text        NOT NULL REFERENCES profiles (profile_id),
    merged       text        NOT NULL REFERENCES profiles (profile_id),
    -- The identifier kind whose owner was the merged profile: what the event linked them by.
    linked_by    text        NOT NULL,
    event_source text        NOT NULL,
    event_id     text        NOT NULL,
    merged_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merges_survivor ON merges (survivor);
CREATE INDEX merges_merged ON merges (merged);

-- A link an event asked for and a rule refused (unique:<kind>, limit:<kind>).
CREATE TABLE identity_conflicts (
    conflict_id   bigserial   PRIMARY KEY,
    profile_id    text        NOT NULL REFERENCES profiles (profile_id),
    other_profile text        REFERENCES profiles (profile_id),
    kind          text        NOT NULL,
    value         text        NOT NULL,
    rule          text        NOT NULL,
    event_source  text        NOT NULL,
    event_id      text        NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX identity_conflicts_profile ON identity_conflicts (profile_id);
CREATE INDEX identity_conflicts_other ON identity_conflicts (other_profile);
