-- Profiles merged into others: a late touchpoint of a merged profile goes to the survivor.
-- Chains are kept flat: when a survivor is merged in turn, its rows point to the new one.
CREATE TABLE account_merges (
    merged_profile_id text        PRIMARY KEY,
    survivor          text        NOT NULL,
    merged_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_merges_by_survivor ON account_merges (survivor);
