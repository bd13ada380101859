-- An SMS status callback can arrive before the round that sent the message has committed (the
-- provider is fast, the round still sends others): it waits here, and a timer applies it once
-- the message's row shows its provider id.
CREATE TABLE sms_statuses (
    provider_id text        PRIMARY KEY,
    state       text        NOT NULL,
    error_code  text,
    received_at timestamptz NOT NULL
);
