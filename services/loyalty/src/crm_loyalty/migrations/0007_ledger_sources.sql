-- An entry is named by the source and id of the event that caused it (CloudEvents makes the two
-- unique together): two store systems may both send an event "1001". Its id (the primary key)
-- keeps an event from earning twice by one rule; the id alone no longer has to be unique.
ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_source_event_id_rule_key;
