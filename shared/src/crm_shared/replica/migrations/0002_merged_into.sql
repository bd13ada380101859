-- The profiles merged into one: notify lists a profile's notifications with theirs, and
-- cancels their waiting ones with its own. Few profiles are merged away, so only those rows.
CREATE INDEX profile_replica_merged_into ON profile_replica (merged_into)
    WHERE merged_into IS NOT NULL;
