"""Framing, answer decoding, error mapping and placement, without a server."""
import json
import os
import struct
import unittest

import flatbuffers

import logkv
import logkv.logkv_generated
from logkv import _codec as codec
from logkv import errors
from logkv.logkv_generated import (Response, ResponseAddRequestId, ResponseAddResult,
                                   ResponseAddResultType, ResponseAddStatus, ResponseEnd,
                                   ResponseStart, Result, ValueResultAddValue, ValueResultAddVersion,
                                   ValueResultEnd, ValueResultStart)
from logkv.placement import Ring, key_hash


def value_answer(request_id, value, version=7):
    b = flatbuffers.Builder(len(value) + 64)
    v = b.CreateByteVector(value)
    ValueResultStart(b)
    ValueResultAddValue(b, v)
    ValueResultAddVersion(b, version)
    result = ValueResultEnd(b)
    ResponseStart(b)
    ResponseAddRequestId(b, request_id)
    ResponseAddResultType(b, Result.ValueResult)
    ResponseAddResult(b, result)
    b.FinishSizePrefixed(ResponseEnd(b))
    return bytes(b.Output())


def status_answer(request_id, status):
    b = flatbuffers.Builder(64)
    ResponseStart(b)
    ResponseAddRequestId(b, request_id)
    ResponseAddStatus(b, status)
    b.FinishSizePrefixed(ResponseEnd(b))
    return bytes(b.Output())


class FrameBufferTest(unittest.TestCase):
    def test_frames_split_anywhere(self):
        stream = value_answer(1, b"a") + value_answer(2, b"bb" * 100) + value_answer(3, b"")
        for step in (1, 3, 7, 64, len(stream)):
            buffer = codec.FrameBuffer()
            frames = []
            for i in range(0, len(stream), step):
                frames += buffer.feed(stream[i:i + step])
            self.assertEqual([codec.decode(f).request_id for f in frames], [1, 2, 3])
            self.assertEqual(buffer.pending_bytes(), 0)
        self.assertEqual(codec.to_value(codec.decode(frames[1])).value, b"bb" * 100)

    def test_large_frame_in_chunks_is_linear(self):
        value = os.urandom(1 << 20)
        frame = value_answer(9, value)
        buffer = codec.FrameBuffer()
        frames = []
        for i in range(0, len(frame), 1000):  # 1049 feeds of 1000 bytes
            frames += buffer.feed(frame[i:i + 1000])
        self.assertEqual(len(frames), 1)
        self.assertEqual(codec.to_value(codec.decode(frames[0])).value, value)

    def test_bad_lengths(self):
        with self.assertRaises(errors.ProtocolError):
            codec.FrameBuffer().feed(struct.pack("<I", 0))
        with self.assertRaises(errors.ProtocolError):
            codec.FrameBuffer(max_frame_bytes=1000).feed(struct.pack("<I", 1001))

    def test_garbage_frame_is_a_protocol_error(self):
        frame = struct.pack("<I", 8) + b"\xff" * 8
        with self.assertRaises(errors.ProtocolError):
            answer = codec.decode(frame)
            codec.to_value(answer)

    def test_missing_result_is_a_protocol_error(self):
        with self.assertRaises(errors.ProtocolError):
            codec.to_value(codec.decode(status_answer(4, 0)))


class TemplateTest(unittest.TestCase):
    """The re-filled request frames are byte for byte what the builder makes."""

    def test_same_bytes_as_the_builder(self):
        for key_length in (1, 2, 3, 4, 5, 8, 13, 100, 4000):
            for value_length in (0, 1, 7, 100, 96):
                key = os.urandom(key_length)
                value = os.urandom(value_length)
                for request_id in (1, 77, 1 << 40):
                    self.assertEqual(bytes(codec.put(request_id, key, value)),
                                     bytes(codec._put(request_id, key, value)))
                    self.assertEqual(bytes(codec.get(request_id, key)),
                                     bytes(codec._get(request_id, key)))
                    self.assertEqual(bytes(codec.delete(request_id, key)),
                                     bytes(codec._delete(request_id, key)))

    def test_other_shapes_use_the_builder(self):
        frame = codec.put(5, b"k", b"v", ttl_ms=10, if_version=0, consistency="strong")
        request = logkv.logkv_generated.Request.GetRootAs(frame, 4)
        put = logkv.logkv_generated.Put()
        union = request.Operation()
        put.Init(union.Bytes, union.Pos)
        self.assertEqual((request.RequestId(), put.TtlMs(), put.HasIfVersion(), put.IfVersion(),
                          put.Consistency()), (5, 10, True, 0, 2))


class FastReadTest(unittest.TestCase):
    """The direct reads of Response, ValueResult and WriteResult agree with the
    generated accessors, whichever fields are present."""

    def test_value_results(self):
        from logkv import logkv_generated as g
        for value in (b"", b"x", os.urandom(1000)):
            for version, timestamp, expiry in ((0, 0, 0), (1, 2, 3), (1 << 63, 1 << 60, -1)):
                for request_id, status in ((0, 0), (5, 0), (1 << 50, 1)):
                    b = flatbuffers.Builder(64)
                    v = b.CreateByteVector(value) if value else None
                    g.ValueResultStart(b)
                    if v is not None:
                        g.ValueResultAddValue(b, v)
                    g.ValueResultAddVersion(b, version)
                    g.ValueResultAddTimestamp(b, timestamp)
                    g.ValueResultAddExpiryUnixMs(b, expiry)
                    result = g.ValueResultEnd(b)
                    g.ResponseStart(b)
                    g.ResponseAddRequestId(b, request_id)
                    g.ResponseAddStatus(b, status)
                    g.ResponseAddResultType(b, g.Result.ValueResult)
                    g.ResponseAddResult(b, result)
                    b.FinishSizePrefixed(g.ResponseEnd(b))
                    frame = bytes(b.Output())
                    answer = codec.decode(frame)
                    response = g.Response.GetRootAs(frame, 4)
                    self.assertEqual((answer.request_id, answer.status),
                                     (response.RequestId(), response.Status()))
                    r = g.ValueResult()
                    r.Init(response.Result().Bytes, response.Result().Pos)
                    self.assertEqual(codec.to_value(answer),
                                     (codec._bytes(r._tab, 0), r.Version(), r.Timestamp(),
                                      r.ExpiryUnixMs()))

    def test_write_results(self):
        from logkv import logkv_generated as g
        for fields in ((0, 0, 0, 0), (1, 2, 3, 4), (1 << 63, 1, 1 << 40, 7)):
            b = flatbuffers.Builder(64)
            g.WriteResultStart(b)
            g.WriteResultAddVersion(b, fields[0])
            g.WriteResultAddTimestamp(b, fields[1])
            g.WriteResultAddSequence(b, fields[2])
            g.WriteResultAddShard(b, fields[3])
            result = g.WriteResultEnd(b)
            g.ResponseStart(b)
            g.ResponseAddRequestId(b, 9)
            g.ResponseAddResultType(b, g.Result.WriteResult)
            g.ResponseAddResult(b, result)
            b.FinishSizePrefixed(g.ResponseEnd(b))
            self.assertEqual(tuple(codec.to_write(codec.decode(bytes(b.Output())))), fields)

    def test_wrong_result_type(self):
        with self.assertRaises(errors.ProtocolError):
            codec.to_write(codec.decode(value_answer(1, b"v")))


class ErrorTest(unittest.TestCase):
    def test_every_code_has_a_type(self):
        names = {1: logkv.NotFoundError, 2: logkv.InvalidArgumentError,
                 3: logkv.FailedPreconditionError, 4: logkv.ResourceExhaustedError,
                 5: logkv.UnavailableError, 6: logkv.DataLossError,
                 7: logkv.UnauthenticatedError, 8: logkv.PermissionDeniedError,
                 9: logkv.CompactedError, 10: logkv.InternalError, 11: logkv.UnimplementedError,
                 12: logkv.DeadlineExceededError, 13: logkv.AbortedError,
                 14: logkv.InsufficientStorageError}
        for code, cls in names.items():
            error = codec.decode(status_answer(1, code)).error("get")
            self.assertIs(type(error), cls)
            self.assertEqual(error.code, code)
        self.assertIsInstance(errors.error_for(99, "new"), logkv.InternalError)
        self.assertTrue(issubclass(logkv.DeadlineExceededError, TimeoutError))
        self.assertTrue(issubclass(logkv.UnavailableError, ConnectionError))


class PlacementTest(unittest.TestCase):
    def test_vectors_of_the_cpp_ring(self):
        path = os.environ.get("LOGKV_PLACEMENT_VECTORS")
        if not path:
            self.skipTest("LOGKV_PLACEMENT_VECTORS not set (ctest sets it)")
        with open(path) as f:
            vectors = json.load(f)
        checked = 0
        for case in vectors["cases"]:
            ring = Ring(case["members"], vectors["virtual_nodes"])
            for item in case["items"]:
                key = bytes.fromhex(item["key_hex"])
                self.assertEqual(key_hash(key), int(item["hash"]), key)
                self.assertEqual(ring.preference_list(key, len(case["members"])),
                                 item["owners"], key)
                checked += 1
        self.assertGreater(checked, 800)

    def test_fewer_owners_than_members(self):
        ring = Ring(["a", "b", "c"])
        full = ring.preference_list(b"k", 3)
        self.assertEqual(ring.preference_list(b"k", 1), full[:1])
        self.assertEqual(ring.preference_list(b"k", 9), full)
        self.assertEqual(Ring([]).preference_list(b"k", 3), [])


if __name__ == "__main__":
    unittest.main()
