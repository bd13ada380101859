"""crm_profile: identity resolution and the unified customer profile."""
