"""The asyncio AsyncClient against a real logkvd."""
import asyncio
import time
import unittest

import harness
import logkv


class AsyncClientTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    async def asyncSetUp(self):
        # unittest runs the loop in debug mode; 10,000 calls in one gather are not "slow".
        asyncio.get_running_loop().slow_callback_duration = 60
        self.kv = await logkv.AsyncClient(self.server.address, request_timeout=30).connect()

    async def asyncTearDown(self):
        await self.kv.close()

    async def test_operations(self):
        kv = self.kv
        written = await kv.put(b"a/1", b"one", ttl_ms=3_600_000)
        value = await kv.get(b"a/1")
        self.assertEqual((value.value, value.version), (b"one", written.version))
        self.assertGreater(value.expiry_unix_ms, 0)
        self.assertIsNone(await kv.get(b"a/absent"))
        with self.assertRaises(logkv.FailedPreconditionError):
            await kv.put(b"a/1", b"two", if_version=written.version + 5)
        second = await kv.put(b"a/1", b"two", if_version=written.version)
        self.assertEqual((await kv.get_version(b"a/1", written.version)).value, b"one")
        self.assertIsNotNone(await kv.delete(b"a/1", if_version=second.version))
        self.assertIsNone(await kv.delete(b"a/1"))
        results = await kv.batch([(b"a/b1", b"x"), (b"a/b2", None)])
        self.assertEqual([r.status for r in results], [0, 1])
        stats = await kv.stats()
        self.assertEqual(len(stats.last_sequences), stats.shard_count)
        self.assertEqual((await kv.hello()).protocol_version, 1)
        await kv.ping()
        with self.assertRaises(logkv.InvalidArgumentError):
            await kv.put(b"", b"v")

    async def test_scan_async_iterator(self):
        await asyncio.gather(*(self.kv.put(b"as/%02d" % i, b"v") for i in range(23)))
        sizes, keys = [], []
        async for page in self.kv.scan(prefix=b"as/", limit=10):
            sizes.append(len(page.items))
            keys += [item.key for item in page.items]
        self.assertEqual(sizes, [10, 10, 3])
        self.assertEqual(keys, [b"as/%02d" % i for i in range(23)])

    async def test_10000_pipelined(self):
        kv = self.kv
        writes = await asyncio.gather(*(kv.put(b"ap/%05d" % i, b"v%d" % i)
                                        for i in range(10_000)))
        self.assertEqual(len({(w.shard, w.sequence) for w in writes}), 10_000)
        values = await asyncio.gather(*(kv.get(b"ap/%05d" % i) for i in range(10_000)))
        self.assertEqual([v.value for v in values], [b"v%d" % i for i in range(10_000)])

    async def test_pipeline(self):
        p = self.kv.pipeline()
        for i in range(10_000):
            p.put(b"apl/%05d" % i, b"v%d" % i)
        self.assertEqual(len(await p.execute()), 10_000)
        for i in range(10_000):
            p.get(b"apl/%05d" % i)
        p.get(b"apl/absent")
        values = await p.execute()
        self.assertEqual([v.value for v in values[:-1]], [b"v%d" % i for i in range(10_000)])
        self.assertIsNone(values[-1])
        p.put(b"", b"bad").delete(b"apl/00001")
        mixed = await p.execute(raise_on_error=False)
        self.assertIsInstance(mixed[0], logkv.InvalidArgumentError)
        self.assertIsInstance(mixed[1], logkv.WriteResult)

    async def test_backpressure_bounds_a_long_pipeline(self):
        """100,000 requests in one pipeline and as many gathered calls: the
        connection never has more than max_in_flight awaiting answers, and its
        write buffer stays near the transport's high-water mark plus one
        window of frames instead of holding the whole pipeline."""
        limit = 500
        kv = await logkv.AsyncClient(self.server.address, request_timeout=60, pool_size=1,
                                     max_in_flight=limit).connect()
        try:
            count = 100_000
            p = kv.pipeline()
            for i in range(count):
                p.put(b"bp/%06d" % i, b"v")
            writes = await p.execute()
            self.assertEqual(len(writes), count)
            self.assertTrue(all(isinstance(w, logkv.WriteResult) for w in writes))
            conn = kv._pools[logkv._common.parse_node(self.server.address)][0]
            self.assertEqual(conn.peak_in_flight, limit)
            frame_bytes = len(logkv._codec.put(1 << 40, b"bp/000000", b"v"))
            # 64 KiB: asyncio's default high-water mark of a transport.
            self.assertLessEqual(conn.peak_write_buffer, 64 * 1024 + limit * frame_bytes)
            self.assertLess(conn.peak_write_buffer, count * frame_bytes // 10)
            values = await asyncio.gather(*(kv.get(b"bp/%06d" % i) for i in range(0, count, 5)))
            self.assertTrue(all(v.value == b"v" for v in values))
            self.assertEqual(conn.peak_in_flight, limit)
        finally:
            await kv.close()

    async def test_large_value(self):
        value = bytes(range(256)) * 4096
        await self.kv.put(b"a/large", value)
        self.assertEqual((await self.kv.get(b"a/large")).value, value)

    async def test_watch(self):
        watch = self.kv.watch(b"aw/")
        await watch.start()
        await self.kv.put(b"aw/x", b"1")
        await self.kv.delete(b"aw/x")
        events = await take(watch, 2)
        self.assertEqual([(e.type, e.key) for e in events], [("put", b"aw/x"),
                                                            ("delete", b"aw/x")])
        await watch.close()


async def take(watch, count, timeout=30.0):
    events = []

    async def run():
        async for event in watch:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(run(), timeout)
    return events


class AsyncRestartTest(unittest.IsolatedAsyncioTestCase):
    async def test_reconnect_and_watch_resume(self):
        server = harness.Server()
        try:
            kv = await logkv.AsyncClient(server.address, connect_timeout=1).connect()
            watch = await kv.watch(b"ar/").start()
            iterator = watch.__aiter__()
            await kv.put(b"ar/1", b"before")
            first = await asyncio.wait_for(iterator.__anext__(), 30)
            self.assertEqual(first.key, b"ar/1")
            await asyncio.get_running_loop().run_in_executor(None, server.restart)
            self.assertEqual((await kv.get(b"ar/1")).value, b"before")
            await kv.put(b"ar/2", b"after")
            second = await asyncio.wait_for(iterator.__anext__(), 30)
            self.assertEqual((second.key, second.value), (b"ar/2", b"after"))
            self.assertEqual(watch.reconnects, 1)
            await watch.close()
            await kv.close()
        finally:
            server.close()

    async def test_timeout_on_a_silent_server(self):
        hello_then_silence = harness.FakeServer(fake_hello_then_silence)
        try:
            kv = await logkv.AsyncClient(hello_then_silence.address,
                                         request_timeout=0.3).connect()
            with self.assertRaises(logkv.DeadlineExceededError):
                await kv.get(b"k")
            await kv.close()
        finally:
            hello_then_silence.close()


def fake_hello_then_silence(sock):
    import fakes
    fakes.answer_hello(sock)
    time.sleep(3)


if __name__ == "__main__":
    unittest.main()
