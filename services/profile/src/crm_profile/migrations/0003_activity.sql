-- What the touchpoints add up to (first and last seen, channels, orders, revenue, last contact
-- each way) and the health of each contact address; both jsonb, shaped in domain/activity.py.
ALTER TABLE profiles
    ADD COLUMN activity jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN contacts jsonb NOT NULL DEFAULT '{}'::jsonb;
