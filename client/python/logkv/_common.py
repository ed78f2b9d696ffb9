"""Options, node addresses and routing shared by the sync and asyncio clients."""
import threading
import time

from . import _codec as codec
from . import errors
from .placement import Ring


class Options:
    """Client settings (keyword arguments of Client and AsyncClient).

    nodes: "host:port" strings, tried in order to connect and on failover.
    api_key: sent in Hello (servers with --auth=on); None without auth.
    connect_timeout, request_timeout: seconds; a call without an answer
        within request_timeout raises DeadlineExceededError and the
        connection is dropped (its later answers could not be matched).
    pool_size: connections kept per node (sync: one per concurrent thread;
        asyncio: requests are spread over them, each pipelined).
    route_to_owners: in a cluster, send each key's get/put/delete/get_version
        to its owners (placement.Ring), trying them in preference order.
    max_in_flight: asyncio, requests awaiting their answer on one connection
        at most; more wait for room (and writes wait while the transport's
        buffer is above its high-water mark), so a pipeline of any length
        buffers a bounded amount.
    read_retries: extra attempts of a read on the next node after a
        transport failure (writes are retried only when they were not sent,
        as a sent write may have been applied).
    ssl: an ssl.SSLContext to wrap connections in, for a logkvd serving TLS
        (--tls-cert/--tls-key; docs/tls.md) or a TLS-terminating proxy. The
        server's name is checked against the address's host.
    """

    def __init__(self, nodes=("127.0.0.1:7070",), api_key=None, client_name="logkv-python",
                 connect_timeout=2.0, request_timeout=10.0, pool_size=2, route_to_owners=True,
                 read_retries=1, ssl=None, max_frame_bytes=64 << 20,
                 watch_reconnect_timeout=10.0, max_in_flight=4096):
        if isinstance(nodes, str):
            nodes = [n for n in nodes.split(",") if n]
        if not nodes:
            raise ValueError("nodes: give at least one \"host:port\"")
        self.nodes = [parse_node(n) for n in nodes]
        self.api_key = api_key
        self.client_name = client_name
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.pool_size = max(1, pool_size)
        self.route_to_owners = route_to_owners
        self.read_retries = read_retries
        self.ssl = ssl
        self.max_frame_bytes = max_frame_bytes
        self.watch_reconnect_timeout = watch_reconnect_timeout
        self.max_in_flight = max(1, max_in_flight)


def parse_node(node):
    """("host", port) of "host:port" or "[v6]:port"."""
    if isinstance(node, tuple):
        return node
    host, sep, port = node.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("node %r is not host:port" % (node,))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Router:
    """Which nodes to try for a key: its owners first, then the seed nodes.

    The ring is rebuilt from every Hello that lists members (a cluster); a
    single node lists none, and then every call goes to the seeds in order.
    """

    def __init__(self, options):
        self._options = options
        self._lock = threading.Lock()
        self._ring = None
        self._address_of = {}
        self._members_key = None
        self._key_prefix = b""
        self.preferred = 0  # index into nodes of the last seed that answered

    def update(self, members, key_prefix=b""):
        # The servers place the engine key: the tenant's prefix, then the key.
        self._key_prefix = key_prefix
        if not self._options.route_to_owners or len(members) < 2:
            return
        key = tuple(sorted(members))
        with self._lock:
            if key == self._members_key:
                return
        ring = Ring([m.node_id for m in members])
        with self._lock:
            self._ring = ring
            self._address_of = {m.node_id: parse_node(m.address) for m in members if m.address}
            self._members_key = key

    def _placed(self, key):
        """The key as the servers place it (placement::PlacementKey)."""
        if not self._key_prefix:
            return key
        if isinstance(key, str):
            key = key.encode()
        return self._key_prefix + bytes(key)

    @property
    def routing(self):
        return self._ring is not None

    def candidates(self, key=None):
        nodes = self._options.nodes
        seeds = nodes[self.preferred:] + nodes[:self.preferred]
        with self._lock:
            ring, address_of = self._ring, self._address_of
        if key is None or ring is None:
            return list(seeds)
        owners = [address_of[o]
                  for o in ring.preference_list(self._placed(key), len(ring.members))
                  if o in address_of]
        return owners + [s for s in seeds if s not in owners]

    def owner(self, key):
        """The address of key's first owner (routing), else the preferred seed."""
        with self._lock:
            ring, address_of = self._ring, self._address_of
        if ring is not None:
            for node in ring.preference_list(self._placed(key), len(ring.members)):
                address = address_of.get(node)
                if address is not None:
                    return address
        return self._options.nodes[self.preferred]

    def answered(self, address):
        try:
            self.preferred = self._options.nodes.index(address)
        except ValueError:
            pass


def is_transport(error):
    return isinstance(error, errors.UnavailableError) and getattr(error, "transport", False)


def transport_error(message, sent):
    """An UnavailableError from the connection itself (not the server's answer)."""
    error = errors.UnavailableError(message)
    error.transport = True
    error.sent = sent
    return error


# ---- Answers to results (shared by the sync and asyncio clients) -------------

def finisher(convert, what, absent_is_none=False):
    """A function of an Answer: convert(answer) when Ok, None for NotFound when
    absent_is_none, else the answer's typed error raised."""
    def finish(answer):
        status = answer.status
        if status == 0:
            return convert(answer)
        if status == 1 and absent_is_none:
            return None
        raise answer.error(what)
    return finish


def finish_get(answer):
    """The Value of a get's answer, None when absent (written out: every get
    of a pipeline comes here)."""
    status = answer.status
    if status == 0:
        return codec.to_value(answer)
    if status == 1:
        return None
    raise answer.error("get")


def finish_put(answer):
    if answer.status:
        raise answer.error("put")
    return codec.to_write(answer)


finish_get_version = finisher(lambda a: codec.to_value(a, "get_version"), "get_version",
                              absent_is_none=True)
finish_delete = finisher(lambda a: codec.to_write(a, "delete"), "delete", absent_is_none=True)


class Kind:
    """What a kind of pipelined call is: its name, its encoder (request_id,
    key, *arguments), how its answer becomes a result, and whether it only
    reads."""

    __slots__ = ("what", "encode", "finish", "read")

    def __init__(self, what, encode, finish, read):
        self.what = what
        self.encode = encode
        self.finish = finish
        self.read = read


GET = Kind("get", codec.get, finish_get, True)
PUT = Kind("put", codec.put, finish_put, False)
DELETE = Kind("delete", codec.delete, finish_delete, False)


def encoder(call):
    """The function of a request id that encodes call, a (kind, key, arguments) tuple."""
    kind, key, arguments = call
    return lambda rid: kind.encode(rid, key, *arguments)


def encode_all(calls, ids):
    """The frames of calls with ids (a tight loop: pipelines spend their time here)."""
    return [kind.encode(rid, key, *arguments)
            for (kind, key, arguments), rid in zip(calls, ids)]


class PipelineBase:
    """The queue of a pipeline: .get/.put/.delete add calls, execute() (in the
    sync and asyncio subclasses) sends them and returns results in order.

    A call is a (kind, key, arguments) tuple: no closure or object per call,
    as a pipeline queues many."""

    def __init__(self, client):
        self._client = client
        self._calls = []

    def __len__(self):
        return len(self._calls)

    def get(self, key, consistency=None):
        self._calls.append((GET, codec.as_bytes(key), () if consistency is None
                            else (consistency,)))
        return self

    def put(self, key, value, ttl_ms=0, if_version=None, consistency=None):
        self._calls.append((PUT, codec.as_bytes(key), (value,) if (
            not ttl_ms and if_version is None and consistency is None) else (
                value, ttl_ms, if_version, consistency)))
        return self

    def delete(self, key, if_version=None, consistency=None):
        self._calls.append((DELETE, codec.as_bytes(key), () if (
            if_version is None and consistency is None) else (if_version, consistency)))
        return self

    def _take(self):
        calls, self._calls = self._calls, []
        return calls


def plan(router, calls):
    """[(address, [index of call])]: in a cluster each call goes to its key's
    first owner; otherwise all go to the preferred seed."""
    if not router.routing:
        return [(router.candidates()[0], list(range(len(calls))))]
    groups = {}
    for index, call in enumerate(calls):
        groups.setdefault(router.owner(call[1]), []).append(index)
    return list(groups.items())


def finish_all(calls, answers, raise_on_error):
    """Results of calls from their answers (an Answer or an exception each)."""
    results = []
    for (kind, _, _), answer in zip(calls, answers):
        try:
            if isinstance(answer, BaseException):
                raise answer
            results.append(kind.finish(answer))
        except errors.LogkvError as error:
            if raise_on_error:
                raise
            results.append(error)
    return results


def after_transport_failure(call, error):
    """For a call of a pipeline whose connection failed: None when it may be
    sent again (to the next node), else the error to report for it (a write
    that may have been applied is never sent twice)."""
    kind = call[0]
    if error.sent and not kind.read:
        return errors.UnavailableError("%s: %s" % (kind.what, error.message))
    return None


class Failover:
    """The attempts of one call over the nodes it may go to: every node that
    cannot be reached is skipped; after a transport failure of a sent request
    a read is tried on read_retries more nodes, a write never (it may have
    been applied)."""

    def __init__(self, what, options, read):
        self.what = what
        self.attempts_left = 1 + (options.read_retries if read else 0)
        self.last = None

    def failed(self, error):
        """Called in an except block: returns when the next node may be tried."""
        if not is_transport(error):
            raise error
        self.last = error
        if error.sent:
            self.attempts_left -= 1
            if self.attempts_left <= 0:
                raise errors.UnavailableError("%s: %s" % (self.what, error.message))

    def exhausted(self):
        return errors.UnavailableError("%s: %s" % (
            self.what, self.last.message if self.last else "no node"))


class WatchBase:
    """What the sync and asyncio watches keep: the prefix, the last sequence
    delivered per shard (positions), the node followed and its connection."""

    def __init__(self, client, prefix, after_sequences):
        self._client = client
        self.prefix = codec.as_bytes(prefix)
        self.positions = list(after_sequences) if after_sequences else None
        self.reconnects = 0
        self.address = None  # the node the watch follows
        self._conn = None
        self._rid = 0
        self._ended = None

    def _first_answer(self, conn, answer):
        """Checks the first answer of a request of a (re)subscription; the
        server's refusal closes conn and is raised."""
        if answer.status != 0:
            conn.close()
            raise answer.error("watch")
        return answer

    def _start_positions(self, conn, answer):
        """Positions from the Stats answer of a watch started "from now"."""
        self.positions = codec.to_stats(self._first_answer(conn, answer)).last_sequences

    def _subscribed(self, conn, address, answer):
        """Follows conn to address from now on; returns the Watch answer."""
        self._first_answer(conn, answer)
        self._conn = conn
        self.address = address
        return answer

    @staticmethod
    def _check_resume_deadline(deadline, last):
        if time.monotonic() >= deadline:
            raise errors.UnavailableError("watch: cannot resume: %s" % (
                last.message if last else "no node"))


def deadline_for(options, count):
    """Seconds a pipeline of count calls may take: request_timeout per 1000."""
    return options.request_timeout * max(1, count / 1000)


def fresh_events(positions, events):
    """The events not delivered before (a resumed watch may repeat some), while
    moving positions (the last sequence delivered per shard) past them."""
    for event in events:
        if event.shard < len(positions):
            if event.sequence <= positions[event.shard]:
                continue
            positions[event.shard] = event.sequence
        yield event
