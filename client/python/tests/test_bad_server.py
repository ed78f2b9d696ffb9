"""Servers that do not speak the protocol, or break it mid-way: every case
ends in a typed error within the timeouts, never a hang or a stray exception."""
import asyncio
import os
import struct
import time
import unittest

import fakes
import harness
import logkv


def garbage(sock):
    sock.recv(1024)
    sock.sendall(os.urandom(64))
    time.sleep(1)


def http_answer(sock):
    sock.recv(1024)
    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    time.sleep(1)


def huge_length(sock):
    sock.recv(1024)
    sock.sendall(struct.pack("<I", 0xFFFFFFF0) + b"x" * 16)
    time.sleep(1)


def close_at_once(sock):
    pass


def hello_then(after):
    def handler(sock):
        fakes.answer_hello(sock)
        request = fakes.read_frame(sock)
        after(sock, request)
        time.sleep(1)
    return handler


def bad_frame_after_hello(sock, request):
    sock.sendall(struct.pack("<I", 12) + b"\x00" * 4 + b"\xff" * 8)


def no_result(sock, request):
    sock.sendall(fakes.status_answer(request.RequestId()))  # Ok, but no ValueResult


def connection_error(sock, request):
    sock.sendall(fakes.status_answer(0, 2, "malformed frame"))


def truncated(sock, request):
    frame = fakes.status_answer(request.RequestId(), 1)
    sock.sendall(frame[:len(frame) - 3])


def unknown_status(sock, request):
    sock.sendall(fakes.status_answer(request.RequestId(), 77, "from the future"))


CASES = [
    ("garbage", garbage, logkv.UnavailableError),
    ("http", http_answer, logkv.UnavailableError),
    ("huge length", huge_length, logkv.UnavailableError),
    ("closes", close_at_once, logkv.UnavailableError),
]

AFTER_HELLO = [
    ("bad frame", bad_frame_after_hello, logkv.UnavailableError),
    ("no result", no_result, logkv.ProtocolError),
    ("connection error", connection_error, logkv.InvalidArgumentError),
    ("truncated", truncated, logkv.DeadlineExceededError),
    ("unknown status", unknown_status, logkv.InternalError),
]


class BadServerTest(unittest.TestCase):
    def test_bad_hello(self):
        for name, handler, error in CASES:
            with self.subTest(name):
                server = harness.FakeServer(handler)
                try:
                    with self.assertRaises(error):
                        logkv.Client(server.address, connect_timeout=0.5, request_timeout=0.5)

                    async def run():
                        await logkv.AsyncClient(server.address, connect_timeout=0.5,
                                                request_timeout=0.5).connect()

                    with self.assertRaises(error):
                        asyncio.run(run())
                finally:
                    server.close()

    def test_bad_answers(self):
        for name, handler, error in AFTER_HELLO:
            with self.subTest(name):
                server = harness.FakeServer(hello_then(handler))
                try:
                    kv = logkv.Client(server.address, request_timeout=0.5, read_retries=0)
                    with self.assertRaises(error):
                        kv.get(b"k")
                    kv.close()

                    async def run():
                        client = await logkv.AsyncClient(server.address, request_timeout=0.5,
                                                         read_retries=0).connect()
                        try:
                            await client.get(b"k")
                        finally:
                            await client.close()

                    with self.assertRaises(error):
                        asyncio.run(run())
                finally:
                    server.close()


if __name__ == "__main__":
    unittest.main()
