-- Programs the person belongs or belonged to, per program; shaped in domain/membership.py.
ALTER TABLE profiles ADD COLUMN memberships jsonb NOT NULL DEFAULT '{}'::jsonb;
