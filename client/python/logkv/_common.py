"""Options, node addresses and routing shared by the sync and asyncio clients."""
import threading

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
    read_retries: extra attempts of a read on the next node after a
        transport failure (writes are retried only when they were not sent,
        as a sent write may have been applied).
    ssl: an ssl.SSLContext to wrap connections in. logkvd has no TLS yet;
        this is the hook for when it has (and for a TLS-terminating proxy).
    """

    def __init__(self, nodes=("127.0.0.1:7070",), api_key=None, client_name="logkv-python",
                 connect_timeout=2.0, request_timeout=10.0, pool_size=2, route_to_owners=True,
                 read_retries=1, ssl=None, max_frame_bytes=64 << 20,
                 watch_reconnect_timeout=10.0):
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
        self.preferred = 0  # index into nodes of the last seed that answered

    def update(self, members):
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
        owners = [address_of[o] for o in ring.preference_list(key, len(ring.members))
                  if o in address_of]
        return owners + [s for s in seeds if s not in owners]

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
