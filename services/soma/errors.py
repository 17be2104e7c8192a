"""Domain errors that carry their gRPC status code.

Service code raises these; the server's interceptor turns them into the status and the
message the client sees. Anything else that escapes a handler becomes INTERNAL with a
reference to the server log, never a stack trace on the wire.
"""

from __future__ import annotations

import grpc


class SomaError(Exception):
    """Base of the errors a client may see; the message must tell the user what to do."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(SomaError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SomaError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SomaError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SomaError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(SomaError):
    """A concurrent change won; the client may retry."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(SomaError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SomaError):
    """A dependency (model service, store) cannot be reached; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(SomaError):
    """Stored data failed an integrity check (e.g. a checksum); it is not used."""

    code = grpc.StatusCode.DATA_LOSS


class DeadlineExceeded(SomaError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(SomaError):
    """No valid credential: a missing, malformed or unknown API key."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SomaError):
    """An authenticated internal caller asked for something only another part may do (an
    adaptation job not signed by the session's own driver)."""

    code = grpc.StatusCode.PERMISSION_DENIED
