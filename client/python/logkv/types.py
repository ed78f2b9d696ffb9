"""Plain result types of the client (immutable named tuples)."""
from typing import List, NamedTuple, Optional


class Value(NamedTuple):
    value: bytes
    version: int
    timestamp: int
    expiry_unix_ms: int  # 0 = no expiry


class WriteResult(NamedTuple):
    version: int
    timestamp: int
    sequence: int
    shard: int


class BatchOp(NamedTuple):
    """One item of a batch: a put, or a delete when value is None."""
    key: bytes
    value: Optional[bytes] = None
    ttl_ms: int = 0


class BatchItemResult(NamedTuple):
    status: int        # wire StatusCode: 0 = Ok
    message: str
    version: int

    @property
    def ok(self):
        return self.status == 0

    def error(self):
        """The item's typed error, or None when it succeeded."""
        from .errors import error_for
        return None if self.ok else error_for(self.status, self.message)


class ScanItem(NamedTuple):
    key: bytes
    value: Value


class ScanPage(NamedTuple):
    items: List[ScanItem]
    next_cursor: bytes  # b"" when nothing more


class Event(NamedTuple):
    type: str          # "put" or "delete"
    shard: int
    sequence: int
    key: bytes
    value: bytes
    version: int
    timestamp: int


class Stats(NamedTuple):
    keys: int
    tombstones: int
    segments: int
    log_bytes: int
    dead_bytes: int
    index_bytes: int
    puts: int
    deletes: int
    gets: int
    fsyncs: int
    compactions: int
    expired_swept: int
    connections: int
    requests: int
    uptime_ms: int
    shard_count: int
    last_sequences: List[int]


class Member(NamedTuple):
    node_id: str
    address: str


class HelloInfo(NamedTuple):
    protocol_version: int
    node_id: str
    shard_count: int
    max_frame_bytes: int
    max_key_bytes: int
    max_value_bytes: int
    max_batch_items: int
    members: List[Member]
    server_version: str
    # What the node puts before this session's keys (the tenant's prefix with
    # auth on): keys are placed on the ring as key_prefix + key.
    key_prefix: bytes = b""
