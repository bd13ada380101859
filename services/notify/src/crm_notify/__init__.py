"""crm_notify: triggers, consent, delivery."""
