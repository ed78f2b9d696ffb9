// A server with --auth=on: API keys from the HTTP API; refused and missing keys.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client, UnauthenticatedError } from '../src/index.js';
import { Server } from './harness.js';

let server: Server;
let key: string;

before(async () => {
  server = await Server.start(['--auth=on']);
  ({ key } = await server.apiKey());
});

after(async () => {
  await server?.close();
});

test('a valid key works', async () => {
  const kv = await Client.connect({ nodes: [server.address], apiKey: key });
  await kv.put('mine', 'v');
  assert.equal((await kv.get('mine'))?.value.toString(), 'v');
  assert.ok((await kv.stats()).keys >= 1n);
  await kv.close();
});

test('no key is unauthenticated; auth() switches to a key', async () => {
  const kv = await Client.connect({ nodes: [server.address] });
  await kv.ping();
  await assert.rejects(kv.get('mine'), UnauthenticatedError);
  await assert.rejects(kv.put('mine', 'v'), UnauthenticatedError);
  await kv.auth(key);
  await kv.put('later', 'v');
  await kv.close();
});

test('a bad key is refused at connect', async () => {
  await assert.rejects(Client.connect({ nodes: [server.address], apiKey: `ydht_${'x'.repeat(40)}` }),
                       UnauthenticatedError);
  const kv = await Client.connect({ nodes: [server.address], apiKey: key });
  await assert.rejects(kv.auth('not-a-key'), UnauthenticatedError);
  await kv.close();
});

test('a revoked key ends the watch', async () => {
  const second = await server.apiKey('ts2@example.com', 'tstest2', 'ts-test-pass-2');
  const kv = await Client.connect({ nodes: [server.address], apiKey: second.key });
  const watch = await kv.watch('w/').start();
  await server.http('DELETE', `/apikeys/${second.id}`, undefined,
                    { Authorization: `Bearer ${second.token}` });
  const iterator = watch[Symbol.asyncIterator]();
  await assert.rejects(Promise.race([
    iterator.next(),
    new Promise((_, reject) => setTimeout(() => reject(new Error('watch went on')), 30000).unref()),
  ]), UnauthenticatedError);
  await assert.rejects(kv.get('w/x'), UnauthenticatedError);
  await watch.close();
  await kv.close();
});
