-- The shared plumbing of every stateful service: idempotent consumption and the outbox.

-- One row per (consumer, event id) whose effects are committed; the dedupe check of the
-- idempotent consumer is an insert into this table in the same transaction as the effects.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events to publish, written in the same transaction as the state that caused them; the relay
-- publishes them in id order and deletes them once the broker acknowledged.
CREATE TABLE outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text        NOT NULL,
    key        bytea,
    value      bytea,
    headers    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
