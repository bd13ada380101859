-- An erased profile keeps its row (its id stays known, merges keep their audit) and nothing
-- else: personal data, identifiers, touchpoints and conflicts are deleted.
ALTER TABLE profiles ADD COLUMN erased_at timestamptz;
