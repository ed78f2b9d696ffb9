"""The sync Client against a real logkvd: every operation, pipelining,
pooling across threads, timeouts, reconnects and watch resumption."""
import threading
import time
import unittest

import harness
import logkv


class SyncClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def setUp(self):
        self.kv = logkv.Client(self.server.address, request_timeout=20)

    def tearDown(self):
        self.kv.close()

    def test_put_get_delete(self):
        kv = self.kv
        written = kv.put(b"s/a", b"1")
        self.assertGreater(written.version, 0)
        value = kv.get("s/a")
        self.assertEqual((value.value, value.version), (b"1", written.version))
        self.assertIsNone(kv.get(b"s/absent"))
        self.assertIsNotNone(kv.delete(b"s/a"))
        self.assertIsNone(kv.delete(b"s/a"))
        self.assertIsNone(kv.get(b"s/a"))
        kv.ping(b"x")

    def test_ttl_sets_an_expiry(self):
        self.kv.put(b"s/ttl", b"v", ttl_ms=3_600_000)
        value = self.kv.get(b"s/ttl")
        self.assertGreater(value.expiry_unix_ms, int(time.time() * 1000))
        with self.assertRaises(ValueError):
            self.kv.put(b"s/ttl", b"v", ttl_ms=-1)

    def test_compare_and_set(self):
        kv = self.kv
        first = kv.put(b"s/cas", b"1", if_version=0)  # must be absent
        with self.assertRaises(logkv.FailedPreconditionError):
            kv.put(b"s/cas", b"x", if_version=0)
        second = kv.put(b"s/cas", b"2", if_version=first.version)
        with self.assertRaises(logkv.FailedPreconditionError):
            kv.delete(b"s/cas", if_version=first.version)
        self.assertIsNotNone(kv.delete(b"s/cas", if_version=second.version))

    def test_get_version(self):
        one = self.kv.put(b"s/ver", b"one")
        self.kv.put(b"s/ver", b"two")
        self.assertEqual(self.kv.get_version(b"s/ver", one.version).value, b"one")
        self.assertIsNone(self.kv.get_version(b"s/ver", 999))

    def test_batch(self):
        results = self.kv.batch([logkv.BatchOp(b"b/1", b"x"), (b"b/2", b"y"),
                                 logkv.BatchOp(b"b/3", None)])
        self.assertEqual([r.ok for r in results], [True, True, False])
        self.assertIsInstance(results[2].error(), logkv.NotFoundError)
        self.assertEqual(self.kv.get(b"b/2").value, b"y")

    def test_scan_pages(self):
        for i in range(25):
            self.kv.put(b"scan/%02d" % i, b"v%d" % i)
        pages = list(self.kv.scan(prefix=b"scan/", limit=10))
        self.assertEqual([len(p.items) for p in pages], [10, 10, 5])
        keys = [item.key for page in pages for item in page.items]
        self.assertEqual(keys, [b"scan/%02d" % i for i in range(25)])
        self.assertEqual(pages[0].items[3].value.value, b"v3")
        only = list(self.kv.scan(prefix=b"scan/", keys_only=True))
        self.assertEqual(only[0].items[0].value.value, b"")
        ranged = [i.key for p in self.kv.scan(start_key=b"scan/05", end_key=b"scan/08")
                  for i in p.items]
        self.assertEqual(ranged, [b"scan/05", b"scan/06", b"scan/07"])

    def test_stats_and_hello(self):
        self.kv.put(b"s/stat", b"v")
        stats = self.kv.stats()
        self.assertGreaterEqual(stats.keys, 1)
        self.assertEqual(stats.shard_count, len(stats.last_sequences))
        hello = self.kv.hello()
        self.assertEqual(hello.protocol_version, 1)
        self.assertEqual(hello.shard_count, 2)
        self.assertEqual(hello.members, [])

    def test_errors_are_typed(self):
        with self.assertRaises(logkv.InvalidArgumentError):
            self.kv.put(b"", b"v")
        with self.assertRaises(logkv.InvalidArgumentError):
            self.kv.get(b"k" * 5000)

    def test_large_value(self):
        value = bytes(range(256)) * 4096  # 1 MiB
        self.kv.put(b"s/large", value)
        self.assertEqual(self.kv.get(b"s/large").value, value)

    def test_pipeline_of_10000(self):
        with self.kv.pipeline() as p:
            for i in range(10_000):
                p.put(b"pipe/%05d" % i, b"v%d" % i)
            writes = p.execute()
        self.assertEqual(len(writes), 10_000)
        self.assertTrue(all(isinstance(w, logkv.WriteResult) for w in writes))
        p = self.kv.pipeline()
        for i in range(10_000):
            p.get(b"pipe/%05d" % i)
        p.get(b"pipe/absent")
        values = p.execute()
        self.assertEqual([v.value for v in values[:-1]], [b"v%d" % i for i in range(10_000)])
        self.assertIsNone(values[-1])
        p.put(b"", b"bad")
        p.put(b"pipe/ok", b"fine")
        mixed = p.execute(raise_on_error=False)
        self.assertIsInstance(mixed[0], logkv.InvalidArgumentError)
        self.assertIsInstance(mixed[1], logkv.WriteResult)

    def test_threads_share_the_pool(self):
        errors = []

        def work(n):
            try:
                for i in range(200):
                    self.kv.put(b"t/%d/%d" % (n, i), b"v")
                    assert self.kv.get(b"t/%d/%d" % (n, i)).value == b"v"
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])

    def test_watch(self):
        with self.kv.watch(b"w/") as watch:
            self.kv.put(b"w/a", b"1")
            self.kv.put(b"other", b"x")
            self.kv.delete(b"w/a")
            events = collect(watch, 2)
        self.assertEqual([(e.type, e.key) for e in events], [("put", b"w/a"), ("delete", b"w/a")])
        self.assertEqual(events[0].value, b"1")


def collect(watch, count, timeout=30.0):
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        events += watch.poll(0.5)
    return events


class ExamplesTest(unittest.TestCase):
    def test_examples_run(self):
        import os
        import subprocess
        import sys
        here = os.path.dirname(os.path.abspath(__file__))
        server = harness.Server()
        try:
            for name in ("quickstart.py", "async_quickstart.py"):
                done = subprocess.run([sys.executable, os.path.join(here, "..", "examples", name),
                                       server.address], capture_output=True, text=True,
                                      timeout=120)
                self.assertEqual(done.returncode, 0, done.stderr)
                self.assertIn("event delete", done.stdout)
        finally:
            server.close()


class RestartTest(unittest.TestCase):
    """A server restarted on the same port and data: calls and watches go on."""

    def test_reconnect_and_watch_resume(self):
        server = harness.Server()
        try:
            kv = logkv.Client(server.address, connect_timeout=1)
            watch = kv.watch(b"r/")
            kv.put(b"r/1", b"before")
            self.assertEqual([e.key for e in collect(watch, 1)], [b"r/1"])
            server.restart()
            # The pooled connection is dead: the next call notices and reconnects.
            self.assertEqual(kv.get(b"r/1").value, b"before")
            kv.put(b"r/2", b"after")
            kv.put(b"r/3", b"after")
            events = collect(watch, 2)
            self.assertEqual([e.key for e in events], [b"r/2", b"r/3"])
            self.assertGreaterEqual(watch.reconnects, 1)
            # Down: calls fail with UnavailableError, quickly and typed.
            server.stop()
            with self.assertRaises(logkv.UnavailableError):
                kv.get(b"r/1")
            watch.close()
            kv.close()
        finally:
            server.close()

    def test_connect_refused(self):
        server = harness.Server()
        address = server.address
        server.close()
        with self.assertRaises(logkv.UnavailableError):
            logkv.Client(address, connect_timeout=1)


if __name__ == "__main__":
    unittest.main()
