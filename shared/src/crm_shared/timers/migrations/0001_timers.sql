-- Durable timers: one row per (kind, key), due at a moment. Instances pick due rows with
-- FOR UPDATE SKIP LOCKED, so two never run the same timer.
CREATE TABLE timers (
    kind   text        NOT NULL,
    key    text        NOT NULL,
    due_at timestamptz NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX timers_due ON timers (due_at);
