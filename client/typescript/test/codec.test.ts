// Framing, answer decoding, error mapping and placement, without a server.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { randomBytes } from 'node:crypto';

import { decode, Encoder, FrameReader } from '../src/codec.js';
import { toValue } from '../src/codec.js';
import * as errors from '../src/errors.js';
import { keyHash, Ring } from '../src/placement.js';
import { statusAnswer, valueAnswer } from './fakes.js';

test('frames split anywhere', () => {
  const stream = Buffer.concat([valueAnswer(1, Buffer.from('a')),
                                valueAnswer(2, Buffer.alloc(200, 98)), valueAnswer(3, Buffer.alloc(0))]);
  for (const step of [1, 3, 7, 64, stream.length]) {
    const reader = new FrameReader();
    const frames: Buffer[] = [];
    for (let i = 0; i < stream.length; i += step) frames.push(...reader.push(stream.subarray(i, i + step)));
    assert.deepEqual(frames.map((f) => decode(f).requestId), [1, 2, 3]);
    assert.equal(reader.pendingBytes, 0);
    assert.deepEqual(toValue(decode(frames[1])).value, Buffer.alloc(200, 98));
  }
});

test('re-filled request frames are byte for byte what the builder makes', () => {
  const encoder = new Encoder();
  for (const keyLength of [1, 2, 3, 4, 5, 8, 13, 100, 4000]) {
    for (const valueLength of [0, 1, 7, 96, 100]) {
      const key = randomBytes(keyLength);
      const value = randomBytes(valueLength);
      for (const id of [1, 77, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER]) {
        assert.deepEqual(encoder.put(id, key, value), encoder.built.put(id, key, value));
        assert.deepEqual(encoder.get(id, key), encoder.built.get(id, key));
        assert.deepEqual(encoder.delete(id, key), encoder.built.delete(id, key));
      }
    }
  }
  // Other shapes take the builder.
  const key = Buffer.from('k');
  assert.deepEqual(encoder.put(5, key, key, 10, 0n, 'strong'),
                   encoder.built.put(5, key, key, 10, 0n, 'strong'));
  assert.deepEqual(encoder.get(5, key, 'eventual'), encoder.built.get(5, key, 'eventual'));
});

test('request ids up to 2^53 - 1 are read without loss', () => {
  for (const id of [1, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER]) {
    assert.equal(decode(statusAnswer(id)).requestId, id);
  }
});

test('a large frame in many chunks', () => {
  const value = Buffer.alloc(1 << 20);
  for (let i = 0; i < value.length; i++) value[i] = (i * 31) & 0xff;
  const frame = valueAnswer(9, value);
  const reader = new FrameReader();
  const frames: Buffer[] = [];
  for (let i = 0; i < frame.length; i += 1000) frames.push(...reader.push(frame.subarray(i, i + 1000)));
  assert.equal(frames.length, 1);
  assert.deepEqual(toValue(decode(frames[0])).value, value);
});

test('bad lengths are protocol errors', () => {
  const zero = Buffer.alloc(4);
  assert.throws(() => new FrameReader().push(zero), errors.ProtocolError);
  const big = Buffer.alloc(4);
  big.writeUInt32LE(1001);
  assert.throws(() => new FrameReader(1000).push(big), errors.ProtocolError);
});

test('an answer without its result is a protocol error', () => {
  assert.throws(() => toValue(decode(statusAnswer(4, 0))), errors.ProtocolError);
});

test('every status code has a type', () => {
  const types: Record<number, unknown> = {
    1: errors.NotFoundError, 2: errors.InvalidArgumentError, 3: errors.FailedPreconditionError,
    4: errors.ResourceExhaustedError, 5: errors.UnavailableError, 6: errors.DataLossError,
    7: errors.UnauthenticatedError, 8: errors.PermissionDeniedError, 9: errors.CompactedError,
    10: errors.InternalError, 11: errors.UnimplementedError, 12: errors.DeadlineExceededError,
    13: errors.AbortedError, 14: errors.InsufficientStorageError,
  };
  for (const [code, type] of Object.entries(types)) {
    const error = decode(statusAnswer(1, Number(code), 'why')).error('get');
    assert.equal(error.constructor, type);
    assert.equal(error.code, Number(code));
    assert.equal(error.message, 'get: why');
    assert.ok(error instanceof errors.LogkvError);
  }
  assert.ok(errors.errorFor(99, 'new') instanceof errors.InternalError);
});

test('placement matches the C++ ring (test vectors)', (t) => {
  const path = process.env.LOGKV_PLACEMENT_VECTORS;
  if (!path) {
    t.skip('LOGKV_PLACEMENT_VECTORS not set (ctest sets it)');
    return;
  }
  const vectors = JSON.parse(readFileSync(path, 'utf8'));
  let checked = 0;
  for (const c of vectors.cases) {
    const ring = new Ring(c.members, vectors.virtual_nodes);
    for (const item of c.items) {
      const key = Buffer.from(item.key_hex, 'hex');
      assert.equal(keyHash(key), BigInt(item.hash), item.key_hex);
      assert.deepEqual(ring.preferenceList(key, c.members.length), item.owners, item.key_hex);
      checked++;
    }
  }
  assert.ok(checked > 800);
});

test('fewer owners than members', () => {
  const ring = new Ring(['a', 'b', 'c']);
  const full = ring.preferenceList(Buffer.from('k'), 3);
  assert.deepEqual(ring.preferenceList(Buffer.from('k'), 1), full.slice(0, 1));
  assert.deepEqual(ring.preferenceList(Buffer.from('k'), 9), full);
  assert.deepEqual(new Ring([]).preferenceList(Buffer.from('k'), 3), []);
});
