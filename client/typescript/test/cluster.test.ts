// A 3-node cluster: keys go to their owners (the servers' placement), and
// calls fail over to the other nodes when one is down.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client, Ring } from '../src/index.js';
import { Cluster } from './harness.js';

let cluster: Cluster;

before(async () => {
  cluster = await Cluster.start(3);
});

after(async () => {
  await cluster?.close();
});

async function counts(operation: string) {
  const out: Record<string, number> = {};
  for (const node of cluster.nodes) out[node.nodeId!] = await node.protocolRequests(operation);
  return out;
}

/** How many of keys each node owns first, by the placement the servers use. */
function firstOwners(keys: string[]): Record<string, number> {
  const ring = new Ring(['n0', 'n1', 'n2']);
  const expected: Record<string, number> = { n0: 0, n1: 0, n2: 0 };
  for (const key of keys) expected[ring.preferenceList(Buffer.from(key), 1)[0]]++;
  assert.ok(Object.values(expected).every((n) => n > 0));
  return expected;
}

test('hello lists the members', async () => {
  const kv = await Client.connect({ nodes: [cluster.nodes[0].address] });
  const members = (await kv.hello()).members;
  assert.deepEqual(members.map((m) => m.nodeId).sort(), ['n0', 'n1', 'n2']);
  assert.deepEqual(new Set(members.map((m) => m.address)),
                   new Set(cluster.nodes.map((n) => n.address)));
  await kv.close();
});

test('keys go to their first owner', async () => {
  const keys = Array.from({ length: 60 }, (_, i) => `route/${i}`);
  const expected = firstOwners(keys);
  let before = await counts('Put');
  const kv = await Client.connect({ nodes: [cluster.nodes[0].address] });
  await Promise.all(keys.map((k) => kv.put(k, 'v')));
  let now = await counts('Put');
  assert.deepEqual(Object.fromEntries(Object.keys(now).map((k) => [k, now[k] - before[k]])), expected);
  before = await counts('Get');
  const values = await Promise.all(keys.map((k) => kv.get(k)));
  assert.ok(values.every((v) => v?.value.toString() === 'v'));
  now = await counts('Get');
  assert.deepEqual(Object.fromEntries(Object.keys(now).map((k) => [k, now[k] - before[k]])), expected);
  await kv.close();
  // Without routing everything goes to the node the client knows.
  before = await counts('Put');
  const plain = await Client.connect({ nodes: [cluster.nodes[1].address], routeToOwners: false });
  await Promise.all(keys.map((k) => plain.put(k, 'w')));
  now = await counts('Put');
  assert.deepEqual(Object.fromEntries(Object.keys(now).map((k) => [k, now[k] - before[k]])),
                   { n0: 0, n1: keys.length, n2: 0 });
  await plain.close();
});

test('a pipeline routes each key to its owner, results in order', async () => {
  const keys = Array.from({ length: 90 }, (_, i) => `proute/${i}`);
  const expected = firstOwners(keys);
  const diff = (a: Record<string, number>, b: Record<string, number>) =>
    Object.fromEntries(Object.keys(a).map((k) => [k, a[k] - b[k]]));
  const puts = await counts('Put');
  const gets = await counts('Get');
  const kv = await Client.connect({ nodes: [cluster.nodes[2].address] });
  const p = kv.pipeline();
  for (const key of keys) p.put(key, `value of ${key}`);
  const writes = await p.exec();
  assert.equal(writes.length, keys.length);
  for (const key of keys) p.get(key);
  const values = await p.exec() as Array<{ value: Buffer } | null>;
  assert.deepEqual(values.map((v) => v?.value.toString()), keys.map((k) => `value of ${k}`));
  assert.deepEqual(diff(await counts('Put'), puts), expected);
  assert.deepEqual(diff(await counts('Get'), gets), expected);
  await kv.close();
});

test('a dead node is skipped', async () => {
  const own = await Cluster.start(3);
  try {
    const ring = new Ring(['n0', 'n1', 'n2']);
    const keys = Array.from({ length: 40 }, (_, i) => `fo/${i}`);
    const kv = await Client.connect({ nodes: own.nodes.map((n) => n.address),
                                      connectTimeoutMs: 1000 });
    await Promise.all(keys.map((k) => kv.put(k, 'v1')));
    await own.nodes[1].stop('SIGKILL');
    assert.ok(keys.some((k) => ring.preferenceList(Buffer.from(k), 1)[0] === 'n1'));
    for (const key of keys) await kv.put(key, 'v2');
    const values = await Promise.all(keys.map((k) => kv.get(k)));
    assert.ok(values.every((v) => v?.value.toString() === 'v2'));
    // Pipelines too: the dead node's share goes to the others.
    const p = kv.pipeline();
    for (const key of keys) p.put(key, 'v3');
    assert.equal((await p.exec()).length, keys.length);
    for (const key of keys) p.get(key);
    const got = await p.exec() as Array<{ value: Buffer } | null>;
    assert.ok(got.every((v) => v?.value.toString() === 'v3'));
    await kv.close();
  } finally {
    await own.close();
  }
});

// With --auth=on the servers place a key under its tenant's prefix
// (placement::PlacementKey); the client learns the prefix from Hello and
// sends each key to the owner of prefix + key.
test('keys go to the owner of their placement key (tenant prefix)', async () => {
  const auth = await Cluster.start(3, ['--auth=on', '--rate-limit=0']);
  try {
    const { key } = await auth.nodes[0].apiKey();
    // A key made on n0 reaches the other nodes with the next apply round.
    let kv: Client | undefined;
    for (const deadline = Date.now() + 10000; kv === undefined;) {
      try {
        kv = await Client.connect({ nodes: [auth.nodes[1].address], apiKey: key });
      } catch (error) {
        if (Date.now() >= deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    const prefix = (await kv.hello()).keyPrefix;
    assert.ok(prefix.length > 0);
    const ring = new Ring(['n0', 'n1', 'n2']);
    const keys = Array.from({ length: 60 }, (_, i) => `tenant/${i}`);
    const expected: Record<string, number> = { n0: 0, n1: 0, n2: 0 };
    for (const k of keys) {
      expected[ring.preferenceList(Buffer.concat([prefix, Buffer.from(k)]), 1)[0]]++;
    }
    assert.ok(Object.values(expected).every((n) => n > 0));
    const before: Record<string, number> = {};
    for (const node of auth.nodes) before[node.nodeId!] = await node.protocolRequests('Put');
    for (const k of keys) await kv.put(k, 'v');
    const after: Record<string, number> = {};
    for (const node of auth.nodes) {
      after[node.nodeId!] = (await node.protocolRequests('Put')) - before[node.nodeId!];
    }
    assert.deepEqual(after, expected);
    assert.equal((await kv.get(keys[0]))?.value.toString(), 'v');
    await kv.close();
  } finally {
    await auth.close();
  }
});
