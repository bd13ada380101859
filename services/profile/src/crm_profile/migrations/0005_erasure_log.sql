-- What erasure forgot, without keeping it: a SHA-256 of each erased identifier ("kind:value")
-- and when, so a rebuild from the touchpoint topic can skip what was recorded before that.
CREATE TABLE erased_identifiers (
    identifier_hash text        PRIMARY KEY,
    erased_at       timestamptz NOT NULL
);
