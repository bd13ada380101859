-- Every batch rewrites the rows of the profiles it touched. Room left on each page lets
-- PostgreSQL put the new row version beside the old one (a HOT update) and skip the index
-- writes; it applies to pages written from now on.
ALTER TABLE profiles SET (fillfactor = 70);
