"""The gate service: encoder gap, acceptance test, per-turn drift check."""
