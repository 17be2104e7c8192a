"""The teacher service: inference for the large model F."""
