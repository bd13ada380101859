"""Loyalty's pure domain: the points ledger, tiers and segments, with no I/O."""
