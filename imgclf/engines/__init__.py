"""Training engines: they share one contract (same data, config, history and bundle)."""
