"""Per-session state as plain data, kept apart from gRPC and storage so that the dialogue
service, the benchmark and the operator can share it."""
