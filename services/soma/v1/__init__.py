"""Protobuf and gRPC stubs generated from protos/soma/v1 by `make proto`; do not edit."""
