"""A server with --auth=on: API keys from the HTTP API, refused and missing keys."""
import asyncio
import unittest

import harness
import logkv


class AuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server("--auth=on")
        cls.key, cls.token, _ = cls.server.api_key()

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def test_key_works(self):
        with logkv.Client(self.server.address, api_key=self.key) as kv:
            kv.put(b"mine", b"v")
            self.assertEqual(kv.get(b"mine").value, b"v")
            self.assertGreaterEqual(kv.stats().keys, 1)

    def test_no_key_is_unauthenticated(self):
        with logkv.Client(self.server.address) as kv:
            kv.ping()
            with self.assertRaises(logkv.UnauthenticatedError):
                kv.get(b"mine")
            with self.assertRaises(logkv.UnauthenticatedError):
                kv.put(b"mine", b"v")
            # auth() switches the client to a key.
            kv.auth(self.key)
            kv.put(b"later", b"v")

    def test_bad_key_is_refused_at_connect(self):
        with self.assertRaises(logkv.UnauthenticatedError):
            logkv.Client(self.server.address, api_key="ydht_" + "x" * 40)
        with logkv.Client(self.server.address, api_key=self.key) as kv:
            with self.assertRaises(logkv.UnauthenticatedError):
                kv.auth("not-a-key")

    def test_async_bad_key(self):
        async def run():
            with self.assertRaises(logkv.UnauthenticatedError):
                await logkv.AsyncClient(self.server.address, api_key="wrong").connect()
            kv = await logkv.AsyncClient(self.server.address, api_key=self.key).connect()
            await kv.put(b"async", b"v")
            self.assertEqual((await kv.get(b"async")).value, b"v")
            await kv.close()

        asyncio.run(run())

    def test_revoked_key_ends_watch(self):
        key, token, created = self.server.api_key("second@example.com", "second",
                                                  "client-test-pass-2")
        with logkv.Client(self.server.address, api_key=key) as kv:
            watch = kv.watch(b"w/")
            self.server.http("DELETE", "/apikeys/%s" % created["id"],
                             headers={"Authorization": "Bearer " + token})
            with self.assertRaises(logkv.UnauthenticatedError):
                for _ in range(60):
                    watch.poll(0.5)
            with self.assertRaises(logkv.UnauthenticatedError):
                kv.get(b"w/x")


if __name__ == "__main__":
    unittest.main()
