-- The profiles erased: a late event about one of them (consumer lag) opens nothing and keeps
-- nothing. touchpoints_seen (the walking skeleton's record of touchpoints) was never read and
-- kept personal data past erasure: gone.
CREATE TABLE erased_profiles (
    profile_id text        PRIMARY KEY,
    erased_at  timestamptz NOT NULL
);
DROP TABLE touchpoints_seen;
