"""The surrogate service: inference for the small model G, with per-session adapters."""
