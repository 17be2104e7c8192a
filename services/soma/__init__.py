"""soma: serve multi-turn LLM dialogues by handing each session from a teacher model to a
small surrogate adapted to that session on the fly (the SOMA method, arXiv 2605.11317)."""

__version__ = "0.1.0"
