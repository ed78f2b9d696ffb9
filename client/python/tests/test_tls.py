"""The ssl option (the TLS hook): logkvd has no TLS yet, so a TLS-terminating
proxy stands in front of it; both clients talk TLS to it, verifying its
certificate, and refuse one they cannot verify."""
import asyncio
import ssl
import unittest

import harness
import logkv


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server()
        cls.proxy = harness.TlsProxy(cls.server.port)
        cls.context = ssl.create_default_context(cafile=cls.proxy.ca_file)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.close()
        cls.server.close()

    def test_sync_over_tls(self):
        with logkv.Client(self.proxy.address, ssl=self.context) as kv:
            kv.put(b"tls/a", b"secret")
            self.assertEqual(kv.get(b"tls/a").value, b"secret")
            value = bytes(range(256)) * 1024  # spans many TLS records
            kv.put(b"tls/large", value)
            self.assertEqual(kv.get(b"tls/large").value, value)
            p = kv.pipeline()
            for i in range(2000):
                p.put(b"tls/%d" % i, b"v")
            self.assertEqual(len(p.execute()), 2000)

    def test_async_over_tls(self):
        async def run():
            async with logkv.AsyncClient(self.proxy.address, ssl=self.context) as kv:
                await kv.put(b"tls/b", b"secret")
                values = await asyncio.gather(*(kv.get(b"tls/b") for _ in range(500)))
                return {v.value for v in values}

        self.assertEqual(asyncio.run(run()), {b"secret"})

    def test_unverifiable_certificate_is_refused(self):
        with self.assertRaisesRegex(logkv.UnavailableError, "CERTIFICATE_VERIFY_FAILED"):
            logkv.Client(self.proxy.address, ssl=ssl.create_default_context(), connect_timeout=2)

        async def run():
            await logkv.AsyncClient(self.proxy.address, ssl=ssl.create_default_context(),
                                    connect_timeout=2).connect()

        with self.assertRaisesRegex(logkv.UnavailableError, "CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(run())


if __name__ == "__main__":
    unittest.main()
