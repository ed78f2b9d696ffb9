"""The synchronous client: a pool of connections per node, each pipelined.

One call takes an idle connection of the node it goes to (or opens one),
sends its frame and reads until its answer comes (matched by request_id).
A Pipeline sends many frames at once and reads their answers while it is
still sending, so neither side's buffers fill up. A Client may be shared by
threads: each call holds its own connection while it runs.
"""
import selectors
import socket
import ssl
import threading
import time

from . import _codec as codec
from . import errors
from ._common import (Failover, Options, PipelineBase, Router, after_transport_failure,
                      deadline_for, encode_all, encoder, finish_all, finish_delete, finish_get,
                      finish_get_version, finish_put, finisher, is_transport, plan,
                      transport_error)
from .types import BatchOp

_RECV_BYTES = 256 << 10
# "Try again later" from a non-blocking socket, plain or TLS.
_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _recv(sock):
    data = sock.recv(_RECV_BYTES)
    # TLS keeps decrypted bytes of a record that select() does not report.
    while data and isinstance(sock, ssl.SSLSocket) and sock.pending():
        data += sock.recv(sock.pending())
    return data


class Connection:
    """One TCP connection that said Hello. Not thread-safe: the pool lends it to one caller."""

    def __init__(self, address, options, deadline):
        self.address = address
        self._options = options
        self.last_id = 0
        self._frames = codec.FrameBuffer(options.max_frame_bytes)
        self._ready = []  # answers read but not yet asked for (a watch's events)
        self.closed = False
        timeout = max(0.001, deadline - time.monotonic())
        try:
            sock = socket.create_connection(address, timeout=timeout)
        except socket.timeout:
            raise transport_error("connect to %s:%d timed out" % address, sent=False)
        except OSError as error:
            raise transport_error("connect to %s:%d: %s" % (address + (error.strerror or error,)),
                                  sent=False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if options.ssl is not None:
            try:
                sock = options.ssl.wrap_socket(sock, server_hostname=address[0])
            except OSError as error:  # ssl.SSLError included: a refused certificate
                sock.close()
                raise transport_error("TLS with %s:%d: %s" % (address + (error,)), sent=False)
        sock.setblocking(False)
        self.sock = sock
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        try:
            rid = self.next_id()
            answer = self.exchange([codec.hello(rid, options.api_key, options.client_name)],
                                   [rid], deadline)[rid]
        except errors.LogkvError:
            self.close()
            raise
        if answer.status != 0:
            self.close()
            raise answer.error("hello refused by %s:%d" % address)
        self.hello = codec.to_hello(answer)

    def next_id(self):
        self.last_id += 1
        return self.last_id

    def reserve(self, count):
        """count fresh request ids, as a range."""
        first = self.last_id + 1
        self.last_id += count
        return range(first, first + count)

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self._selector.close()
                self.sock.close()
            except OSError:
                pass

    def looks_alive(self):
        """False when the peer has closed (checked without blocking before reuse)."""
        if self.closed:
            return False
        if isinstance(self.sock, ssl.SSLSocket):
            return True  # TLS cannot peek; a dead connection fails its next call
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        # Bytes waiting on an idle connection are a late answer; keep it.
        return bool(data)

    def _fail(self, message, sent):
        self.close()
        return transport_error("%s:%d: %s" % (self.address + (message,)), sent)

    def exchange(self, frames, ids, deadline, on_frame=None):
        """Sends frames and returns {request_id: Answer} for ids.

        Reads while writing, so a long pipeline never deadlocks against the
        server's backpressure. Answers to other ids are passed to on_frame
        (or dropped: a late answer of a call that timed out). Raises a
        transport UnavailableError (the connection is closed), a
        DeadlineExceededError, or the server's connection-level error
        (request id 0).
        """
        out = memoryview(b"".join(frames)) if len(frames) != 1 else memoryview(frames[0])
        sent = 0
        wanted = set(ids)
        answers = {}
        sock = self.sock
        selector = self._selector
        writing = False
        while True:
            if sent < len(out):
                try:
                    sent += sock.send(out[sent:])
                except _AGAIN:
                    pass
                except OSError as error:
                    raise self._fail("send: %s" % (error.strerror or error), sent > 0)
                want_write = sent < len(out)
                if want_write != writing:
                    selector.modify(sock, selectors.EVENT_READ | (
                        selectors.EVENT_WRITE if want_write else 0))
                    writing = want_write
            if not wanted:
                return answers
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise errors.DeadlineExceededError(
                    "no answer from %s:%d within the request timeout" % self.address)
            events = selector.select(remaining)
            for _, mask in events:
                if not mask & selectors.EVENT_READ:
                    continue
                try:
                    data = _recv(sock)
                except _AGAIN:
                    continue
                except OSError as error:
                    raise self._fail("recv: %s" % (error.strerror or error), True)
                if not data:
                    raise self._fail("the node closed the connection", sent > 0)
                try:
                    frames_in = self._frames.feed(data)
                except errors.ProtocolError as error:
                    raise self._fail(error.message, True)
                for frame in frames_in:
                    try:
                        answer = codec.decode(frame)
                    except errors.ProtocolError as error:
                        raise self._fail(error.message, True)
                    if answer.request_id in wanted:
                        wanted.discard(answer.request_id)
                        answers[answer.request_id] = answer
                        continue
                    error = codec.stray(answer, self.last_id, self.address)
                    if error is not None:
                        self.close()
                        if isinstance(error, errors.ProtocolError):
                            error = self._fail(error.message, True)
                        raise error
                    if on_frame is not None:
                        on_frame(answer)


    def read_some(self, timeout, on_frame):
        """Waits up to timeout for bytes and passes each complete answer to on_frame."""
        if not self._selector.select(timeout):
            return
        try:
            data = _recv(self.sock)
        except _AGAIN:
            return
        except OSError as error:
            raise self._fail("recv: %s" % (error.strerror or error), True)
        if not data:
            raise self._fail("the node closed the connection", True)
        try:
            for frame in self._frames.feed(data):
                on_frame(codec.decode(frame))
        except errors.ProtocolError as error:
            raise self._fail(error.message, True)


class Pipeline(PipelineBase):
    """Queues calls and sends them together: client.pipeline() as p; p.put(...); p.execute().

    execute() returns one result per call, in order; a failed call's entry is
    its exception (with raise_on_error=False) or the first failure is raised.
    In a cluster each call goes to its key's owner (one batch of frames per
    node); otherwise all go on one connection. When a node cannot be reached,
    its calls are made one by one with the client's failover, except writes
    that may have reached it (their entry is the UnavailableError).
    """

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._calls = []

    def execute(self, raise_on_error=True):
        calls = self._take()
        if not calls:
            return []
        client = self._client
        answers = [None] * len(calls)
        for address, indexes in plan(client._router, calls):
            group = [calls[i] for i in indexes]
            try:
                got = client._exchange_group(address, group)
            except errors.UnavailableError as error:
                if not is_transport(error):
                    raise
                got = [after_transport_failure(call, error) or client._retry(call)
                       for call in group]
            for i, answer in zip(indexes, got):
                answers[i] = answer
        return finish_all(calls, answers, raise_on_error)


_finish_ping = finisher(codec.to_none, "ping")
_finish_batch = finisher(codec.to_batch, "batch")
_finish_scan = finisher(codec.to_scan, "scan")
_finish_stats = finisher(codec.to_stats, "stats")


class Client:
    """Synchronous logkv client. Keyword arguments: see logkv.Options.

        with logkv.Client("127.0.0.1:7070") as kv:
            kv.put(b"k", b"v")
            print(kv.get(b"k").value)
    """

    def __init__(self, nodes="127.0.0.1:7070", **kwargs):
        self._options = nodes if isinstance(nodes, Options) else Options(nodes, **kwargs)
        self._router = Router(self._options)
        self._lock = threading.Lock()
        self._idle = {}  # address -> [Connection]
        self._closed = False
        self.hello_info = None
        # Connect now, as the C++ client does: a wrong address or key fails here.
        conn = self._acquire(None)
        self._release(conn)

    # ---- pool ----

    def _acquire(self, address):
        """An idle connection to address (None: the first seed that answers), or a new one."""
        if self._closed:
            raise errors.UnavailableError("the client is closed")
        addresses = [address] if address is not None else self._router.candidates()
        failures = []
        for addr in addresses:
            with self._lock:
                idle = self._idle.get(addr)
                while idle:
                    conn = idle.pop()
                    if conn.looks_alive():
                        return conn
                    conn.close()
            deadline = time.monotonic() + self._options.connect_timeout
            try:
                conn = Connection(addr, self._options, deadline)
            except errors.LogkvError as error:
                if not is_transport(error) and not isinstance(error, errors.DeadlineExceededError):
                    raise
                failures.append(str(error))
                continue
            self.hello_info = conn.hello
            self._router.update(conn.hello.members, conn.hello.key_prefix)
            return conn
        raise transport_error("no node reachable (%s)" % "; ".join(failures), sent=False)

    def _release(self, conn):
        if conn.closed:
            return
        with self._lock:
            idle = self._idle.setdefault(conn.address, [])
            if len(idle) < self._options.pool_size and not self._closed:
                idle.append(conn)
                return
        conn.close()

    def close(self):
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- calls ----

    def _exchange_group(self, address, calls):
        """The Answers of calls sent together on one connection to address."""
        conn = self._acquire(address)
        try:
            ids = conn.reserve(len(calls))
            got = conn.exchange(encode_all(calls, ids), ids,
                                time.monotonic() + deadline_for(self._options, len(calls)))
        finally:
            self._release(conn)
        return [got[rid] for rid in ids]

    def _retry(self, call):
        """The Answer of one call of a pipeline, with failover (or its error)."""
        try:
            kind, key, _ = call
            return self._call(kind.what, encoder(call), None, key=key, read=kind.read)
        except errors.LogkvError as error:
            return error

    def _call(self, what, encode, finish, key=None, read=False, timeout=None):
        """finish(Answer) of the request encode(request_id) makes, sent to the
        key's owners (or the seeds) with failover; finish None: the Answer."""
        timeout = self._options.request_timeout if timeout is None else timeout
        failover = Failover(what, self._options, read)
        for address in self._router.candidates(key):
            try:
                conn = self._acquire(address)
            except errors.UnavailableError as error:
                failover.last = error
                continue  # not sent: the next node is safe for any operation
            try:
                rid = conn.next_id()
                answer = conn.exchange([encode(rid)], (rid,), time.monotonic() + timeout)[rid]
            except errors.UnavailableError as error:
                failover.failed(error)
                continue
            finally:
                self._release(conn)
            if address in self._options.nodes:
                self._router.answered(address)
            return answer if finish is None else finish(answer)
        raise failover.exhausted()

    def ping(self, payload=b""):
        self._call("ping", lambda rid: codec.ping(rid, payload), _finish_ping, read=True)

    def hello(self):
        """HelloInfo of a node (version, limits, cluster members)."""
        conn = self._acquire(None)
        self._release(conn)
        return conn.hello

    def auth(self, api_key):
        """Uses api_key from now on: pooled connections are dropped, a new one says Hello
        with it (raises UnauthenticatedError when the key is refused)."""
        self._options.api_key = api_key
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()
        return self.hello()

    def get(self, key, consistency=None, timeout=None):
        """The key's Value, or None when it is absent."""
        key = codec.as_bytes(key)
        return self._call("get", lambda rid: codec.get(rid, key, consistency), finish_get,
                          key=key, read=True, timeout=timeout)

    def get_version(self, key, version, timeout=None):
        """That version's Value if the server keeps it (--versions), else None."""
        key = codec.as_bytes(key)
        return self._call("get_version", lambda rid: codec.get_version(rid, key, version),
                          finish_get_version, key=key, read=True, timeout=timeout)

    def put(self, key, value, ttl_ms=0, if_version=None, consistency=None, timeout=None):
        """Writes; with if_version a compare-and-set (0 = must be absent), which raises
        FailedPreconditionError on mismatch. Returns a WriteResult."""
        key = codec.as_bytes(key)
        return self._call("put", lambda rid: codec.put(rid, key, value, ttl_ms, if_version,
                                                       consistency), finish_put, key=key,
                          timeout=timeout)

    def delete(self, key, if_version=None, consistency=None, timeout=None):
        """Deletes; returns the WriteResult, or None when the key was absent."""
        key = codec.as_bytes(key)
        return self._call("delete", lambda rid: codec.delete(rid, key, if_version, consistency),
                          finish_delete, key=key, timeout=timeout)

    def batch(self, operations, consistency=None, timeout=None):
        """Applies BatchOp items in order (not atomic); one BatchItemResult each."""
        operations = [op if isinstance(op, BatchOp) else BatchOp(*op) for op in operations]
        return self._call("batch", lambda rid: codec.batch(rid, operations, consistency),
                          _finish_batch, timeout=timeout)

    def scan_page(self, prefix=b"", start_key=b"", end_key=b"", after_key=b"", limit=0,
                  keys_only=False, timeout=None):
        """One page of keys in order; page.next_cursor continues it (b"" at the end)."""
        return self._call("scan", lambda rid: codec.scan(rid, prefix, start_key, end_key,
                                                         after_key, limit, keys_only),
                          _finish_scan, read=True, timeout=timeout)

    def scan(self, prefix=b"", start_key=b"", end_key=b"", limit=0, keys_only=False):
        """Iterates over pages (ScanPage) until the range is exhausted."""
        after = b""
        while True:
            page = self.scan_page(prefix, start_key, end_key, after, limit, keys_only)
            if page.items or not page.next_cursor:
                yield page
            if not page.next_cursor:
                return
            after = page.next_cursor

    def stats(self, timeout=None):
        return self._call("stats", codec.stats, _finish_stats, read=True, timeout=timeout)

    def pipeline(self):
        return Pipeline(self)

    def watch(self, prefix=b"", after_sequences=None):
        """A Watch: iterate it for Events; it resumes after a reconnect."""
        from .watch import Watch
        return Watch(self, prefix, after_sequences)
