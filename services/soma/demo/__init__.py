"""`soma demo`: the embedded stack serving a bundled dialogue through the real gRPC API."""
