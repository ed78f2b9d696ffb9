#!/usr/bin/python3
"""A logkv client in Python, generated from the schema by flatc.

Shows that any language FlatBuffers supports can speak logkv's binary
protocol (docs/protocol.md). It generates the Python classes from
protocol/logkv.fbs into a temporary directory, then puts, gets and deletes a
key over TCP.

  logkv_example.py --schema protocol/logkv.fbs --target 127.0.0.1:7070
  logkv_example.py --schema protocol/logkv.fbs --logkvd build/bin/logkvd   # starts its own

Needs Debian's python3-flatbuffers and flatc (flatbuffers-compiler).
"""
import argparse
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile


def generate(schema, out_dir):
    subprocess.run(["flatc", "--python", "-o", out_dir, schema], check=True)
    sys.path.insert(0, out_dir)


class Connection:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.next_id = 1
        self.buffer = b""

    def call(self, build_operation, operation_type):
        import flatbuffers
        from logkv.protocol import Request

        builder = flatbuffers.Builder(256)
        operation = build_operation(builder)
        request_id = self.next_id
        self.next_id += 1
        Request.Start(builder)
        Request.AddRequestId(builder, request_id)
        Request.AddOperationType(builder, operation_type)
        Request.AddOperation(builder, operation)
        builder.FinishSizePrefixed(Request.End(builder))
        self.sock.sendall(builder.Output())
        return self.read_response(request_id)

    def read_response(self, request_id):
        from logkv.protocol.Response import Response

        while True:
            if len(self.buffer) >= 4:
                (length,) = struct.unpack_from("<I", self.buffer)
                if len(self.buffer) >= 4 + length:
                    frame, self.buffer = self.buffer[: 4 + length], self.buffer[4 + length :]
                    response = Response.GetRootAs(frame, 4)
                    if response.RequestId() != request_id:
                        raise RuntimeError("answer to another request")
                    return response
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed the connection")
            self.buffer += chunk


def run(host, port):
    from logkv.protocol import Delete, Get, Operation, Put, Result, StatusCode, ValueResult

    c = Connection(host, port)

    def put(builder):
        key = builder.CreateByteVector(b"greeting")
        value = builder.CreateByteVector(b"hello from python")
        Put.Start(builder)
        Put.AddKey(builder, key)
        Put.AddValue(builder, value)
        return Put.End(builder)

    def get(builder):
        key = builder.CreateByteVector(b"greeting")
        Get.Start(builder)
        Get.AddKey(builder, key)
        return Get.End(builder)

    def delete(builder):
        key = builder.CreateByteVector(b"greeting")
        Delete.Start(builder)
        Delete.AddKey(builder, key)
        return Delete.End(builder)

    response = c.call(put, Operation.Operation.Put)
    assert response.Status() == StatusCode.StatusCode.Ok, response.Message()
    print("put greeting: ok")

    response = c.call(get, Operation.Operation.Get)
    assert response.Status() == StatusCode.StatusCode.Ok, response.Message()
    assert response.ResultType() == Result.Result.ValueResult
    result = ValueResult.ValueResult()
    result.Init(response.Result().Bytes, response.Result().Pos)
    value = bytes(result.Value(i) for i in range(result.ValueLength()))
    print("get greeting:", value.decode(), "(version %d)" % result.Version())
    assert value == b"hello from python"

    response = c.call(delete, Operation.Operation.Delete)
    assert response.Status() == StatusCode.StatusCode.Ok
    response = c.call(get, Operation.Operation.Get)
    assert response.Status() == StatusCode.StatusCode.NotFound
    print("after delete: not found:", response.Message().decode())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--schema", required=True)
    parser.add_argument("--target", default="127.0.0.1:7070")
    parser.add_argument("--logkvd", help="start this logkvd on a free port and use it")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="logkv-python-")
    server = None
    try:
        generate(args.schema, os.path.join(work, "generated"))
        host, port = args.target.rsplit(":", 1)
        if args.logkvd:
            server = subprocess.Popen(
                [args.logkvd, "--data_dir=" + os.path.join(work, "data"),
                 "--listen=127.0.0.1:0", "--http=127.0.0.1:0", "--threads=1"],
                stderr=subprocess.PIPE, text=True)
            for line in server.stderr:
                match = re.search(r"listening on ([0-9.]+):([0-9]+)", line)
                if match:
                    host, port = match.group(1), match.group(2)
                    break
            else:
                raise RuntimeError("logkvd did not start")
        run(host, int(port))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    print("python example: ok")


if __name__ == "__main__":
    main()
