"""Answers a fake server sends: a valid Hello answer, then whatever a test needs."""
import struct

import flatbuffers

from logkv import logkv_generated as g


def read_frame(sock):
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            raise ConnectionError("closed")
        header += chunk
    (length,) = struct.unpack("<I", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return g.Request.GetRootAs(header + body, 4)


def hello_answer(request_id):
    b = flatbuffers.Builder(128)
    node = b.CreateString("fake")
    g.HelloResultStart(b)
    g.HelloResultAddProtocolVersion(b, 1)
    g.HelloResultAddNodeId(b, node)
    g.HelloResultAddShardCount(b, 1)
    result = g.HelloResultEnd(b)
    g.ResponseStart(b)
    g.ResponseAddRequestId(b, request_id)
    g.ResponseAddResultType(b, g.Result.HelloResult)
    g.ResponseAddResult(b, result)
    b.FinishSizePrefixed(g.ResponseEnd(b))
    return bytes(b.Output())


def status_answer(request_id, status=0, message=""):
    b = flatbuffers.Builder(128)
    text = b.CreateString(message) if message else None
    g.ResponseStart(b)
    g.ResponseAddRequestId(b, request_id)
    g.ResponseAddStatus(b, status)
    if text is not None:
        g.ResponseAddMessage(b, text)
    b.FinishSizePrefixed(g.ResponseEnd(b))
    return bytes(b.Output())


def answer_hello(sock):
    request = read_frame(sock)
    sock.sendall(hello_answer(request.RequestId()))
    return request
