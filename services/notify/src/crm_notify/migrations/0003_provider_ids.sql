-- Status callbacks name a message by the provider's id.
CREATE INDEX notifications_provider ON notifications (channel, provider_id)
    WHERE provider_id IS NOT NULL;
