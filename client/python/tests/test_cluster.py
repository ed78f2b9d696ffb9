"""A 3-node cluster: keys go to their owners (the servers' placement), and
calls fail over to the other nodes when one is down."""
import asyncio
import time
import unittest

import harness
import logkv
from logkv.placement import Ring


class ClusterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()

    def test_hello_lists_members(self):
        with logkv.Client(self.cluster.nodes[0].address) as kv:
            members = kv.hello().members
        self.assertEqual(sorted(m.node_id for m in members), ["n0", "n1", "n2"])
        self.assertEqual({m.address for m in members},
                         {n.address for n in self.cluster.nodes})

    def test_keys_go_to_their_first_owner(self):
        nodes = self.cluster.nodes
        ring = Ring(["n0", "n1", "n2"])
        keys = [b"route/%d" % i for i in range(60)]
        expected = {n.node_id: 0 for n in nodes}
        for key in keys:
            expected[ring.preference_list(key, 1)[0]] += 1
        self.assertTrue(all(expected.values()), expected)  # every node owns some
        before = {n.node_id: n.protocol_requests("Put") for n in nodes}
        with logkv.Client(nodes[0].address) as kv:
            for key in keys:
                kv.put(key, b"v")
        after = {n.node_id: n.protocol_requests("Put") for n in nodes}
        self.assertEqual({k: after[k] - before[k] for k in after}, expected)
        # Without routing, everything goes to the node the client knows.
        before = after
        with logkv.Client(nodes[1].address, route_to_owners=False) as kv:
            for key in keys:
                kv.put(key, b"w")
        after = {n.node_id: n.protocol_requests("Put") for n in nodes}
        self.assertEqual({k: after[k] - before[k] for k in after},
                         {"n0": 0, "n1": len(keys), "n2": 0})

    def test_async_routes_too(self):
        nodes = self.cluster.nodes
        ring = Ring(["n0", "n1", "n2"])
        keys = [b"aroute/%d" % i for i in range(30)]
        before = {n.node_id: n.protocol_requests("Get") for n in nodes}

        async def run():
            kv = await logkv.AsyncClient(nodes[2].address).connect()
            await asyncio.gather(*(kv.put(k, b"v") for k in keys))
            values = await asyncio.gather(*(kv.get(k) for k in keys))
            await kv.close()
            return values

        values = asyncio.run(run())
        self.assertTrue(all(v.value == b"v" for v in values))
        after = {n.node_id: n.protocol_requests("Get") for n in nodes}
        expected = {n.node_id: 0 for n in nodes}
        for key in keys:
            expected[ring.preference_list(key, 1)[0]] += 1
        self.assertEqual({k: after[k] - before[k] for k in after}, expected)

    def expected_counts(self, keys):
        ring = Ring(["n0", "n1", "n2"])
        expected = {n.node_id: 0 for n in self.cluster.nodes}
        for key in keys:
            expected[ring.preference_list(key, 1)[0]] += 1
        self.assertTrue(all(expected.values()), expected)  # every node owns some
        return expected

    def requests(self, kind):
        return {n.node_id: n.protocol_requests(kind) for n in self.cluster.nodes}

    def test_pipeline_routes_each_key(self):
        keys = [b"proute/%d" % i for i in range(90)]
        expected = self.expected_counts(keys)
        puts, gets = self.requests("Put"), self.requests("Get")
        with logkv.Client(self.cluster.nodes[0].address) as kv:
            with kv.pipeline() as p:
                for key in keys:
                    p.put(key, b"value of " + key)
                writes = p.execute()
            with kv.pipeline() as p:
                for key in keys:
                    p.get(key)
                p.get(b"proute/absent")
                values = p.execute()
        self.assertTrue(all(isinstance(w, logkv.WriteResult) for w in writes))
        self.assertEqual([v.value for v in values[:-1]], [b"value of " + k for k in keys])
        self.assertIsNone(values[-1])
        after_puts, after_gets = self.requests("Put"), self.requests("Get")
        self.assertEqual({k: after_puts[k] - puts[k] for k in puts}, expected)
        expected[Ring(["n0", "n1", "n2"]).preference_list(b"proute/absent", 1)[0]] += 1
        self.assertEqual({k: after_gets[k] - gets[k] for k in gets}, expected)

    def test_async_pipeline_routes_each_key(self):
        keys = [b"aproute/%d" % i for i in range(90)]
        expected = self.expected_counts(keys)
        puts, gets = self.requests("Put"), self.requests("Get")

        async def run():
            kv = await logkv.AsyncClient(self.cluster.nodes[1].address).connect()
            p = kv.pipeline()
            for key in keys:
                p.put(key, b"value of " + key)
            writes = await p.execute()
            for key in keys:
                p.get(key)
            values = await p.execute()
            await kv.close()
            return writes, values

        writes, values = asyncio.run(run())
        self.assertTrue(all(isinstance(w, logkv.WriteResult) for w in writes))
        self.assertEqual([v.value for v in values], [b"value of " + k for k in keys])
        after_puts, after_gets = self.requests("Put"), self.requests("Get")
        self.assertEqual({k: after_puts[k] - puts[k] for k in puts}, expected)
        self.assertEqual({k: after_gets[k] - gets[k] for k in gets}, expected)


class TenantPlacementTest(unittest.TestCase):
    """With --auth=on the servers place a key under its tenant's prefix
    (placement::PlacementKey); the client learns the prefix from Hello and
    routes each key to the owner of prefix + key."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, flags=("--auth=on", "--rate-limit=0"))
        cls.key, _, _ = cls.cluster.nodes[0].api_key()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()

    def connect(self, node):
        # A key made on n0 reaches the other nodes with the next apply round.
        deadline = time.monotonic() + 10
        while True:
            try:
                return logkv.Client(node.address, api_key=self.key)
            except logkv.UnauthenticatedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def test_keys_go_to_the_owner_of_their_placement_key(self):
        nodes = self.cluster.nodes
        with self.connect(nodes[1]) as kv:
            prefix = kv.hello().key_prefix
            self.assertTrue(prefix)
            ring = Ring(["n0", "n1", "n2"])
            keys = [b"tenant/%d" % i for i in range(60)]
            expected = {n.node_id: 0 for n in nodes}
            for key in keys:
                expected[ring.preference_list(prefix + key, 1)[0]] += 1
            self.assertTrue(all(expected.values()), expected)
            before = {n.node_id: n.protocol_requests("Put") for n in nodes}
            for key in keys:
                kv.put(key, b"v")
            after = {n.node_id: n.protocol_requests("Put") for n in nodes}
            self.assertEqual({k: after[k] - before[k] for k in after}, expected)
            self.assertEqual(kv.get(keys[0]).value, b"v")


class FailoverTest(unittest.TestCase):
    def test_a_dead_node_is_skipped(self):
        cluster = harness.Cluster(3)
        try:
            nodes = cluster.nodes
            addresses = ",".join(n.address for n in nodes)
            ring = Ring(["n0", "n1", "n2"])
            keys = [b"fo/%d" % i for i in range(40)]
            kv = logkv.Client(addresses, connect_timeout=1, request_timeout=10)
            akv = None
            for key in keys:
                kv.put(key, b"v1")
            nodes[1].stop(kill=True)
            # Keys n1 owned are written and read through the other nodes.
            owned = [k for k in keys if ring.preference_list(k, 1)[0] == "n1"]
            self.assertTrue(owned)
            for key in keys:
                kv.put(key, b"v2")
            for key in keys:
                self.assertEqual(kv.get(key).value, b"v2")

            async def run():
                client = await logkv.AsyncClient(addresses, connect_timeout=1).connect()
                got = await asyncio.gather(*(client.get(k) for k in owned))
                await client.close()
                return got

            self.assertTrue(all(v.value == b"v2" for v in asyncio.run(run())))
            # Pipelines too: the dead node's share goes to the others.
            with kv.pipeline() as p:
                for key in keys:
                    p.put(key, b"v3")
                self.assertTrue(all(isinstance(w, logkv.WriteResult) for w in p.execute()))
                for key in keys:
                    p.get(key)
                self.assertEqual([v.value for v in p.execute()], [b"v3"] * len(keys))

            async def run_pipeline():
                client = await logkv.AsyncClient(addresses, connect_timeout=1).connect()
                p = client.pipeline()
                for key in keys:
                    p.get(key)
                got = await p.execute()
                await client.close()
                return got

            self.assertEqual([v.value for v in asyncio.run(run_pipeline())],
                             [b"v3"] * len(keys))
            kv.close()
            del akv
        finally:
            cluster.close()


if __name__ == "__main__":
    unittest.main()
