-- The profiles erased, and those merged into them before: a late touchpoint about one of them
-- (this consumer lagging behind the tombstone) opens no account and earns nothing.
CREATE TABLE erased_profiles (
    profile_id text        PRIMARY KEY,
    erased_at  timestamptz NOT NULL DEFAULT now()
);
