"""crm_shared: the contracts and plumbing every service of the customer platform uses."""
