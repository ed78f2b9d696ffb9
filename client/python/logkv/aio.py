"""The asyncio client: pipelined connections, one reader per connection.

Every call registers a future under a fresh request_id and queues its frame;
the frames queued in one turn of the event loop are written together, and
the connection's protocol completes futures as answers arrive (in any
order). A sweeper fails calls past their deadline, so a silent node never
hangs a caller. Many calls in flight at once (asyncio.gather) are pipelined
on one connection; pool_size connections per node share the load.

Backpressure: a connection has at most max_in_flight requests awaiting
answers, and sends nothing new while its transport's write buffer is above
the high-water mark (pause_writing until resume_writing); callers beyond
that wait for room, so a pipeline of any length buffers a bounded amount.
"""
import asyncio
import collections
import itertools
import time

from . import _codec as codec
from . import errors
from ._common import (Failover, Options, PipelineBase, Router, WatchBase, after_transport_failure,
                      deadline_for, encode_all, encoder, finish_all, finish_delete, finish_get,
                      finish_get_version, finish_put, finisher, fresh_events, is_transport, plan,
                      transport_error)
from .types import BatchOp

_SWEEP_SECONDS = 0.1


class _Protocol(asyncio.Protocol):
    def __init__(self, conn):
        self._conn = conn

    def connection_made(self, transport):
        self._conn._transport = transport

    def data_received(self, data):
        self._conn._received(data)

    def connection_lost(self, exc):
        self._conn._lost("the node closed the connection" if exc is None else str(exc))

    def pause_writing(self):
        self._conn._paused = True

    def resume_writing(self):
        self._conn._paused = False
        self._conn._wake()


class _Batch:
    """The answers of many requests sent together, a future of all of them in order."""

    __slots__ = ("answers", "remaining", "future")

    def __init__(self, count, future):
        self.answers = [None] * count
        self.remaining = count
        self.future = future

    def add(self, index, answer):
        self.answers[index] = answer
        self.remaining -= 1
        if not self.remaining and not self.future.done():
            self.future.set_result(self.answers)

    def done(self):
        return self.future.done()

    def set_exception(self, error):
        self.future.set_exception(error)


class AsyncConnection:
    """One connection that said Hello; any number of calls may be in flight on it."""

    def __init__(self, address, options):
        self.address = address
        self._options = options
        self.last_id = 0
        self._frames = codec.FrameBuffer(options.max_frame_bytes)
        # request_id -> (sink, index, deadline): sink a future (index -1) or a _Batch.
        self._pending = {}
        self._paused = False  # the transport's buffer is above its high-water mark
        self._waiters = collections.deque()  # futures of callers waiting for room
        # Counters for tests and monitoring: the most requests awaiting answers
        # at once, and the largest write buffer the transport held.
        self.peak_in_flight = 0
        self.peak_write_buffer = 0
        self._streams = {}  # request_id -> callback(answer) for watches
        self._out = []
        self._transport = None
        self._sweeper = None
        self.closed = False
        self.hello = None

    @classmethod
    async def open(cls, address, options):
        conn = cls(address, options)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: _Protocol(conn), address[0], address[1], ssl=options.ssl,
                server_hostname=address[0] if options.ssl else None), options.connect_timeout)
        except asyncio.TimeoutError:
            raise transport_error("connect to %s:%d timed out" % address, sent=False)
        except OSError as error:
            raise transport_error("connect to %s:%d: %s" % (address + (error.strerror or error,)),
                                  sent=False)
        try:
            answer = await conn.call(lambda rid: codec.hello(rid, options.api_key,
                                                             options.client_name),
                                     options.connect_timeout)
        except errors.DeadlineExceededError as error:
            raise transport_error(error.message, sent=False)
        if answer.status != 0:
            conn.close()
            raise answer.error("hello refused by %s:%d" % address)
        conn.hello = codec.to_hello(answer)
        return conn

    def close(self):
        if not self.closed:
            if self._transport is not None:
                self._transport.close()
            self._lost("the connection was closed")

    # ---- sending ----

    def _has_room(self):
        return not self._paused and len(self._pending) < self._options.max_in_flight

    def _wake(self):
        """Wakes waiters for room: as many as can send (all when closed)."""
        room = (len(self._waiters) if self.closed else
                0 if self._paused else self._options.max_in_flight - len(self._pending))
        waiters = self._waiters
        while waiters and room > 0:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    async def _room(self):
        """Waits until a request may be sent (raises when the connection is lost)."""
        while not self._has_room():
            if self.closed:
                raise transport_error("%s:%d: not connected" % self.address, sent=False)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        if self.closed:
            raise transport_error("%s:%d: not connected" % self.address, sent=False)

    def _send(self, frame):
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)
        in_flight = len(self._pending)
        if in_flight > self.peak_in_flight:
            self.peak_in_flight = in_flight
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_SECONDS, self._sweep)

    def call(self, encode, timeout):
        """An awaitable of the Answer to encode(request_id)."""
        if self.closed:
            raise transport_error("%s:%d: not connected" % self.address, sent=False)
        if not self._has_room():
            return self._call_later(encode, timeout)
        return self._call_now(encode, timeout)

    async def _call_later(self, encode, timeout):
        await self._room()
        return await self._call_now(encode, timeout)

    def _call_now(self, encode, timeout):
        rid = self.last_id = self.last_id + 1
        frame = encode(rid)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, -1, time.monotonic() + timeout)
        self._send(frame)
        return future

    async def call_many(self, calls, timeout):
        """The Answers of calls ((kind, key, arguments) tuples of a pipeline), in order.

        Sent in one write per turn of the event loop, as many at a time as
        max_in_flight and the transport's buffer allow: a long pipeline
        waits for answers to make room instead of buffering all of it.
        """
        future = asyncio.get_running_loop().create_future()
        batch = _Batch(len(calls), future)
        pending = self._pending
        limit = self._options.max_in_flight
        index = 0
        while index < len(calls):
            try:
                await self._room()
            except errors.UnavailableError as error:
                if future.done():
                    future.exception()  # the same loss; raised here
                if index:
                    raise transport_error(error.message, sent=True)
                raise
            deadline = time.monotonic() + timeout
            room = min(limit - len(pending), len(calls) - index)
            ids = range(self.last_id + 1, self.last_id + 1 + room)
            self.last_id += room
            for i, rid in enumerate(ids, index):
                pending[rid] = (batch, i, deadline)
            self._send(b"".join(encode_all(calls[index:index + room], ids)))
            index += room
            # Write now, so the transport's buffer (and pause_writing) see it.
            self._flush()
        return await future

    def stream(self, encode, on_answer):
        """Sends a streaming request (watch); on_answer gets every frame of it."""
        rid = self.last_id = self.last_id + 1
        self._streams[rid] = on_answer
        self._send(encode(rid))
        return rid

    def send_only(self, encode):
        rid = self.last_id = self.last_id + 1
        self._send(encode(rid))

    def _flush(self):
        out, self._out = self._out, []
        if out and not self.closed:
            transport = self._transport
            transport.write(b"".join(out) if len(out) > 1 else out[0])
            size = transport.get_write_buffer_size()
            if size > self.peak_write_buffer:
                self.peak_write_buffer = size

    def _sweep(self):
        self._sweeper = None
        if self.closed or not self._pending:
            return
        now = time.monotonic()
        expired = [rid for rid, (_, _, deadline) in self._pending.items() if deadline <= now]
        if expired:
            # As the C++ client: a node silent this long is given up, and its
            # late answers could not be told from new ones.
            error = errors.DeadlineExceededError(
                "no answer from %s:%d within the request timeout" % self.address)
            for rid in expired:
                sink, _, _ = self._pending.pop(rid)
                if not sink.done():
                    sink.set_exception(error)
            self.close()
            return
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_SECONDS, self._sweep)

    # ---- receiving ----

    def _received(self, data):
        try:
            frames = self._frames.feed(data)
            for frame in frames:
                answer = codec.decode(frame)
                entry = self._pending.pop(answer.request_id, None)
                if entry is not None:
                    sink, index, _ = entry
                    if index >= 0:
                        sink.add(index, answer)
                    elif not sink.done():
                        sink.set_result(answer)
                    continue
                stream = self._streams.get(answer.request_id)
                if stream is not None:
                    if answer.status != 0 or answer.result_type == 0:
                        del self._streams[answer.request_id]
                    stream(answer)
                    continue
                error = codec.stray(answer, self.last_id, self.address)
                if isinstance(error, errors.ProtocolError):
                    raise error
                if error is not None:
                    self._fail_all(error)
                    return
        except errors.ProtocolError as error:
            self._fail_all(transport_error("%s:%d: %s" % (self.address + (error.message,)),
                                           sent=True))
        # Waiters wake at half the window, so they send in batches, not one by one.
        if (self._waiters and not self._paused
                and len(self._pending) <= self._options.max_in_flight // 2):
            self._wake()

    def _fail_all(self, error):
        if self._transport is not None:
            self._transport.close()
        self._lost(None, error)

    def _lost(self, message, error=None):
        first = not self.closed
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if not first and not self._pending and not self._streams:
            return
        if error is None:
            error = transport_error("%s:%d: %s" % (self.address + (message,)), sent=True)
        pending, self._pending = self._pending, {}
        for sink, _, _ in pending.values():
            if not sink.done():
                sink.set_exception(error)
        self._wake()  # waiters see the connection closed
        streams, self._streams = self._streams, {}
        for on_answer in streams.values():
            on_answer(error)


_finish_ping = finisher(codec.to_none, "ping")
_finish_batch = finisher(codec.to_batch, "batch")
_finish_scan = finisher(codec.to_scan, "scan")
_finish_stats = finisher(codec.to_stats, "stats")


class AsyncClient:
    """asyncio logkv client. Keyword arguments: see logkv.Options.

        async with logkv.AsyncClient("127.0.0.1:7070") as kv:
            await kv.put(b"k", b"v")
            values = await asyncio.gather(*(kv.get(k) for k in keys))  # pipelined
    """

    def __init__(self, nodes="127.0.0.1:7070", **kwargs):
        self._options = nodes if isinstance(nodes, Options) else Options(nodes, **kwargs)
        self._router = Router(self._options)
        self._pools = {}  # address -> [AsyncConnection]
        self._opening = {}  # address -> asyncio.Lock
        self._next = itertools.count()
        self._closed = False
        self.hello_info = None

    async def connect(self):
        """Connects to the first reachable node and says Hello (raises on a refused key)."""
        await self._connection(None)
        return self

    async def __aenter__(self):
        return await self.connect()

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        self._closed = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            for conn in pool:
                conn.close()

    # ---- pool ----

    async def _connection(self, address):
        if self._closed:
            raise errors.UnavailableError("the client is closed")
        addresses = [address] if address is not None else self._router.candidates()
        failures = []
        for addr in addresses:
            pool = self._pools.setdefault(addr, [])
            pool[:] = [c for c in pool if not c.closed]
            if len(pool) >= self._options.pool_size:
                return pool[next(self._next) % len(pool)]
            lock = self._opening.setdefault(addr, asyncio.Lock())
            async with lock:
                pool[:] = [c for c in pool if not c.closed]
                if len(pool) >= self._options.pool_size:
                    return pool[next(self._next) % len(pool)]
                try:
                    conn = await AsyncConnection.open(addr, self._options)
                except errors.LogkvError as error:
                    if not is_transport(error):
                        raise
                    failures.append(str(error))
                    if pool:
                        return pool[0]
                    continue
                pool.append(conn)
                self.hello_info = conn.hello
                self._router.update(conn.hello.members, conn.hello.key_prefix)
                return conn
        raise transport_error("no node reachable (%s)" % "; ".join(failures), sent=False)

    def _ready(self, address):
        """An open pooled connection to address when the pool is full (no await)."""
        pool = self._pools.get(address)
        if not pool or len(pool) < self._options.pool_size:
            return None
        conn = pool[0] if len(pool) == 1 else pool[next(self._next) % len(pool)]
        return None if conn.closed else conn

    async def _call(self, what, encode, finish, key=None, read=False, timeout=None):
        """finish(Answer) of the request encode(request_id) makes, sent to the
        key's owners (or the seeds) with failover; finish None: the Answer."""
        timeout = self._options.request_timeout if timeout is None else timeout
        if key is None or not self._router.routing:
            # The common case: one node (or no ring yet), its connections open.
            conn = self._ready(self._options.nodes[self._router.preferred])
            if conn is not None:
                try:
                    answer = await conn.call(encode, timeout)
                    return answer if finish is None else finish(answer)
                except errors.UnavailableError as error:
                    if not is_transport(error):
                        raise
                    if error.sent and not read:
                        # A write that may have reached the node is not sent again.
                        raise errors.UnavailableError("%s: %s" % (what, error.message))
        return await self._call_slow(what, encode, finish, key, read, timeout)

    async def _call_slow(self, what, encode, finish, key, read, timeout):
        failover = Failover(what, self._options, read)
        for address in self._router.candidates(key):
            try:
                conn = await self._connection(address)
                answer = await conn.call(encode, timeout)
            except errors.UnavailableError as error:
                failover.failed(error)
                continue
            if address in self._options.nodes:
                self._router.answered(address)
            return answer if finish is None else finish(answer)
        raise failover.exhausted()

    # ---- operations ----

    async def ping(self, payload=b""):
        await self._call("ping", lambda rid: codec.ping(rid, payload), _finish_ping, read=True)

    async def hello(self):
        return (await self._connection(None)).hello

    async def auth(self, api_key):
        """Uses api_key from now on: connections are replaced by ones that said Hello with
        it (raises UnauthenticatedError when the key is refused)."""
        self._options.api_key = api_key
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            for conn in pool:
                conn.close()
        return await self.hello()

    async def get(self, key, consistency=None, timeout=None):
        """The key's Value, or None when it is absent."""
        key = codec.as_bytes(key)
        return await self._call("get", lambda rid: codec.get(rid, key, consistency),
                                finish_get, key=key, read=True, timeout=timeout)

    async def get_version(self, key, version, timeout=None):
        key = codec.as_bytes(key)
        return await self._call("get_version", lambda rid: codec.get_version(rid, key, version),
                                finish_get_version, key=key, read=True, timeout=timeout)

    async def put(self, key, value, ttl_ms=0, if_version=None, consistency=None, timeout=None):
        key = codec.as_bytes(key)
        return await self._call("put", lambda rid: codec.put(rid, key, value, ttl_ms, if_version,
                                                             consistency),
                                finish_put, key=key, timeout=timeout)

    async def delete(self, key, if_version=None, consistency=None, timeout=None):
        key = codec.as_bytes(key)
        return await self._call("delete", lambda rid: codec.delete(rid, key, if_version,
                                                                   consistency),
                                finish_delete, key=key, timeout=timeout)

    async def batch(self, operations, consistency=None, timeout=None):
        operations = [op if isinstance(op, BatchOp) else BatchOp(*op) for op in operations]
        return await self._call("batch", lambda rid: codec.batch(rid, operations, consistency),
                                _finish_batch, timeout=timeout)

    async def scan_page(self, prefix=b"", start_key=b"", end_key=b"", after_key=b"", limit=0,
                        keys_only=False, timeout=None):
        return await self._call("scan", lambda rid: codec.scan(rid, prefix, start_key, end_key,
                                                               after_key, limit, keys_only),
                                _finish_scan, read=True, timeout=timeout)

    async def scan(self, prefix=b"", start_key=b"", end_key=b"", limit=0, keys_only=False):
        """Async iterator over pages (ScanPage) until the range is exhausted."""
        after = b""
        while True:
            page = await self.scan_page(prefix, start_key, end_key, after, limit, keys_only)
            if page.items or not page.next_cursor:
                yield page
            if not page.next_cursor:
                return
            after = page.next_cursor

    async def stats(self, timeout=None):
        return await self._call("stats", codec.stats, _finish_stats, read=True,
                                timeout=timeout)

    async def _exchange_group(self, address, calls):
        """The Answers (or errors) of calls sent together on one connection to address."""
        try:
            conn = await self._connection(address)
            return await conn.call_many(calls, deadline_for(self._options, len(calls)))
        except errors.UnavailableError as error:
            if not is_transport(error):
                raise
            return [after_transport_failure(call, error) or await self._retry(call)
                    for call in calls]

    async def _retry(self, call):
        """The Answer of one call of a pipeline, with failover (or its error)."""
        try:
            kind, key, _ = call
            return await self._call_slow(kind.what, encoder(call), None, key, kind.read,
                                         self._options.request_timeout)
        except errors.LogkvError as error:
            return error

    def pipeline(self):
        """An AsyncPipeline: queue calls, then `await p.execute()` sends them together."""
        return AsyncPipeline(self)

    def watch(self, prefix=b"", after_sequences=None):
        """An AsyncWatch: `async for event in kv.watch(b"p/")`; resumes after reconnects."""
        return AsyncWatch(self, prefix, after_sequences)


class AsyncPipeline(PipelineBase):
    """Queued calls sent together, their answers awaited together.

    The same as gathering the calls, without a task or future per call.
    Results come in order; a failed call's entry is its exception
    (raise_on_error=False) or the first failure is raised. In a cluster each
    call goes to its key's owner (the nodes' batches in flight at once);
    otherwise all go on one connection. Calls to a node that cannot be
    reached are made one by one with failover, except writes that may have
    reached it (their entry is the UnavailableError). At most max_in_flight
    are in flight per connection: longer pipelines are sent as answers come.
    """

    async def execute(self, raise_on_error=True):
        calls = self._take()
        if not calls:
            return []
        groups = plan(self._client._router, calls)
        got = await asyncio.gather(*(self._client._exchange_group(address,
                                                                  [calls[i] for i in indexes])
                                     for address, indexes in groups))
        answers = [None] * len(calls)
        for (_, indexes), group_answers in zip(groups, got):
            for i, answer in zip(indexes, group_answers):
                answers[i] = answer
        return finish_all(calls, answers, raise_on_error)


class AsyncWatch(WatchBase):
    """Async iterator of Events of keys with a prefix; see logkv.watch.Watch."""

    def __init__(self, client, prefix=b"", after_sequences=None):
        super().__init__(client, prefix, after_sequences)
        self._queue = asyncio.Queue()
        self._started = False

    async def _subscribe(self):
        client = self._client
        options = client._options
        deadline = time.monotonic() + options.watch_reconnect_timeout
        last = None
        while True:
            # Sequences are a node's own: a watch resumes on the node it started on.
            addresses = [self.address] if self.address else client._router.candidates()
            for address in addresses:
                try:
                    # A connection of its own, so a watch never shares the fate of calls.
                    conn = await AsyncConnection.open(address, options)
                    if self.positions is None:
                        self._start_positions(conn, await conn.call(codec.stats,
                                                                    options.request_timeout))
                except errors.UnavailableError as error:
                    if not is_transport(error):
                        raise
                    last = error
                    continue
                first = asyncio.get_running_loop().create_future()

                def on_answer(answer, first=first):
                    if not first.done():
                        first.set_result(answer)
                    else:
                        self._queue.put_nowait(answer)

                self._rid = conn.stream(lambda rid: codec.watch(rid, self.prefix,
                                                                self.positions), on_answer)
                try:
                    answer = await asyncio.wait_for(first, options.request_timeout)
                except asyncio.TimeoutError:
                    conn.close()
                    continue
                if isinstance(answer, Exception):
                    last = answer
                    continue
                self._queue.put_nowait(self._subscribed(conn, address, answer))
                return
            self._check_resume_deadline(deadline, last)
            await asyncio.sleep(0.05)

    def __aiter__(self):
        return self._events()

    async def _events(self):
        if not self._started:
            self._started = True
            await self._subscribe()
        while True:
            answer = await self._queue.get()
            if isinstance(answer, Exception):
                if self._ended is not None:
                    return
                if is_transport(answer):
                    self._conn.close()
                    self.reconnects += 1
                    await self._subscribe()
                    continue
                raise answer
            if answer.status != 0:
                raise answer.error("watch")
            if answer.result_type == 0:
                return  # Ok after Unwatch
            for event in fresh_events(self.positions, codec.to_events(answer)):
                yield event

    async def start(self):
        """Subscribes now (iteration would do it on its first step)."""
        if not self._started:
            self._started = True
            await self._subscribe()
        return self

    async def close(self):
        self._ended = True
        if self._conn is not None and not self._conn.closed:
            self._conn.send_only(lambda rid: codec.unwatch(rid, self._rid))
            await asyncio.sleep(0)
            self._conn.close()
        self._queue.put_nowait(errors.UnavailableError("closed"))
