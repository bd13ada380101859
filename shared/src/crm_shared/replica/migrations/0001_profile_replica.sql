-- The latest snapshot of each profile, as read from crm.profiles.v1.
CREATE TABLE profile_replica (
    profile_id  text        PRIMARY KEY,
    version     integer     NOT NULL,
    merged_into text,
    snapshot    jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL
);
