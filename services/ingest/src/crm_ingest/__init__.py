"""crm_ingest: the HTTP front door for touchpoints from every channel."""
