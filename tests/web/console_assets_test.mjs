// The console's files served compressed (docs/console.md, "Compression"):
// one logkvd on ports the kernel picks (loopback); each page and file asked
// for as it is, with gzip and with brotli. A compressed answer decodes to
// exactly the bytes of the plain one, is smaller, names its coding, has an
// ETag of its own and Vary: Accept-Encoding; the q-values of Accept-Encoding
// choose; If-None-Match answers 304 for the representation it names. Every
// wait is bounded; the process is stopped.
//
//   node console_assets_test.mjs <logkvd>
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

const [logkvd] = process.argv.slice(2);
if (!logkvd) {
  console.error('usage: node console_assets_test.mjs <logkvd>');
  process.exit(2);
}
const temporary = fs.mkdtempSync(path.join(os.tmpdir(), 'logkv-assets-'));
let child = null;
let failed = 0;
let passed = 0;

function check(condition, message) {
  if (condition) {
    passed++;
  } else {
    failed++;
    console.error(`FAIL: ${message}`);
  }
}

// Starts logkvd; resolves with its HTTP port, read from its log.
function start() {
  return new Promise((resolve, reject) => {
    child = spawn(logkvd, [`--data-dir=${path.join(temporary, 'data')}`, '--listen=127.0.0.1:0',
      '--http=127.0.0.1:0', '--threads=1', '--shards=2', '--fsync=never'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    const timer = setTimeout(() => reject(new Error(`logkvd did not start in 20 s:\n${log}`)), 20000);
    const read = (chunk) => {
      log += chunk;
      const match = log.match(/listening on 127\.0\.0\.1:(\d+) \(HTTP/);
      if (match) {
        clearTimeout(timer);
        child.stdout.resume();
        child.stderr.resume();
        child.stdout.off('data', read);
        child.stderr.off('data', read);
        resolve(Number(match[1]));
      }
    };
    child.stdout.on('data', read);
    child.stderr.on('data', read);
    child.once('exit', (code) => reject(new Error(`logkvd exited with ${code}:\n${log}`)));
  });
}

function stop() {
  return new Promise((resolve) => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve(); }, 10000);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
    child.kill('SIGTERM');
  });
}

// GET path with headers; the status, headers and raw (undecoded) body.
function get(port, target, headers = {}) {
  return new Promise((resolve, reject) => {
    const request = http.get({ host: '127.0.0.1', port, path: target, headers, timeout: 10000 }, (response) => {
      const chunks = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }));
    });
    request.on('timeout', () => request.destroy(new Error(`GET ${target}: no answer in 10 s`)));
    request.on('error', reject);
  });
}

const decoders = { gzip: zlib.gunzipSync, br: zlib.brotliDecompressSync };

try {
  const port = await start();
  // Pages, scripts, styles, the API reference and swagger-ui's bundle.
  const paths = ['/', '/data', '/assets/app.js', '/assets/style.css', '/docs', '/assets/docs.js',
    '/assets/docs/swagger-ui-bundle.js', '/assets/docs/swagger-ui.css', '/openapi.json'];
  for (const target of paths) {
    const plain = await get(port, target);
    check(plain.status === 200, `${target}: ${plain.status}`);
    check(plain.headers['content-encoding'] === undefined, `${target}: plain answer has a Content-Encoding`);
    check(plain.headers.vary === 'Accept-Encoding', `${target}: Vary is ${plain.headers.vary}`);
    const etags = new Set([plain.headers.etag]);
    for (const coding of ['gzip', 'br']) {
      const packed = await get(port, target, { 'Accept-Encoding': coding });
      check(packed.status === 200, `${target} ${coding}: ${packed.status}`);
      check(packed.headers['content-encoding'] === coding,
        `${target} ${coding}: Content-Encoding ${packed.headers['content-encoding']}`);
      check(packed.headers.vary === 'Accept-Encoding', `${target} ${coding}: Vary ${packed.headers.vary}`);
      check(packed.headers['content-type'] === plain.headers['content-type'], `${target} ${coding}: Content-Type`);
      check(packed.headers['content-security-policy'] === plain.headers['content-security-policy'],
        `${target} ${coding}: Content-Security-Policy`);
      check(packed.body.length < plain.body.length, `${target} ${coding}: ${packed.body.length} bytes, not fewer than ${plain.body.length}`);
      check(Buffer.compare(decoders[coding](packed.body), plain.body) === 0,
        `${target} ${coding}: decodes to other bytes than the plain answer`);
      etags.add(packed.headers.etag);
      // The client holds this representation: 304; another's validator: 200.
      const again = await get(port, target, { 'Accept-Encoding': coding, 'If-None-Match': packed.headers.etag });
      check(again.status === 304 && again.body.length === 0, `${target} ${coding}: revalidation answered ${again.status}`);
      const other = await get(port, target, { 'Accept-Encoding': coding, 'If-None-Match': plain.headers.etag });
      check(other.status === 200, `${target} ${coding}: the plain ETag revalidated the ${coding} answer`);
    }
    check(etags.size === 3, `${target}: the three representations share an ETag`);
  }

  // Negotiation: brotli first; q-values respected; q=0 refuses.
  const coding = async (accept) => (await get(port, '/assets/app.js', { 'Accept-Encoding': accept })).headers['content-encoding'] ?? 'identity';
  for (const [accept, expected] of [['gzip, deflate, br', 'br'], ['br;q=0.5, gzip', 'gzip'],
    ['br;q=0, gzip;q=0.1', 'gzip'], ['gzip;q=0', 'identity'], ['*', 'br'], ['*;q=0', 'identity'],
    ['identity', 'identity'], ['deflate', 'identity'], ['GZIP', 'gzip']]) {
    const got = await coding(accept);
    check(got === expected, `Accept-Encoding: ${accept} chose ${got}, not ${expected}`);
  }
} catch (error) {
  failed++;
  console.error(`FAIL: ${error.stack ?? error}`);
} finally {
  await stop();
  fs.rmSync(temporary, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
