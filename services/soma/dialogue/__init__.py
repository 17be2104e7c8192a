"""The dialogue service: the public API, the per-turn routing decision and the transcript."""
