// Pipelined SET/GET throughput of the TypeScript logkv client beside
// ioredis, in this process one after the other: N keys of VALUE bytes
// written then read, PIPELINE requests per round trip (logkv: PIPELINE
// calls in flight, awaited together; ioredis: pipeline() of PIPELINE
// commands). Prints CSV rows, ratios and the median time of reading one
// 1 MiB value. Run by bench/vs-redis-clients.sh.
//
//   node typescript_bench.mjs --ts-dir BUILD/client/typescript --logkv HOST:PORT \
//        --redis HOST:PORT [-n 100000] [-P 100] [-R 3]
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : fallback;
};
const tsDir = option('--ts-dir');
const n = Number(option('-n', '100000'));
const pipeline = Number(option('-P', '100'));
const valueBytes = Number(option('--value-bytes', '100'));
const { Client } = await import(pathToFileURL(join(tsDir, 'dist', 'src', 'index.js')).href);
const Redis = createRequire(join(tsDir, 'package.json'))('ioredis');

const keys = Array.from({ length: n }, (_, i) => `bench/${String(i).padStart(8, '0')}`);
const value = Buffer.alloc(valueBytes, 'v');
const large = Buffer.alloc(1 << 20, 'x');

async function median(fn, count = 20) {
  const samples = [];
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    await fn();
    samples.push(performance.now() - start);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(count / 2)];
}

async function benchLogkv(address) {
  const kv = await Client.connect({ nodes: [address], requestTimeoutMs: 60000 });
  const out = {};
  for (const op of ['SET', 'GET']) {
    const start = performance.now();
    for (let i = 0; i < n; i += pipeline) {
      const chunk = keys.slice(i, i + pipeline);
      if (op === 'SET') await Promise.all(chunk.map((k) => kv.put(k, value)));
      else {
        const results = await Promise.all(chunk.map((k) => kv.get(k)));
        if (!results.at(-1).value.equals(value)) throw new Error('wrong value');
      }
    }
    out[op] = n / ((performance.now() - start) / 1000);
  }
  await kv.put('bench/large', large);
  const ms = await median(() => kv.get('bench/large'));
  await kv.close();
  return [out, ms];
}

async function benchRedis(address) {
  const [host, port] = address.split(':');
  const r = new Redis({ host, port: Number(port), lazyConnect: true });
  await r.connect();
  const out = {};
  for (const op of ['SET', 'GET']) {
    const start = performance.now();
    for (let i = 0; i < n; i += pipeline) {
      const p = r.pipeline();
      for (const k of keys.slice(i, i + pipeline)) {
        if (op === 'SET') p.set(k, value);
        else p.getBuffer(k);
      }
      const results = await p.exec();
      if (op === 'GET' && !results.at(-1)[1].equals(value)) throw new Error('wrong value');
    }
    out[op] = n / ((performance.now() - start) / 1000);
  }
  await r.set('bench/large', large);
  const ms = await median(() => r.getBuffer('bench/large'));
  r.disconnect();
  return [out, ms];
}

// Rounds alternate the clients, so a busy moment of a shared machine hits
// both; rates and ratios are the medians over the rounds.
const rounds = Number(option('-R', '3'));
const medianOf = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const rates = { logkv: { SET: [], GET: [] }, redis: { SET: [], GET: [] } };
const ratios = { SET: [], GET: [] };
let logkvLarge = 0;
let redisLarge = 0;
for (let round = 0; round < rounds; round++) {
  const [logkvOps, logkvMs] = await benchLogkv(option('--logkv'));
  const [redisOps, redisMs] = await benchRedis(option('--redis'));
  logkvLarge = logkvMs;
  redisLarge = redisMs;
  for (const op of ['SET', 'GET']) {
    rates.logkv[op].push(logkvOps[op]);
    rates.redis[op].push(redisOps[op]);
    ratios[op].push(logkvOps[op] / redisOps[op]);
  }
}
console.log('client,op,value');
for (const op of ['SET', 'GET']) console.log(`logkv-typescript (ops/s),${op},${medianOf(rates.logkv[op]).toFixed(0)}`);
for (const op of ['SET', 'GET']) console.log(`ioredis (ops/s),${op},${medianOf(rates.redis[op]).toFixed(0)}`);
for (const op of ['SET', 'GET']) {
  console.log(`ratio logkv/redis typescript,${op},${medianOf(ratios[op]).toFixed(2)}`);
}
for (const op of ['SET', 'GET']) {
  console.log(`lowest round's ratio typescript,${op},${Math.min(...ratios[op]).toFixed(2)}`);
}
console.log(`1 MiB GET median ms logkv-typescript,GET,${logkvLarge.toFixed(2)}`);
console.log(`1 MiB GET median ms ioredis,GET,${redisLarge.toFixed(2)}`);
