"""The synchronous watch: a change feed that survives reconnects.

A watch has a connection of its own. It remembers the last sequence it
delivered per shard and, when the connection breaks, connects again to the
same node (sequences are a node's own), within watch_reconnect_timeout, and
asks to resume after those sequences, so no event is lost or repeated. Started "from now", it
first reads the shards' last sequences (Stats) so that it can resume even
before its first event.
"""
import time

from . import _codec as codec
from . import errors
from ._common import WatchBase, fresh_events, is_transport


class Watch(WatchBase):
    def __init__(self, client, prefix=b"", after_sequences=None):
        super().__init__(client, prefix, after_sequences)
        self._queue = []
        self._subscribe(time.monotonic() + client._options.watch_reconnect_timeout)

    def _subscribe(self, deadline):
        client = self._client
        last = None
        while True:
            # Sequences are a node's own: a watch resumes on the node it started on.
            addresses = [self.address] if self.address else client._router.candidates()
            for address in addresses:
                try:
                    conn = client._acquire(address)
                    if self.positions is None:
                        rid = conn.next_id()
                        self._start_positions(conn, conn.exchange(
                            [codec.stats(rid)], [rid],
                            time.monotonic() + client._options.request_timeout)[rid])
                    rid = conn.next_id()
                    # Catch-up events may come in the same read as the first answer.
                    self._rid = rid
                    answer = conn.exchange([codec.watch(rid, self.prefix, self.positions)],
                                           [rid], time.monotonic() +
                                           client._options.request_timeout,
                                           on_frame=self._on_frame)[rid]
                except errors.LogkvError as error:
                    if not is_transport(error):
                        raise
                    last = error
                    continue
                self._deliver(codec.to_events(self._subscribed(conn, address, answer)))
                return
            self._check_resume_deadline(deadline, last)
            time.sleep(0.05)

    def _deliver(self, events):
        self._queue.extend(fresh_events(self.positions, events))

    def _on_frame(self, answer):
        if answer.request_id == 0 and answer.status != 0:
            self._ended = answer.error("watch")  # e.g. the API key was revoked
            return
        if answer.request_id != self._rid:
            return
        if answer.status != 0 or answer.result_type == 0:
            # The watch ended: Ok after Unwatch, else the server's reason.
            self._ended = None if answer.status == 0 else answer.error("watch")
            if self._ended is None:
                self._ended = StopIteration()
            return
        self._deliver(codec.to_events(answer))

    def poll(self, timeout):
        """Events that arrived within timeout seconds (maybe none).

        Raises the error that ended the watch (AbortedError, CompactedError,
        UnauthenticatedError...) and StopIteration after close().
        """
        deadline = time.monotonic() + timeout
        while not self._queue:
            if self._ended is not None:
                raise self._ended
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                if self._conn is None or self._conn.closed:
                    raise errors.UnavailableError("not connected")
                self._conn.read_some(remaining, self._on_frame)
            except errors.UnavailableError:
                self._reconnect()
        events, self._queue = self._queue, []
        return events

    def _reconnect(self):
        if self._queue or self._ended is not None:
            return
        if self._conn is not None:
            self._conn.close()
        self.reconnects += 1
        self._subscribe(time.monotonic() + self._client._options.watch_reconnect_timeout)

    def __iter__(self):
        while True:
            try:
                events = self.poll(1.0)
            except StopIteration:
                return
            yield from events

    def close(self):
        if self._conn is not None and not self._conn.closed:
            try:
                rid = self._conn.next_id()
                self._conn.sock.setblocking(True)
                self._conn.sock.settimeout(1.0)
                self._conn.sock.sendall(codec.unwatch(rid, self._rid))
            except OSError:
                pass
            self._conn.close()
        self._ended = StopIteration()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
