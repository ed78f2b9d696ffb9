// Answers a fake server sends: a valid Hello answer, then what a test needs.
import * as net from 'node:net';

import * as flatbuffers from 'flatbuffers';

import * as p from '../src/generated/logkv_generated.js';
import { FrameReader } from '../src/codec.js';

export function valueAnswer(id: number, value: Uint8Array, version = 7n): Buffer {
  const b = new flatbuffers.Builder(value.length + 64);
  const v = p.ValueResult.createValueVector(b, value);
  const result = p.ValueResult.createValueResult(b, v, version, 0n, 0n);
  b.finishSizePrefixed(p.Response.createResponse(b, BigInt(id), 0, 0, p.Result.ValueResult,
                                                 result, 0n));
  return Buffer.from(b.asUint8Array());
}

export function statusAnswer(id: number, status = 0, message = ''): Buffer {
  const b = new flatbuffers.Builder(128);
  const text = message ? b.createString(message) : 0;
  b.finishSizePrefixed(p.Response.createResponse(b, BigInt(id), status, text, p.Result.NONE, 0,
                                                 0n));
  return Buffer.from(b.asUint8Array());
}

export function helloAnswer(id: number): Buffer {
  const b = new flatbuffers.Builder(128);
  const node = b.createString('fake');
  p.HelloResult.startHelloResult(b);
  p.HelloResult.addProtocolVersion(b, 1);
  p.HelloResult.addNodeId(b, node);
  p.HelloResult.addShardCount(b, 1);
  const result = p.HelloResult.endHelloResult(b);
  b.finishSizePrefixed(p.Response.createResponse(b, BigInt(id), 0, 0, p.Result.HelloResult,
                                                 result, 0n));
  return Buffer.from(b.asUint8Array());
}

/** Calls onRequest(socket, requestId, index) for every request frame received. */
export function onRequests(socket: net.Socket,
                           onRequest: (id: number, index: number) => void): void {
  const reader = new FrameReader();
  let index = 0;
  socket.on('data', (chunk: Buffer) => {
    for (const frame of reader.push(chunk)) {
      const request = p.Request.getSizePrefixedRootAsRequest(new flatbuffers.ByteBuffer(frame));
      onRequest(Number(request.requestId()), index++);
    }
  });
}
