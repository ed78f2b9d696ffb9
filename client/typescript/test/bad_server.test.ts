// Servers that do not speak the protocol, or break it mid-way: every case
// ends in a typed error within the timeouts, never a hang.
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { test } from 'node:test';

import {
  Client, DeadlineExceededError, InternalError, InvalidArgumentError, LogkvError, ProtocolError,
  UnavailableError,
} from '../src/index.js';
import { helloAnswer, onRequests, statusAnswer } from './fakes.js';
import { FakeServer } from './harness.js';

type ErrorType = new (...args: never[]) => LogkvError;

async function expectConnect(handler: (socket: net.Socket) => void, type: ErrorType) {
  const fake = await FakeServer.start(handler);
  try {
    await assert.rejects(Client.connect({ nodes: [fake.address], connectTimeoutMs: 500,
                                          requestTimeoutMs: 500 }), type);
  } finally {
    await fake.close();
  }
}

async function expectGet(after: (socket: net.Socket, id: number) => void, type: ErrorType) {
  const fake = await FakeServer.start((socket) => {
    onRequests(socket, (id, index) => {
      if (index === 0) socket.write(helloAnswer(id));
      else after(socket, id);
    });
  });
  try {
    const kv = await Client.connect({ nodes: [fake.address], requestTimeoutMs: 500,
                                      readRetries: 0 });
    await assert.rejects(kv.get('k'), type);
    await kv.close();
  } finally {
    await fake.close();
  }
}

test('garbage instead of a Hello answer', () =>
  expectConnect((s) => s.once('data', () => s.write(Buffer.alloc(64, 0xa7))), UnavailableError));

test('an HTTP answer', () =>
  expectConnect((s) => s.once('data', () => s.write('HTTP/1.1 400 Bad Request\r\n\r\n')),
                UnavailableError));

test('a huge length', () =>
  expectConnect((s) => s.once('data', () => {
    const b = Buffer.alloc(20, 0x78);
    b.writeUInt32LE(0xfffffff0);
    s.write(b);
  }), UnavailableError));

test('closed at once', () => expectConnect((s) => s.destroy(), UnavailableError));

test('a bad frame after Hello', () =>
  expectGet((s) => s.write(Buffer.concat([Buffer.from([12, 0, 0, 0, 0, 0, 0, 0]),
                                          Buffer.alloc(8, 0xff)])), UnavailableError));

test('an answer without its result', () =>
  expectGet((s, id) => s.write(statusAnswer(id)), ProtocolError));

test('a connection-level error', () =>
  expectGet((s) => s.write(statusAnswer(0, 2, 'malformed frame')), InvalidArgumentError));

test('a truncated answer', () =>
  expectGet((s, id) => {
    const frame = statusAnswer(id, 1);
    s.write(frame.subarray(0, frame.length - 3));
  }, DeadlineExceededError));

test('an unknown status code', () =>
  expectGet((s, id) => s.write(statusAnswer(id, 77, 'from the future')), InternalError));
