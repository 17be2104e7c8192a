"""The SOMA method as pure functions over tensors and numbers: no I/O, no gRPC."""
