"""A client interceptor that adds one metadata entry to every call of a channel: the API key of
the Dialogue API (`soma.client`) and the service token of soma's own calls (`traced_channel`)."""

from __future__ import annotations

import grpc


class AddMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, key: str, value: str):
        self._entry = (key, value)

    def _details(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self._entry])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)
