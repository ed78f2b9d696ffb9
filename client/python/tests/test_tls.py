"""The ssl option: both clients talk TLS to a logkvd serving it
(--tls-cert/--tls-key), verifying its certificate and name, and refuse one they
cannot verify; the same through a TLS-terminating proxy (TLS offloaded in
front of a plaintext logkvd)."""
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


class ServerTlsTest(unittest.TestCase):
    """logkvd itself serves TLS on its binary port."""

    @classmethod
    def setUpClass(cls):
        cls.dir = harness.tempfile.mkdtemp(prefix="logkv-server-tls-")
        cls.ca_file = harness.os.path.join(cls.dir, "cert.pem")
        key_file = harness.os.path.join(cls.dir, "key.pem")
        harness.subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", key_file, "-out", cls.ca_file],
            check=True, capture_output=True, timeout=60)
        cls.server = harness.Server("--tls-cert=" + cls.ca_file, "--tls-key=" + key_file)
        cls.context = ssl.create_default_context(cafile=cls.ca_file)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        harness.shutil.rmtree(cls.dir, ignore_errors=True)

    def test_sync_and_pipeline(self):
        with logkv.Client(self.server.address, ssl=self.context) as kv:
            value = bytes(range(256)) * 4096  # 1 MiB: many TLS records
            kv.put(b"server-tls/large", value)
            self.assertEqual(kv.get(b"server-tls/large").value, value)
            p = kv.pipeline()
            for i in range(2000):
                p.put(b"server-tls/%d" % i, b"v")
            self.assertEqual(len(p.execute()), 2000)
            self.assertEqual(kv.get(b"server-tls/1999").value, b"v")

    def test_async(self):
        async def run():
            async with logkv.AsyncClient(self.server.address, ssl=self.context) as kv:
                await kv.put(b"server-tls/b", b"secret")
                values = await asyncio.gather(*(kv.get(b"server-tls/b") for _ in range(500)))
                return {v.value for v in values}

        self.assertEqual(asyncio.run(run()), {b"secret"})

    def test_unverifiable_certificate_and_plaintext_are_refused(self):
        with self.assertRaisesRegex(logkv.UnavailableError, "CERTIFICATE_VERIFY_FAILED"):
            logkv.Client(self.server.address, ssl=ssl.create_default_context(), connect_timeout=2)
        # A plaintext client on the TLS port gets an answer, not a hang.
        with self.assertRaises(logkv.LogkvError):
            logkv.Client(self.server.address, connect_timeout=2, request_timeout=5).get(b"k")


if __name__ == "__main__":
    unittest.main()
