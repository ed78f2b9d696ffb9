"""Requests and answers of the binary protocol (docs/protocol.md).

Encodes requests with the classes flatc generates from protocol/logkv.fbs
(logkv_generated, produced at build time), decodes answers into the plain
types of logkv.types, and splits a byte stream into frames. Shared by the
sync and the asyncio clients; holds no I/O.
"""
import functools
import operator
import struct

import flatbuffers
from flatbuffers import number_types

from . import errors
from .types import (BatchItemResult, BatchOp, Event, HelloInfo, Member, ScanItem, ScanPage, Stats,
                    Value, WriteResult)

try:
    from . import logkv_generated as g
except ImportError as error:  # pragma: no cover - a checkout used without building
    raise ImportError(
        "logkv.logkv_generated is missing: it is generated from protocol/logkv.fbs at build "
        "time (pip install client/python, or the CMake build; see client/python/README.md)"
    ) from error

PROTOCOL_VERSION = 1
FRAME_HEADER = struct.Struct("<I")
CONSISTENCY = {None: 0, "default": 0, "eventual": 1, "strong": 2}
_MAX_TTL_MS = 100 * 365 * 24 * 3600 * 1000


def _key(key):
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError("keys and values are bytes or str, not %s" % type(key).__name__)


as_bytes = _key


def _consistency(value):
    try:
        return CONSISTENCY[value]
    except KeyError:
        raise ValueError("consistency is 'eventual', 'strong' or None, not %r" % (value,))


def _finish(builder, request_id, operation_type, operation):
    g.RequestStart(builder)
    g.RequestAddRequestId(builder, request_id)
    g.RequestAddOperationType(builder, operation_type)
    g.RequestAddOperation(builder, operation)
    builder.FinishSizePrefixed(g.RequestEnd(builder))
    return builder.Output()


def hello(request_id, auth_token, client_name):
    b = flatbuffers.Builder(128)
    token = b.CreateString(auth_token) if auth_token else None
    name = b.CreateString(client_name)
    g.HelloStart(b)
    g.HelloAddProtocolVersion(b, PROTOCOL_VERSION)
    if token is not None:
        g.HelloAddAuthToken(b, token)
    g.HelloAddClientName(b, name)
    return _finish(b, request_id, g.Operation.Hello, g.HelloEnd(b))


def ping(request_id, payload=b""):
    b = flatbuffers.Builder(64)
    data = b.CreateByteVector(payload)
    g.PingStart(b)
    g.PingAddPayload(b, data)
    return _finish(b, request_id, g.Operation.Ping, g.PingEnd(b))


class _Template:
    """A request frame built once by the generated code, re-filled per call.

    The FlatBuffers builder lays a buffer out by the lengths of its vectors
    and by which fields differ from their defaults, never by the bytes in
    them. So a frame built with placeholder bytes of the same lengths (and a
    non-zero request id, as 0 would be left out) differs from the real one
    only in those bytes: the id, key and value joined between the frame's
    other bytes are the frame the builder would make, for a fraction of its
    cost in Python. The positions come from reading the frame back with the
    generated classes; the builder writes the request table before the key
    and the key before the value, and a layout that does not is not used.
    """

    __slots__ = ("parts",)

    def __init__(self, build, operation_class, key_length, value_length=None):
        placeholder_id = 0xFFFFFFFFFFFFFFFF
        frame = bytes(build(placeholder_id, b"\0" * key_length,
                            None if value_length is None else b"\0" * value_length))
        request = g.Request.GetRootAs(frame, 4)
        tab = request._tab
        id_at = tab.Pos + tab.Offset(4)
        operation = operation_class()
        union = request.Operation()
        operation.Init(union.Bytes, union.Pos)
        op_tab = operation._tab
        key_at = op_tab.Vector(op_tab.Offset(4))
        if request.RequestId() != placeholder_id or not id_at + 8 <= key_at:
            raise ValueError("unexpected request layout")
        if value_length is None:
            self.parts = (frame[:id_at], frame[id_at + 8:key_at], frame[key_at + key_length:])
            return
        value_at = op_tab.Vector(op_tab.Offset(6))
        if not key_at + key_length <= value_at:
            raise ValueError("unexpected request layout")
        self.parts = (frame[:id_at], frame[id_at + 8:key_at],
                      frame[key_at + key_length:value_at], frame[value_at + value_length:])


_pack_id = struct.Struct("<Q").pack
_get_templates = {}  # key length -> parts
_delete_templates = {}
_put_templates = {}  # (key length, value length) -> parts
_MAX_TEMPLATES = 256
_TEMPLATE_MAX_BYTES = 4096  # larger requests: the builder's cost is in the copy anyway


def _template(cache, shape, build, operation_class, key_length, value_length=None):
    if len(cache) >= _MAX_TEMPLATES:
        cache.clear()
    try:
        parts = _Template(build, operation_class, key_length, value_length).parts
    except ValueError:  # pragma: no cover - a FlatBuffers runtime that lays out otherwise
        parts = None
    cache[shape] = parts
    return parts


def get(request_id, key, consistency=None):
    if type(key) is not bytes:
        key = _key(key)
    if not consistency and len(key) <= _TEMPLATE_MAX_BYTES:
        parts = _get_templates.get(len(key), False)
        if parts is False:
            parts = _template(_get_templates, len(key), lambda rid, k, v: _get(rid, k), g.Get,
                              len(key))
        if parts is not None:
            return b"".join((parts[0], _pack_id(request_id), parts[1], key, parts[2]))
    return _get(request_id, key, consistency)


def _get(request_id, key, consistency=None):
    b = flatbuffers.Builder(len(key) + 64)
    k = b.CreateByteVector(key)
    g.GetStart(b)
    g.GetAddKey(b, k)
    c = _consistency(consistency)
    if c:
        g.GetAddConsistency(b, c)
    return _finish(b, request_id, g.Operation.Get, g.GetEnd(b))


def get_version(request_id, key, version):
    key = _key(key)
    b = flatbuffers.Builder(len(key) + 64)
    k = b.CreateByteVector(key)
    g.GetVersionStart(b)
    g.GetVersionAddKey(b, k)
    g.GetVersionAddVersion(b, version)
    return _finish(b, request_id, g.Operation.GetVersion, g.GetVersionEnd(b))


def _check_ttl(ttl_ms):
    if ttl_ms < 0 or ttl_ms > _MAX_TTL_MS:
        raise ValueError("ttl_ms must be in [0, 100 years], not %r" % (ttl_ms,))


def put(request_id, key, value, ttl_ms=0, if_version=None, consistency=None):
    if type(key) is not bytes:
        key = _key(key)
    if type(value) is not bytes:
        value = _key(value)
    if (not ttl_ms and if_version is None and not consistency
            and len(key) + len(value) <= _TEMPLATE_MAX_BYTES):
        shape = (len(key), len(value))
        parts = _put_templates.get(shape, False)
        if parts is False:
            parts = _template(_put_templates, shape, lambda rid, k, v: _put(rid, k, v), g.Put,
                              len(key), len(value))
        if parts is not None:
            return b"".join((parts[0], _pack_id(request_id), parts[1], key, parts[2], value,
                             parts[3]))
    return _put(request_id, key, value, ttl_ms, if_version, consistency)


def _put(request_id, key, value, ttl_ms=0, if_version=None, consistency=None):
    _check_ttl(ttl_ms)
    b = flatbuffers.Builder(len(key) + len(value) + 96)
    v = b.CreateByteVector(value)
    k = b.CreateByteVector(key)
    g.PutStart(b)
    g.PutAddKey(b, k)
    g.PutAddValue(b, v)
    if ttl_ms:
        g.PutAddTtlMs(b, ttl_ms)
    if if_version is not None:
        g.PutAddHasIfVersion(b, True)
        g.PutAddIfVersion(b, if_version)
    c = _consistency(consistency)
    if c:
        g.PutAddConsistency(b, c)
    return _finish(b, request_id, g.Operation.Put, g.PutEnd(b))


def delete(request_id, key, if_version=None, consistency=None):
    if type(key) is not bytes:
        key = _key(key)
    if if_version is None and not consistency and len(key) <= _TEMPLATE_MAX_BYTES:
        parts = _delete_templates.get(len(key), False)
        if parts is False:
            parts = _template(_delete_templates, len(key), lambda rid, k, v: _delete(rid, k),
                              g.Delete, len(key))
        if parts is not None:
            return b"".join((parts[0], _pack_id(request_id), parts[1], key, parts[2]))
    return _delete(request_id, key, if_version, consistency)


def _delete(request_id, key, if_version=None, consistency=None):
    b = flatbuffers.Builder(len(key) + 64)
    k = b.CreateByteVector(key)
    g.DeleteStart(b)
    g.DeleteAddKey(b, k)
    if if_version is not None:
        g.DeleteAddHasIfVersion(b, True)
        g.DeleteAddIfVersion(b, if_version)
    c = _consistency(consistency)
    if c:
        g.DeleteAddConsistency(b, c)
    return _finish(b, request_id, g.Operation.Delete, g.DeleteEnd(b))


def batch(request_id, operations, consistency=None):
    """operations: BatchOp items (or (key, value) / (key, None) tuples)."""
    b = flatbuffers.Builder(1024)
    items = []
    for op in operations:
        if not isinstance(op, BatchOp):
            op = BatchOp(*op)
        _check_ttl(op.ttl_ms)
        k = b.CreateByteVector(_key(op.key))
        v = None if op.value is None else b.CreateByteVector(_key(op.value))
        g.BatchItemStart(b)
        if op.value is None:
            g.BatchItemAddDelete(b, True)
        g.BatchItemAddKey(b, k)
        if v is not None:
            g.BatchItemAddValue(b, v)
        if op.ttl_ms:
            g.BatchItemAddTtlMs(b, op.ttl_ms)
        items.append(g.BatchItemEnd(b))
    g.BatchStartItemsVector(b, len(items))
    for item in reversed(items):
        b.PrependUOffsetTRelative(item)
    vector = b.EndVector()
    g.BatchStart(b)
    g.BatchAddItems(b, vector)
    c = _consistency(consistency)
    if c:
        g.BatchAddConsistency(b, c)
    return _finish(b, request_id, g.Operation.Batch, g.BatchEnd(b))


def scan(request_id, prefix=b"", start_key=b"", end_key=b"", after_key=b"", limit=0,
         keys_only=False):
    b = flatbuffers.Builder(256)
    fields = [b.CreateByteVector(_key(x)) if x else None
              for x in (prefix, start_key, end_key, after_key)]
    g.ScanStart(b)
    for add, field in zip((g.ScanAddPrefix, g.ScanAddStartKey, g.ScanAddEndKey,
                           g.ScanAddAfterKey), fields):
        if field is not None:
            add(b, field)
    if limit:
        g.ScanAddLimit(b, limit)
    if keys_only:
        g.ScanAddKeysOnly(b, True)
    return _finish(b, request_id, g.Operation.Scan, g.ScanEnd(b))


def watch(request_id, prefix=b"", after_sequences=()):
    b = flatbuffers.Builder(256)
    p = b.CreateByteVector(_key(prefix)) if prefix else None
    seqs = None
    if after_sequences:
        g.WatchStartAfterSequencesVector(b, len(after_sequences))
        for sequence in reversed(after_sequences):
            b.PrependUint64(sequence)
        seqs = b.EndVector()
    g.WatchStart(b)
    if p is not None:
        g.WatchAddPrefix(b, p)
    if seqs is not None:
        g.WatchAddAfterSequences(b, seqs)
    return _finish(b, request_id, g.Operation.Watch, g.WatchEnd(b))


def unwatch(request_id, watch_request_id):
    b = flatbuffers.Builder(64)
    g.UnwatchStart(b)
    g.UnwatchAddWatchRequestId(b, watch_request_id)
    return _finish(b, request_id, g.Operation.Unwatch, g.UnwatchEnd(b))


def stats(request_id):
    b = flatbuffers.Builder(64)
    g.StatsStart(b)
    return _finish(b, request_id, g.Operation.Stats, g.StatsEnd(b))


# ---- Answers ----------------------------------------------------------------

# ---- Reading the answers every call reads -------------------------------------
# Response, ValueResult and WriteResult fields are read here by the FlatBuffers
# rules (a table's vtable gives each field's offset; absent fields have their
# default): Python's generated accessors go through several layers of calls
# per field, which dominated a pipelined client's time. A vtable is a handful
# of bytes that the server's builder repeats for every answer of a kind, so
# each distinct vtable is compiled once into one struct format reading all of
# a table's scalar fields in a single call. Everything else uses the
# generated classes; tests check that both read the same values.
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u16 = struct.Struct("<H").unpack_from
_SIZES = {"B": 1, "H": 2, "I": 4, "i": 4, "Q": 8, "q": 8}


class _TableReader:
    """Reads one kind of table: codes[i] is the struct code of field id i
    ("I" for an offset to a string, vector or table)."""

    _MAX_LAYOUTS = 64  # a server has a few; more are garbage, and start over

    def __init__(self, codes):
        self._codes = codes
        self._zeros = (0,) * len(codes)
        self._layouts = {}

    def read(self, frame, table):
        """(values by field id, field offsets by field id) of the table at table.

        Absent fields read 0 with offset 0; an offset field's value is
        relative to its own position, table + offset. Raises ValueError or
        struct.error when the bytes do not hold such a table.
        """
        vtable = table - _i32(frame, table)[0]
        if vtable < 0:
            raise ValueError("vtable before the frame")
        key = frame[vtable:vtable + _u16(frame, vtable)[0]]
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._compile(key)
        unpack, pick, offsets = layout
        return pick(unpack(frame, table) + self._zeros), offsets

    def _compile(self, vtable):
        if len(vtable) < 4 or len(vtable) % 2 or _u16(vtable, 0)[0] != len(vtable):
            raise ValueError("a vtable of %d bytes" % len(vtable))
        count = (len(vtable) - 4) // 2
        object_size = _u16(vtable, 2)[0]
        offsets = [(_u16(vtable, 4 + 2 * i)[0] if i < count else 0)
                   for i in range(len(self._codes))]
        present = sorted((offset, i) for i, offset in enumerate(offsets) if offset)
        fmt = ["<"]
        position = 0  # the format reads from the table's start
        index = {}
        for offset, i in present:
            if offset < max(position, 4):  # 4: the table's offset to its vtable
                raise ValueError("overlapping fields in a table")
            code = self._codes[i]
            fmt.append("%dx%s" % (offset - position, code))
            position = offset + _SIZES[code]
            index[i] = len(index)
        if position > max(object_size, 4):
            raise ValueError("a field past its table")
        # Absent fields pick from the zeros appended to the unpacked values.
        pick = operator.itemgetter(*[index.get(i, len(index) + i)
                                     for i in range(len(self._codes))])
        layout = (struct.Struct("".join(fmt)).unpack_from, pick, tuple(offsets))
        if len(self._layouts) >= self._MAX_LAYOUTS:
            self._layouts.clear()
        self._layouts[bytes(vtable)] = layout
        return layout


# Response: request_id, status, message, result_type, result, retry_after_ms.
_RESPONSE = _TableReader("QHIBIq")
_VALUE_RESULT = _TableReader("IQQq")  # value, version, timestamp, expiry_unix_ms
_WRITE_RESULT = _TableReader("QQQI")  # version, timestamp, sequence, shard
_new_value = functools.partial(tuple.__new__, Value)
_new_write = functools.partial(tuple.__new__, WriteResult)


class Answer:
    """One decoded Response frame: request_id, status and where its result is at
    once; the message and retry_after_ms are read when asked for (most answers
    need neither)."""

    __slots__ = ("request_id", "status", "result_type", "_frame", "_result", "_generated")

    @property
    def _response(self):
        if self._generated is None:
            self._generated = g.Response.GetRootAs(self._frame, 4)
        return self._generated

    @property
    def message(self):
        message = self._response.Message()
        return message.decode("utf-8", "replace") if message else ""

    @property
    def result(self):
        return self._response.Result() if self._response.ResultType() else None

    @property
    def retry_after_ms(self):
        return self._response.RetryAfterMs()

    def error(self, what=""):
        message = self.message
        if what:
            message = "%s: %s" % (what, message) if message else what
        return errors.error_for(self.status, message, self.retry_after_ms)


def decode(frame):
    """Decodes one frame (length prefix included, bytes) as a Response.

    Raises ProtocolError when the bytes are not a Response: the caller drops
    the connection, as the stream cannot be trusted any more.
    """
    if type(frame) is not bytes:
        frame = bytes(frame)
    try:
        root = 4 + _u32(frame, 4)[0]
        values, offsets = _RESPONSE.read(frame, root)
    except (IndexError, struct.error, ValueError, TypeError) as error:
        raise errors.ProtocolError("the server sent a frame that is not a Response (%s)" % error)
    answer = Answer()
    answer._frame = frame
    answer._generated = None
    answer.request_id = values[0]
    answer.status = values[1]
    answer.result_type = values[3]
    answer._result = root + offsets[4] + values[4] if offsets[4] else 0
    return answer


def stray(answer, last_id, address):
    """The error an answer to no request of the connection means, or None.

    Request id 0 with an error is the server refusing the stream (it closes
    it); id 0 with Ok, or an id never sent, is not the protocol (Python's
    FlatBuffers has no verifier; this catches most garbage that decodes).
    Answers to ids that were sent but are no longer awaited (timed out) are
    None: dropped.
    """
    if answer.request_id == 0:
        if answer.status != 0:
            return answer.error("%s:%d closed the connection" % address)
        return errors.ProtocolError("%s:%d sent an answer without request id" % address)
    if answer.request_id > last_id:
        return errors.ProtocolError("%s:%d answered request %d, never sent" % (
            address + (answer.request_id,)))
    return None


def _bytes(tab, field_id):
    """A [ubyte] field as bytes: one slice of the frame, no per-byte calls."""
    o = number_types.UOffsetTFlags.py_type(tab.Offset(4 + 2 * field_id))
    if o == 0:
        return b""
    start = tab.Vector(o)
    return bytes(tab.Bytes[start:start + tab.VectorLen(o)])


def _expect(answer, result_type, what):
    try:
        response = answer._response
        result = response.Result() if response.ResultType() == result_type else None
    except (IndexError, struct.error, ValueError, TypeError):
        result = None
    if result is None:
        raise errors.ProtocolError("%s: the answer carries no %s" % (what, _RESULT_NAMES.get(
            result_type, result_type)))
    return result


_RESULT_NAMES = {v: k for k, v in vars(g.Result).items() if not k.startswith("_")}


def _init(cls, tab):
    obj = cls()
    obj.Init(tab.Bytes, tab.Pos)
    return obj


def _no_result(result_type, what):
    return errors.ProtocolError("%s: the answer carries no %s" % (
        what, _RESULT_NAMES.get(result_type, result_type)))


def to_value(answer, what="get"):
    frame, table = answer._frame, answer._result
    if answer.result_type != g.Result.ValueResult or not table:
        raise _no_result(g.Result.ValueResult, what)
    try:
        values, offsets = _VALUE_RESULT.read(frame, table)
        value = b""
        if offsets[0]:
            at = table + offsets[0] + values[0]
            end = at + 4 + _u32(frame, at)[0]
            if end > len(frame):
                raise ValueError("vector past the end of the frame")
            value = frame[at + 4:end]
    except (IndexError, struct.error, ValueError) as error:
        raise errors.ProtocolError("%s: a malformed ValueResult (%s)" % (what, error))
    return _new_value((value,) + values[1:])


def to_write(answer, what="put"):
    table = answer._result
    if answer.result_type != g.Result.WriteResult or not table:
        raise _no_result(g.Result.WriteResult, what)
    try:
        return _new_write(_WRITE_RESULT.read(answer._frame, table)[0])
    except (IndexError, struct.error, ValueError) as error:
        raise errors.ProtocolError("%s: a malformed WriteResult (%s)" % (what, error))


def to_batch(answer):
    r = _init(g.BatchResult, _expect(answer, g.Result.BatchResult, "batch"))
    out = []
    for i in range(r.ItemsLength()):
        item = r.Items(i)
        message = item.Message()
        out.append(BatchItemResult(item.Status(), message.decode("utf-8", "replace")
                                   if message else "", item.Version()))
    return out


def to_scan(answer):
    r = _init(g.ScanResult, _expect(answer, g.Result.ScanResult, "scan"))
    items = []
    for i in range(r.ItemsLength()):
        item = r.Items(i)
        items.append(ScanItem(_bytes(item._tab, 0), Value(_bytes(item._tab, 1), item.Version(),
                                                           item.Timestamp(),
                                                           item.ExpiryUnixMs())))
    return ScanPage(items, _bytes(r._tab, 1))


def to_events(answer):
    r = _init(g.WatchEvents, _expect(answer, g.Result.WatchEvents, "watch"))
    out = []
    for i in range(r.EventsLength()):
        e = r.Events(i)
        out.append(Event("delete" if e.Type() == g.EventType.Delete else "put", e.Shard(),
                         e.Sequence(), _bytes(e._tab, 3), _bytes(e._tab, 4), e.Version(),
                         e.Timestamp()))
    return out


def to_stats(answer):
    r = _init(g.StatsResult, _expect(answer, g.Result.StatsResult, "stats"))
    return Stats(keys=r.Keys(), tombstones=r.Tombstones(), segments=r.Segments(),
                 log_bytes=r.LogBytes(), dead_bytes=r.DeadBytes(), index_bytes=r.IndexBytes(),
                 puts=r.Puts(), deletes=r.Deletes(), gets=r.Gets(), fsyncs=r.Fsyncs(),
                 compactions=r.Compactions(), expired_swept=r.ExpiredSwept(),
                 connections=r.Connections(), requests=r.Requests(), uptime_ms=r.UptimeMs(),
                 shard_count=r.ShardCount(),
                 last_sequences=[r.LastSequences(i) for i in range(r.LastSequencesLength())])


def to_hello(answer):
    r = _init(g.HelloResult, _expect(answer, g.Result.HelloResult, "hello"))
    members = []
    for i in range(r.MembersLength()):
        m = r.Members(i)
        members.append(Member((m.NodeId() or b"").decode(), (m.Address() or b"").decode()))
    version = r.ServerVersion()
    key_prefix = bytes(r.KeyPrefix(i) for i in range(r.KeyPrefixLength()))
    return HelloInfo(protocol_version=r.ProtocolVersion(),
                     node_id=(r.NodeId() or b"").decode(), shard_count=r.ShardCount(),
                     max_frame_bytes=r.MaxFrameBytes(), max_key_bytes=r.MaxKeyBytes(),
                     max_value_bytes=r.MaxValueBytes(), max_batch_items=r.MaxBatchItems(),
                     members=members, server_version=version.decode() if version else "",
                     key_prefix=key_prefix)


def to_none(answer):
    return None


class FrameBuffer:
    """Splits received bytes into frames without quadratic copying.

    Bytes are appended to one bytearray (amortised growth); complete frames
    are cut out by offset, and consumed bytes are dropped once per feed. A
    length of 0 or above max_frame_bytes raises ProtocolError at once, before
    anything of that size is buffered.
    """

    def __init__(self, max_frame_bytes=64 << 20):
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data):
        """Appends data; returns the complete frames (bytes, prefix included)."""
        buffer = self._buffer
        buffer += data
        frames = []
        offset = 0
        end = len(buffer)
        with memoryview(buffer) as view:
            while end - offset >= 4:
                (length,) = FRAME_HEADER.unpack_from(buffer, offset)
                if length == 0 or length > self.max_frame_bytes:
                    raise errors.ProtocolError(
                        "the server announced a frame of %d bytes (limit %d): not the logkv "
                        "protocol" % (length, self.max_frame_bytes))
                if end - offset < 4 + length:
                    break
                frames.append(bytes(view[offset:offset + 4 + length]))
                offset += 4 + length
        if offset:
            del buffer[:offset]
        return frames

    def pending_bytes(self):
        return len(self._buffer)
