"""crm_loyalty: points ledger, tiers and value segments."""
