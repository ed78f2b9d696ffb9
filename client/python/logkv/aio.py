"""The asyncio client: pipelined connections, one reader per connection.

Every call registers a future under a fresh request_id and queues its frame;
the frames queued in one turn of the event loop are written together, and
the connection's protocol completes futures as answers arrive (in any
order). A sweeper fails calls past their deadline, so a silent node never
hangs a caller. Many calls in flight at once (asyncio.gather) are pipelined
on one connection; pool_size connections per node share the load.
"""
import asyncio
import itertools
import time

from . import _codec as codec
from . import errors
from ._common import Options, Router, is_transport, transport_error
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


class AsyncConnection:
    """One connection that said Hello; any number of calls may be in flight on it."""

    def __init__(self, address, options):
        self.address = address
        self._options = options
        self._ids = itertools.count(1)
        self.last_id = 0
        self._frames = codec.FrameBuffer(options.max_frame_bytes)
        self._pending = {}  # request_id -> (future, deadline)
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

    def call(self, encode, timeout):
        """A future of the Answer to encode(request_id)."""
        if self.closed:
            raise transport_error("%s:%d: not connected" % self.address, sent=False)
        rid = self.last_id = next(self._ids)
        frame = encode(rid)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending[rid] = (future, time.monotonic() + timeout)
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(frame)
        if self._sweeper is None:
            self._sweeper = loop.call_later(_SWEEP_SECONDS, self._sweep)
        return future

    def stream(self, encode, on_answer):
        """Sends a streaming request (watch); on_answer gets every frame of it."""
        rid = self.last_id = next(self._ids)
        self._streams[rid] = on_answer
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(encode(rid))
        return rid

    def send_only(self, encode):
        rid = self.last_id = next(self._ids)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(encode(rid))

    def _flush(self):
        out, self._out = self._out, []
        if out and not self.closed:
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _sweep(self):
        self._sweeper = None
        if self.closed or not self._pending:
            return
        now = time.monotonic()
        expired = [rid for rid, (_, deadline) in self._pending.items() if deadline <= now]
        if expired:
            # As the C++ client: a node silent this long is given up, and its
            # late answers could not be told from new ones.
            for rid in expired:
                future, _ = self._pending.pop(rid)
                if not future.done():
                    future.set_exception(errors.DeadlineExceededError(
                        "no answer from %s:%d within the request timeout" % self.address))
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
                    if not entry[0].done():
                        entry[0].set_result(answer)
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
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(error)
        streams, self._streams = self._streams, {}
        for on_answer in streams.values():
            on_answer(error)


def _value_or_none(answer):
    return codec.to_value(answer)


def _write_or_none(answer):
    return codec.to_write(answer, "delete")


def _convert(answer, convert, what):
    if answer.status == 1 and convert in (_value_or_none, _write_or_none):
        return None
    if answer.status != 0:
        raise answer.error(what)
    return convert(answer)


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
                self._router.update(conn.hello.members)
                return conn
        raise transport_error("no node reachable (%s)" % "; ".join(failures), sent=False)

    def _ready(self, address):
        """An open pooled connection to address when the pool is full (no await)."""
        pool = self._pools.get(address)
        if not pool or len(pool) < self._options.pool_size:
            return None
        conn = pool[0] if len(pool) == 1 else pool[next(self._next) % len(pool)]
        return None if conn.closed else conn

    async def _call(self, what, encode, convert, key=None, read=False, timeout=None):
        timeout = self._options.request_timeout if timeout is None else timeout
        if key is None or not self._router.routing:
            # The common case: one node (or no ring yet), its connections open.
            conn = self._ready(self._options.nodes[self._router.preferred])
            if conn is not None:
                try:
                    return _convert(await conn.call(encode, timeout), convert, what)
                except errors.UnavailableError as error:
                    if not is_transport(error):
                        raise
                    if error.sent and not read:
                        # A write that may have reached the node is not sent again.
                        raise errors.UnavailableError("%s: %s" % (what, error.message))
        return await self._call_slow(what, encode, convert, key, read, timeout)

    async def _call_slow(self, what, encode, convert, key, read, timeout):
        attempts_left = 1 + (self._options.read_retries if read else 0)
        last = None
        for address in self._router.candidates(key):
            try:
                conn = await self._connection(address)
                answer = await conn.call(encode, timeout)
            except errors.UnavailableError as error:
                if not is_transport(error):
                    raise
                last = error
                if error.sent:
                    attempts_left -= 1
                    if attempts_left <= 0:
                        raise errors.UnavailableError("%s: %s" % (what, error.message))
                continue
            if address in self._options.nodes:
                self._router.answered(address)
            return _convert(answer, convert, what)
        raise errors.UnavailableError("%s: %s" % (what, last.message if last else "no node"))

    # ---- operations ----

    async def ping(self, payload=b""):
        await self._call("ping", lambda rid: codec.ping(rid, payload), codec.to_none, read=True)

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
                                _value_or_none, key=key, read=True, timeout=timeout)

    async def get_version(self, key, version, timeout=None):
        key = codec.as_bytes(key)
        return await self._call("get_version", lambda rid: codec.get_version(rid, key, version),
                                _value_or_none, key=key, read=True, timeout=timeout)

    async def put(self, key, value, ttl_ms=0, if_version=None, consistency=None, timeout=None):
        key = codec.as_bytes(key)
        return await self._call("put", lambda rid: codec.put(rid, key, value, ttl_ms, if_version,
                                                             consistency),
                                codec.to_write, key=key, timeout=timeout)

    async def delete(self, key, if_version=None, consistency=None, timeout=None):
        key = codec.as_bytes(key)
        return await self._call("delete", lambda rid: codec.delete(rid, key, if_version,
                                                                   consistency),
                                _write_or_none, key=key, timeout=timeout)

    async def batch(self, operations, consistency=None, timeout=None):
        operations = [op if isinstance(op, BatchOp) else BatchOp(*op) for op in operations]
        return await self._call("batch", lambda rid: codec.batch(rid, operations, consistency),
                                codec.to_batch, timeout=timeout)

    async def scan_page(self, prefix=b"", start_key=b"", end_key=b"", after_key=b"", limit=0,
                        keys_only=False, timeout=None):
        return await self._call("scan", lambda rid: codec.scan(rid, prefix, start_key, end_key,
                                                               after_key, limit, keys_only),
                                codec.to_scan, read=True, timeout=timeout)

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
        return await self._call("stats", codec.stats, codec.to_stats, read=True,
                                timeout=timeout)

    def pipeline(self):
        """An AsyncPipeline: queue calls, then `await p.execute()` sends them together."""
        return AsyncPipeline(self)

    def watch(self, prefix=b"", after_sequences=None):
        """An AsyncWatch: `async for event in kv.watch(b"p/")`; resumes after reconnects."""
        return AsyncWatch(self, prefix, after_sequences)


class AsyncPipeline:
    """Queued calls sent in one write on one connection, their answers awaited together.

    The same as gathering the calls, without a task per call. Results come in
    order; a failed call's entry is its exception (raise_on_error=False) or
    the first failure is raised. No per-key routing, as for the sync Pipeline.
    """

    def __init__(self, client):
        self._client = client
        self._calls = []

    def __len__(self):
        return len(self._calls)

    def get(self, key, consistency=None):
        key = codec.as_bytes(key)
        self._calls.append((lambda rid: codec.get(rid, key, consistency), _value_or_none, "get"))
        return self

    def put(self, key, value, ttl_ms=0, if_version=None, consistency=None):
        key = codec.as_bytes(key)
        self._calls.append((lambda rid: codec.put(rid, key, value, ttl_ms, if_version,
                                                  consistency), codec.to_write, "put"))
        return self

    def delete(self, key, if_version=None, consistency=None):
        key = codec.as_bytes(key)
        self._calls.append((lambda rid: codec.delete(rid, key, if_version, consistency),
                            _write_or_none, "delete"))
        return self

    async def execute(self, raise_on_error=True):
        calls, self._calls = self._calls, []
        if not calls:
            return []
        client = self._client
        conn = await client._connection(client._router.candidates()[0])
        timeout = client._options.request_timeout * max(1, len(calls) / 1000)
        futures = [conn.call(encode, timeout) for encode, _, _ in calls]
        answers = await asyncio.gather(*futures, return_exceptions=True)
        results = []
        for (_, convert, what), answer in zip(calls, answers):
            try:
                if isinstance(answer, BaseException):
                    raise answer
                results.append(_convert(answer, convert, what))
            except errors.LogkvError as error:
                if raise_on_error:
                    raise
                results.append(error)
        return results


class AsyncWatch:
    """Async iterator of Events of keys with a prefix; see logkv.watch.Watch."""

    def __init__(self, client, prefix=b"", after_sequences=None):
        self._client = client
        self.prefix = codec.as_bytes(prefix)
        self.positions = list(after_sequences) if after_sequences else None
        self.reconnects = 0
        self.address = None  # the node the watch follows
        self._queue = asyncio.Queue()
        self._conn = None
        self._rid = 0
        self._ended = None
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
                        answer = await conn.call(codec.stats, options.request_timeout)
                        if answer.status != 0:
                            conn.close()
                            raise answer.error("watch")
                        self.positions = codec.to_stats(answer).last_sequences
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
                if answer.status != 0:
                    conn.close()
                    raise answer.error("watch")
                self._conn = conn
                self.address = address
                self._queue.put_nowait(answer)
                return
            if time.monotonic() >= deadline:
                raise errors.UnavailableError("watch: cannot resume: %s" % (
                    last.message if last else "no node"))
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
            for event in codec.to_events(answer):
                if event.shard < len(self.positions):
                    if event.sequence <= self.positions[event.shard]:
                        continue
                    self.positions[event.shard] = event.sequence
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
