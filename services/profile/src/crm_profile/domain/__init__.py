"""Profile's pure domain: identity resolution and last-writer-wins state; no I/O."""
