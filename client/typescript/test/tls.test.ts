// The tls option: the client talks TLS to a logkvd serving it (--tls-cert,
// --tls-key) and through a TLS-terminating proxy in front of a plaintext one,
// verifying the certificate, and refuses one it cannot verify.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import * as tls from 'node:tls';

import { Client, UnavailableError } from '../src/index.js';
import { Server } from './harness.js';

let server: Server;
let tlsServer: Server;
let proxy: tls.Server;
let address: string;
let ca: Buffer;
let dir: string;

before(async () => {
  server = await Server.start();
  dir = mkdtempSync(join(tmpdir(), 'logkv-tls-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                           '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
                           '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')],
               { stdio: 'ignore', timeout: 60000 });
  ca = readFileSync(join(dir, 'cert.pem'));
  tlsServer = await Server.start([`--tls-cert=${join(dir, 'cert.pem')}`,
                                  `--tls-key=${join(dir, 'key.pem')}`]);
  proxy = tls.createServer({ key: readFileSync(join(dir, 'key.pem')), cert: ca }, (socket) => {
    const upstream = net.connect({ host: '127.0.0.1', port: server.port });
    socket.on('error', () => upstream.destroy());
    upstream.on('error', () => socket.destroy());
    socket.pipe(upstream).pipe(socket);
  });
  proxy.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  address = `127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
});

after(async () => {
  await new Promise((resolve) => proxy?.close(resolve));
  await server?.close();
  await tlsServer?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('calls over TLS', async () => {
  const kv = await Client.connect({ nodes: [address], tls: { ca } });
  await kv.put('tls/a', 'secret');
  assert.equal((await kv.get('tls/a'))?.value.toString(), 'secret');
  const value = Buffer.alloc(256 * 1024);
  for (let i = 0; i < value.length; i++) value[i] = i & 0xff;
  await kv.put('tls/large', value);
  assert.ok((await kv.get('tls/large'))!.value.equals(value));
  const writes = await Promise.all(Array.from({ length: 2000 }, (_, i) => kv.put(`tls/${i}`, 'v')));
  assert.equal(writes.length, 2000);
  await kv.close();
});

test('an unverifiable certificate is refused', async () => {
  await assert.rejects(Client.connect({ nodes: [address], tls: {}, connectTimeoutMs: 2000 }),
                       (error: Error) => error instanceof UnavailableError &&
                         /self.signed|certificate/i.test(error.message));
});

test('calls to a logkvd serving TLS itself', async () => {
  const kv = await Client.connect({ nodes: [`127.0.0.1:${tlsServer.port}`], tls: { ca } });
  const value = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < value.length; i++) value[i] = i & 0xff;
  await kv.put('server-tls/large', value);
  assert.ok((await kv.get('server-tls/large'))!.value.equals(value));
  const writes = await Promise.all(
    Array.from({ length: 2000 }, (_, i) => kv.put(`server-tls/${i}`, 'v')));
  assert.equal(writes.length, 2000);
  assert.equal((await kv.get('server-tls/1999'))?.value.toString(), 'v');
  await kv.close();
  await assert.rejects(
    Client.connect({ nodes: [`127.0.0.1:${tlsServer.port}`], tls: {}, connectTimeoutMs: 2000 }),
    (error: Error) => error instanceof UnavailableError &&
      /self.signed|certificate/i.test(error.message));
});
