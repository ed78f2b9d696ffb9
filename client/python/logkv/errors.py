"""Typed errors, one per status code of the protocol (docs/protocol.md).

Every error of the client is a LogkvError carrying the wire status code and
the server's message. Transport trouble is UnavailableError (connection
refused, closed, reset) or DeadlineExceededError (no answer in time), the
same codes the C++ client uses.
"""


class LogkvError(Exception):
    """Base class; code is the wire StatusCode, message the server's text."""

    code = 10  # Internal, for errors that are not mapped

    def __init__(self, message="", retry_after_ms=0):
        super().__init__(message)
        self.message = message
        # > 0 when the server asks to wait before retrying (a rate limit).
        self.retry_after_ms = retry_after_ms

    def __str__(self):
        return "%s: %s" % (type(self).__name__, self.message)


class NotFoundError(LogkvError):
    code = 1


class InvalidArgumentError(LogkvError):
    code = 2


class FailedPreconditionError(LogkvError):
    """A compare-and-set whose if_version did not match, or an engine closed."""

    code = 3


class ResourceExhaustedError(LogkvError):
    """A limit: frame, key, value, batch, watches, rate (see retry_after_ms)."""

    code = 4


class UnavailableError(LogkvError, ConnectionError):
    """No node reachable, the connection broke, or the cluster lacks a quorum."""

    code = 5


class DataLossError(LogkvError):
    code = 6


class UnauthenticatedError(LogkvError):
    code = 7


class PermissionDeniedError(LogkvError):
    code = 8


class CompactedError(LogkvError):
    """A watch resume point is gone (compacted away)."""

    code = 9


class InternalError(LogkvError):
    code = 10


class UnimplementedError(LogkvError):
    code = 11


class DeadlineExceededError(LogkvError, TimeoutError):
    code = 12


class AbortedError(LogkvError):
    """A watch dropped by the server because its client fell behind."""

    code = 13


class InsufficientStorageError(LogkvError):
    code = 14


class ProtocolError(UnavailableError):
    """The server's bytes are not the protocol: the connection is dropped."""


_BY_CODE = {cls.code: cls for cls in (
    NotFoundError, InvalidArgumentError, FailedPreconditionError, ResourceExhaustedError,
    UnavailableError, DataLossError, UnauthenticatedError, PermissionDeniedError,
    CompactedError, InternalError, UnimplementedError, DeadlineExceededError, AbortedError,
    InsufficientStorageError)}


def error_for(code, message, retry_after_ms=0):
    """The typed error of a wire status code (unknown codes: InternalError)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return InternalError("status %d: %s" % (code, message), retry_after_ms)
    return cls(message, retry_after_ms)
