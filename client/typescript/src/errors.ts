// Typed errors, one per status code of the protocol (docs/protocol.md).
// Transport trouble is UnavailableError (refused, closed, reset, bad bytes)
// or DeadlineExceededError (no answer in time), as in the C++ client.

export class LogkvError extends Error {
  /** The wire StatusCode. */
  readonly code: number;
  /** > 0 when the server asks to wait this long before retrying (a rate limit). */
  readonly retryAfterMs: number;
  constructor(code: number, message: string, retryAfterMs = 0) {
    super(message);
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.name = new.target.name;
  }
}

export class NotFoundError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(1, message, retryAfterMs); }
}
export class InvalidArgumentError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(2, message, retryAfterMs); }
}
/** A compare-and-set whose ifVersion did not match, or an engine closed. */
export class FailedPreconditionError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(3, message, retryAfterMs); }
}
/** A limit: frame, key, value, batch, watches, rate (see retryAfterMs). */
export class ResourceExhaustedError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(4, message, retryAfterMs); }
}
/** No node reachable, the connection broke, or the cluster lacks a quorum. */
export class UnavailableError extends LogkvError {
  /** Set when the client itself saw the failure (not the server's answer). */
  transport = false;
  /** With transport: whether the request may have reached the server. */
  sent = false;
  constructor(message: string, retryAfterMs = 0) { super(5, message, retryAfterMs); }
}
export class DataLossError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(6, message, retryAfterMs); }
}
export class UnauthenticatedError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(7, message, retryAfterMs); }
}
export class PermissionDeniedError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(8, message, retryAfterMs); }
}
/** A watch resume point is gone. */
export class CompactedError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(9, message, retryAfterMs); }
}
export class InternalError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(10, message, retryAfterMs); }
}
export class UnimplementedError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(11, message, retryAfterMs); }
}
export class DeadlineExceededError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(12, message, retryAfterMs); }
}
/** A watch dropped by the server because its client fell behind. */
export class AbortedError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(13, message, retryAfterMs); }
}
export class InsufficientStorageError extends LogkvError {
  constructor(message: string, retryAfterMs = 0) { super(14, message, retryAfterMs); }
}
/** The server's bytes are not the protocol; the connection is dropped. */
export class ProtocolError extends UnavailableError {}

const byCode: Record<number, new (message: string, retryAfterMs?: number) => LogkvError> = {
  1: NotFoundError, 2: InvalidArgumentError, 3: FailedPreconditionError,
  4: ResourceExhaustedError, 5: UnavailableError, 6: DataLossError, 7: UnauthenticatedError,
  8: PermissionDeniedError, 9: CompactedError, 10: InternalError, 11: UnimplementedError,
  12: DeadlineExceededError, 13: AbortedError, 14: InsufficientStorageError,
};

/** The typed error of a wire status code (unknown codes: InternalError). */
export function errorFor(code: number, message: string, retryAfterMs = 0): LogkvError {
  const type = byCode[code];
  if (type === undefined) return new InternalError(`status ${code}: ${message}`, retryAfterMs);
  return new type(message, retryAfterMs);
}

export function transportError(message: string, sent: boolean): UnavailableError {
  const error = new UnavailableError(message);
  error.transport = true;
  error.sent = sent;
  return error;
}

export function isTransport(error: unknown): error is UnavailableError {
  return error instanceof UnavailableError && error.transport;
}
