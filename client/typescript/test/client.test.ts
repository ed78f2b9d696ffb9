// The Client against a real logkvd: every operation, 10,000 pipelined calls,
// a large value, watches, restarts (reconnect and watch resumption), timeouts.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  Client, DeadlineExceededError, Event, FailedPreconditionError, InvalidArgumentError,
  NotFoundError, UnavailableError, Watch,
} from '../src/index.js';
import { helloAnswer, onRequests } from './fakes.js';
import { FakeServer, Server } from './harness.js';

let server: Server;
let kv: Client;

before(async () => {
  server = await Server.start();
  kv = await Client.connect({ nodes: [server.address], requestTimeoutMs: 30000 });
});

after(async () => {
  await kv?.close();
  await server?.close();
});

async function take(iterator: AsyncIterator<Event>, count: number, timeoutMs = 30000) {
  const events: Event[] = [];
  const deadline = setTimeout(() => {}, timeoutMs);
  try {
    while (events.length < count) {
      const next = await Promise.race([
        iterator.next(),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no event in time')),
                                                     timeoutMs).unref()),
      ]);
      if (next.done) break;
      events.push(next.value);
    }
  } finally {
    clearTimeout(deadline);
  }
  return events;
}

test('put, get, delete, ping', async () => {
  const written = await kv.put('s/a', '1');
  assert.ok(written.version > 0n);
  const value = await kv.get('s/a');
  assert.equal(value?.value.toString(), '1');
  assert.equal(value?.version, written.version);
  assert.equal(await kv.get('s/absent'), null);
  assert.notEqual(await kv.delete('s/a'), null);
  assert.equal(await kv.delete('s/a'), null);
  await kv.ping();
});

test('ttl', async () => {
  await kv.put('s/ttl', 'v', { ttlMs: 3_600_000 });
  assert.ok((await kv.get('s/ttl'))!.expiryUnixMs > Date.now());
  await assert.rejects(kv.put('s/ttl', 'v', { ttlMs: -1 }), RangeError);
});

test('compare-and-set', async () => {
  const first = await kv.put('s/cas', '1', { ifVersion: 0n });
  await assert.rejects(kv.put('s/cas', 'x', { ifVersion: 0n }), FailedPreconditionError);
  const second = await kv.put('s/cas', '2', { ifVersion: first.version });
  await assert.rejects(kv.delete('s/cas', { ifVersion: first.version }), FailedPreconditionError);
  assert.notEqual(await kv.delete('s/cas', { ifVersion: second.version }), null);
});

test('getVersion', async () => {
  const one = await kv.put('s/ver', 'one');
  await kv.put('s/ver', 'two');
  assert.equal((await kv.getVersion('s/ver', one.version))?.value.toString(), 'one');
  assert.equal(await kv.getVersion('s/ver', 999n), null);
});

test('batch', async () => {
  const results = await kv.batch([{ key: 'b/1', value: 'x' }, { key: 'b/2', value: 'y' },
                                  { key: 'b/3' }]);
  assert.deepEqual(results.map((r) => r.ok), [true, true, false]);
  assert.ok(results[2].error instanceof NotFoundError);
  assert.equal((await kv.get('b/2'))?.value.toString(), 'y');
});

test('scan pages (async iterator)', async () => {
  await Promise.all(Array.from({ length: 25 }, (_, i) => kv.put(`scan/${String(i).padStart(2, '0')}`, `v${i}`)));
  const sizes: number[] = [];
  const keys: string[] = [];
  for await (const page of kv.scan({ prefix: 'scan/', limit: 10 })) {
    sizes.push(page.items.length);
    keys.push(...page.items.map((i) => i.key.toString()));
  }
  assert.deepEqual(sizes, [10, 10, 5]);
  assert.deepEqual(keys, Array.from({ length: 25 }, (_, i) => `scan/${String(i).padStart(2, '0')}`));
  const ranged: string[] = [];
  for await (const page of kv.scan({ startKey: 'scan/05', endKey: 'scan/08', keysOnly: true })) {
    ranged.push(...page.items.map((i) => i.key.toString()));
    assert.equal(page.items[0].value.value.length, 0);
  }
  assert.deepEqual(ranged, ['scan/05', 'scan/06', 'scan/07']);
});

test('stats and hello', async () => {
  await kv.put('s/stat', 'v');
  const stats = await kv.stats();
  assert.ok(stats.keys >= 1n);
  assert.equal(stats.lastSequences.length, stats.shardCount);
  const hello = await kv.hello();
  assert.equal(hello.protocolVersion, 1);
  assert.equal(hello.shardCount, 2);
  assert.deepEqual(hello.members, []);
});

test('typed errors', async () => {
  await assert.rejects(kv.put('', 'v'), InvalidArgumentError);
  await assert.rejects(kv.get('k'.repeat(5000)), InvalidArgumentError);
});

test('a 1 MiB value', async () => {
  const value = Buffer.alloc(1 << 20);
  for (let i = 0; i < value.length; i++) value[i] = i & 0xff;
  await kv.put('s/large', value);
  assert.ok((await kv.get('s/large'))!.value.equals(value));
});

test('10,000 pipelined calls', async () => {
  const keys = Array.from({ length: 10000 }, (_, i) => `pipe/${i}`);
  const writes = await Promise.all(keys.map((k, i) => kv.put(k, `v${i}`)));
  assert.equal(new Set(writes.map((w) => `${w.shard}/${w.sequence}`)).size, 10000);
  const values = await Promise.all(keys.map((k) => kv.get(k)));
  assert.deepEqual(values.map((v) => v?.value.toString()), keys.map((_, i) => `v${i}`));
});

test('backpressure bounds 100,000 calls in flight', async () => {
  // The connection never has more than maxInFlight requests awaiting answers
  // and stops writing while the socket's buffer is full, so its buffer holds
  // about one window of frames, not all 100,000.
  // A call's deadline runs from when it is made, queue included: the last
  // of 100,000 waits for 99,500 before it, which took over the default 10 s
  // against a sanitizer build on a slow machine. What is tested here is
  // memory, not time: the timeout is out of the way.
  const limit = 500;
  const bounded = await Client.connect({
    nodes: [server.address], maxInFlight: limit, requestTimeoutMs: 600000 });
  const count = 100000;
  const p = bounded.pipeline();
  for (let i = 0; i < count; i++) p.put(`bp/${i}`, 'v');
  const writes = await p.exec();
  assert.equal(writes.length, count);
  const values = await Promise.all(
    Array.from({ length: count / 5 }, (_, i) => bounded.get(`bp/${i * 5}`)));
  assert.ok(values.every((v) => v?.value.toString() === 'v'));
  const [conn] = bounded.connections(server.address);
  assert.equal(conn.peakInFlight, limit);
  const frameBytes = conn.encoder.put(2 ** 40, Buffer.from('bp/99999'), Buffer.from('v')).length;
  // 16 KiB: a socket's default high-water mark; then one window of frames at most.
  assert.ok(conn.peakWriteBuffer <= 16 * 1024 + limit * frameBytes,
            `peak write buffer ${conn.peakWriteBuffer}`);
  await bounded.close();
});

test('a pool spreads calls', async () => {
  const pooled = await Client.connect({ nodes: [server.address], poolSize: 3 });
  await Promise.all(Array.from({ length: 300 }, (_, i) => pooled.put(`pool/${i}`, 'v')));
  assert.equal((await pooled.get('pool/299'))?.value.toString(), 'v');
  await pooled.close();
});

test('watch', async () => {
  const watch = await kv.watch('w/').start();
  const iterator = watch[Symbol.asyncIterator]();
  await kv.put('w/a', '1');
  await kv.put('other', 'x');
  await kv.delete('w/a');
  const events = await take(iterator, 2);
  assert.deepEqual(events.map((e) => [e.type, e.key.toString()]), [['put', 'w/a'], ['delete', 'w/a']]);
  assert.equal(events[0].value.toString(), '1');
  await watch.close();
  assert.equal((await iterator.next()).done, true);
});

test('reconnect and watch resume after a restart', async () => {
  const own = await Server.start();
  try {
    const client = await Client.connect({ nodes: [own.address], connectTimeoutMs: 1000 });
    const watch: Watch = await client.watch('r/').start();
    const iterator = watch[Symbol.asyncIterator]();
    await client.put('r/1', 'before');
    assert.deepEqual((await take(iterator, 1)).map((e) => e.key.toString()), ['r/1']);
    await own.restart();
    assert.equal((await client.get('r/1'))?.value.toString(), 'before');
    await client.put('r/2', 'after');
    await client.put('r/3', 'after');
    assert.deepEqual((await take(iterator, 2)).map((e) => e.key.toString()), ['r/2', 'r/3']);
    assert.equal(watch.reconnects, 1);
    await own.stop();
    await assert.rejects(client.get('r/1'), UnavailableError);
    await watch.close();
    await client.close();
  } finally {
    await own.close();
  }
});

test('the example runs', async () => {
  const { execFile } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const example = fileURLToPath(new URL('../examples/quickstart.js', import.meta.url));
  const stdout = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, [example, server.address], { timeout: 60000 },
             (error, out, err) => (error ? reject(new Error(`${error.message}\n${err}`)) : resolve(out)));
  });
  assert.match(stdout, /event delete items\/7/);
});

test('connect refused', async () => {
  const own = await Server.start();
  const address = own.address;
  await own.close();
  await assert.rejects(Client.connect({ nodes: [address], connectTimeoutMs: 1000 }), UnavailableError);
});

test('a silent server times out', async () => {
  const fake = await FakeServer.start((socket) => {
    onRequests(socket, (id, index) => {
      if (index === 0) socket.write(helloAnswer(id));
    });
  });
  try {
    const client = await Client.connect({ nodes: [fake.address], requestTimeoutMs: 300 });
    await assert.rejects(client.get('k'), DeadlineExceededError);
    await client.close();
  } finally {
    await fake.close();
  }
});
