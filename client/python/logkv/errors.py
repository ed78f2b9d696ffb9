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


def _status(name, code, doc=None, bases=()):
    """The error class of one wire status code."""
    return type(name, (LogkvError,) + bases, {
        "code": code, "__doc__": doc, "__module__": __name__, "__qualname__": name})


# One class per StatusCode of protocol/logkv.fbs (0 = Ok has none).
NotFoundError = _status("NotFoundError", 1)
InvalidArgumentError = _status("InvalidArgumentError", 2)
FailedPreconditionError = _status(
    "FailedPreconditionError", 3, "A compare-and-set whose if_version did not match, or an "
    "engine closed.")
ResourceExhaustedError = _status(
    "ResourceExhaustedError", 4, "A limit: frame, key, value, batch, watches, rate (see "
    "retry_after_ms).")
UnavailableError = _status(
    "UnavailableError", 5, "No node reachable, the connection broke, or the cluster lacks a "
    "quorum.", (ConnectionError,))
DataLossError = _status("DataLossError", 6)
UnauthenticatedError = _status("UnauthenticatedError", 7)
PermissionDeniedError = _status("PermissionDeniedError", 8)
CompactedError = _status("CompactedError", 9, "A watch resume point is gone (compacted away).")
InternalError = _status("InternalError", 10)
UnimplementedError = _status("UnimplementedError", 11)
DeadlineExceededError = _status("DeadlineExceededError", 12, None, (TimeoutError,))
AbortedError = _status(
    "AbortedError", 13, "A watch dropped by the server because its client fell behind.")
InsufficientStorageError = _status("InsufficientStorageError", 14)


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
