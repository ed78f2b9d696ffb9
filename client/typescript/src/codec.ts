// Requests and answers of the binary protocol (docs/protocol.md), with the
// classes flatc generates from protocol/logkv.fbs (src/generated, made at
// build time), and the framing: a 4-byte little-endian length, then one
// size-prefixed FlatBuffer.
import * as flatbuffers from 'flatbuffers';

import * as p from './generated/logkv_generated.js';
import { errorFor, LogkvError, ProtocolError } from './errors.js';
import type {
  BatchItemResult, BatchOp, Consistency, Event, HelloInfo, ScanPage, Stats, Value, WriteResult,
} from './types.js';

export const PROTOCOL_VERSION = 1;
const MAX_TTL_MS = 100 * 365 * 24 * 3600 * 1000;
// Values shorter than this are copied out of the received chunk, so holding
// one does not pin the chunk; longer ones are views (zero-copy).
const COPY_BELOW_BYTES = 16 << 10;

export type Bytes = Uint8Array | string;

export function toBytes(data: Bytes): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data);
  if (data instanceof Uint8Array) return data;
  throw new TypeError('keys and values are strings or Uint8Arrays');
}

function consistencyOf(c: Consistency | undefined): p.Consistency {
  switch (c) {
    case undefined:
    case 'default':
      return p.Consistency.Default;
    case 'eventual':
      return p.Consistency.Eventual;
    case 'strong':
      return p.Consistency.Strong;
    default:
      throw new TypeError(`consistency is 'eventual', 'strong' or 'default', not ${String(c)}`);
  }
}

function checkTtl(ttlMs: number) {
  if (!Number.isInteger(ttlMs) || ttlMs < 0 || ttlMs > MAX_TTL_MS) {
    throw new RangeError(`ttlMs must be an integer in [0, 100 years], not ${ttlMs}`);
  }
}

const TEMPLATE_MAX_BYTES = 4096;  // larger requests: the builder's cost is in the copy anyway
const MAX_TEMPLATES = 256;
const TWO_32 = 2 ** 32;
const MAX_ID = 0xFFFFFFFFFFFFFFFFn;  // a template's placeholder id: every byte set

/**
 * A request frame built once by the generated code, re-filled per call.
 *
 * The FlatBuffers builder lays a buffer out by the lengths of its vectors and
 * by which fields differ from their defaults, never by the bytes in them. So
 * a frame built with placeholder bytes of the same lengths (and a non-zero
 * request id, as 0 would be left out) differs from the real one only in those
 * bytes: a copy with the id, key and value written in is the frame the
 * builder would make, without its allocations (BigInts, vtable search). The
 * positions come from reading the frame back with the generated classes.
 */
interface Template {
  frame: Buffer;
  idAt: number;
  keyAt: number;
  valueAt: number;
}

function makeTemplate(frame: Buffer, operation: { bb: flatbuffers.ByteBuffer | null;
                                                  bb_pos: number },
                      hasValue: boolean): Template | null {
  const bb = new flatbuffers.ByteBuffer(frame);
  const request = p.Request.getSizePrefixedRootAsRequest(bb);
  const idOffset = bb.__offset(request.bb_pos, 4);
  if (!idOffset || request.requestId() !== MAX_ID) return null;
  request.operation(operation);
  const table = operation.bb_pos;
  const keyAt = bb.__vector(table + bb.__offset(table, 4));
  const valueAt = hasValue ? bb.__vector(table + bb.__offset(table, 6)) : 0;
  return { frame: Buffer.from(frame), idAt: request.bb_pos + idOffset, keyAt, valueAt };
}

function fill(t: Template, id: number, key: Uint8Array, value?: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(t.frame.length);
  t.frame.copy(frame);
  frame.writeUInt32LE(id % TWO_32, t.idAt);
  frame.writeUInt32LE(Math.floor(id / TWO_32), t.idAt + 4);
  frame.set(key, t.keyAt);
  if (value !== undefined) frame.set(value, t.valueAt);
  return frame;
}

/** Builds request frames; one per connection, its buffer reused between requests. */
export class Encoder {
  private readonly b = new flatbuffers.Builder(1024);
  // Templates by shape: key length (get, delete), key and value lengths (put).
  private readonly templates = new Map<number, Template | null>();

  private finish(id: number | bigint, type: p.Operation, operation: flatbuffers.Offset): Buffer {
    const b = this.b;
    p.Request.startRequest(b);
    p.Request.addRequestId(b, BigInt(id));
    p.Request.addOperationType(b, type);
    p.Request.addOperation(b, operation);
    b.finishSizePrefixed(p.Request.endRequest(b));
    const bytes = Buffer.from(b.asUint8Array());  // a copy: the builder is reused
    if (bytes.length > 1 << 20) this.shrink();
    return bytes;
  }

  private shrink() {
    (this as unknown as { b: flatbuffers.Builder }).b = new flatbuffers.Builder(1024);
  }

  hello(id: number, authToken: string | undefined, clientName: string): Buffer {
    const b = this.b;
    b.clear();
    const token = authToken ? b.createString(authToken) : 0;
    const name = b.createString(clientName);
    p.Hello.startHello(b);
    p.Hello.addProtocolVersion(b, PROTOCOL_VERSION);
    if (token) p.Hello.addAuthToken(b, token);
    p.Hello.addClientName(b, name);
    return this.finish(id, p.Operation.Hello, p.Hello.endHello(b));
  }

  ping(id: number, payload: Uint8Array = new Uint8Array()): Buffer {
    const b = this.b;
    b.clear();
    const data = p.Ping.createPayloadVector(b, payload);
    return this.finish(id, p.Operation.Ping, p.Ping.createPing(b, data));
  }

  private template(shape: number, build: () => Buffer, operation: () => {
    bb: flatbuffers.ByteBuffer | null; bb_pos: number; }, hasValue: boolean): Template | null {
    let t = this.templates.get(shape);
    if (t === undefined) {
      if (this.templates.size >= MAX_TEMPLATES) this.templates.clear();
      t = makeTemplate(build(), operation(), hasValue);
      this.templates.set(shape, t);
    }
    return t;
  }

  get(id: number, key: Uint8Array, consistency?: Consistency): Buffer {
    if (consistency === undefined && key.length <= TEMPLATE_MAX_BYTES) {
      // Shapes: 3 kinds of request, key lengths below 2^13, value lengths below 2^13.
      const t = this.template(key.length * 3, () => this.built.get(
        MAX_ID, new Uint8Array(key.length)), () => new p.Get(), false);
      if (t !== null) return fill(t, id, key);
    }
    return this.built.get(id, key, consistency);
  }

  put(id: number, key: Uint8Array, value: Uint8Array, ttlMs = 0, ifVersion?: bigint,
      consistency?: Consistency): Buffer {
    if (!ttlMs && ifVersion === undefined && consistency === undefined &&
        key.length + value.length <= TEMPLATE_MAX_BYTES) {
      const t = this.template((key.length * 8192 + value.length) * 3 + 1, () => this.built.put(
        MAX_ID, new Uint8Array(key.length), new Uint8Array(value.length)), () => new p.Put(),
                              true);
      if (t !== null) return fill(t, id, key, value);
    }
    return this.built.put(id, key, value, ttlMs, ifVersion, consistency);
  }

  delete(id: number, key: Uint8Array, ifVersion?: bigint, consistency?: Consistency): Buffer {
    if (ifVersion === undefined && consistency === undefined &&
        key.length <= TEMPLATE_MAX_BYTES) {
      const t = this.template(key.length * 3 + 2, () => this.built.delete(
        MAX_ID, new Uint8Array(key.length)), () => new p.Delete(), false);
      if (t !== null) return fill(t, id, key);
    }
    return this.built.delete(id, key, ifVersion, consistency);
  }

  /** The same requests made by the generated builder every time (also the templates' source). */
  readonly built = {
    get: (id: number | bigint, key: Uint8Array, consistency?: Consistency): Buffer => {
      const b = this.b;
    b.clear();
      b.clear();
      const k = p.Get.createKeyVector(b, key);
      return this.finish(id, p.Operation.Get, p.Get.createGet(b, k, consistencyOf(consistency)));
    },
    put: (id: number | bigint, key: Uint8Array, value: Uint8Array, ttlMs = 0,
          ifVersion?: bigint, consistency?: Consistency): Buffer => {
      checkTtl(ttlMs);
      const b = this.b;
      b.clear();
      const v = p.Put.createValueVector(b, value);
      const k = p.Put.createKeyVector(b, key);
      return this.finish(id, p.Operation.Put, p.Put.createPut(
        b, k, v, BigInt(ttlMs), ifVersion !== undefined, ifVersion ?? 0n,
        consistencyOf(consistency)));
    },
    delete: (id: number | bigint, key: Uint8Array, ifVersion?: bigint,
             consistency?: Consistency): Buffer => {
      const b = this.b;
      b.clear();
      const k = p.Delete.createKeyVector(b, key);
      return this.finish(id, p.Operation.Delete, p.Delete.createDelete(
        b, k, ifVersion !== undefined, ifVersion ?? 0n, consistencyOf(consistency)));
    },
  };

  getVersion(id: number, key: Uint8Array, version: bigint): Buffer {
    const b = this.b;
    b.clear();
    const k = p.GetVersion.createKeyVector(b, key);
    return this.finish(id, p.Operation.GetVersion, p.GetVersion.createGetVersion(b, k, version));
  }

  batch(id: number, operations: BatchOp[], consistency?: Consistency): Buffer {
    const b = this.b;
    b.clear();
    const items = operations.map((op) => {
      const ttl = op.ttlMs ?? 0;
      checkTtl(ttl);
      const k = p.BatchItem.createKeyVector(b, toBytes(op.key));
      const isDelete = op.value === undefined || op.value === null;
      const v = isDelete ? 0 : p.BatchItem.createValueVector(b, toBytes(op.value as Bytes));
      return p.BatchItem.createBatchItem(b, isDelete, k, v, BigInt(ttl));
    });
    const vector = p.Batch.createItemsVector(b, items);
    return this.finish(id, p.Operation.Batch,
                       p.Batch.createBatch(b, vector, consistencyOf(consistency)));
  }

  scan(id: number, o: { prefix?: Bytes; startKey?: Bytes; endKey?: Bytes; afterKey?: Bytes;
                         limit?: number; keysOnly?: boolean }): Buffer {
    const b = this.b;
    b.clear();
    const vec = (x?: Bytes) => (x && toBytes(x).length ? p.Scan.createPrefixVector(b, toBytes(x)) : 0);
    const prefix = vec(o.prefix);
    const start = vec(o.startKey);
    const end = vec(o.endKey);
    const after = vec(o.afterKey);
    return this.finish(id, p.Operation.Scan, p.Scan.createScan(
      b, prefix, start, end, after, o.limit ?? 0, o.keysOnly ?? false));
  }

  watch(id: number, prefix: Uint8Array, afterSequences: bigint[]): Buffer {
    const b = this.b;
    b.clear();
    const pre = prefix.length ? p.Watch.createPrefixVector(b, prefix) : 0;
    const seqs = afterSequences.length ? p.Watch.createAfterSequencesVector(b, afterSequences) : 0;
    return this.finish(id, p.Operation.Watch, p.Watch.createWatch(b, pre, seqs));
  }

  unwatch(id: number, watchId: number): Buffer {
    const b = this.b;
    b.clear();
    return this.finish(id, p.Operation.Unwatch, p.Unwatch.createUnwatch(b, BigInt(watchId)));
  }

  stats(id: number): Buffer {
    const b = this.b;
    b.clear();
    p.Stats.startStats(b);
    return this.finish(id, p.Operation.Stats, p.Stats.endStats(b));
  }
}

/** One decoded Response frame. */
export class Answer {
  constructor(readonly response: p.Response, readonly requestId: number,
              readonly status: number, readonly message: string) {}

  error(what = ''): LogkvError {
    const message = what ? (this.message ? `${what}: ${this.message}` : what) : this.message;
    return errorFor(this.status, message, Number(this.response.retryAfterMs()));
  }

  /** The result table of the type, read through into (an accessor object of that type). */
  result<T>(type: p.Result, into: T, what: string): T {
    const found = this.response.resultType() === type ? this.response.result(into) : null;
    if (found === null) {
      throw new ProtocolError(`${what}: the answer carries no ${p.Result[type]}`);
    }
    return found as T;
  }
}

export function decode(frame: Uint8Array): Answer {
  try {
    const bb = new flatbuffers.ByteBuffer(frame);
    const response = p.Response.getSizePrefixedRootAsResponse(bb);
    // The request id as two 32-bit halves: a BigInt per answer costs more than the rest.
    const at = bb.__offset(response.bb_pos, 4);
    const high = at ? bb.readUint32(response.bb_pos + at + 4) : 0;
    if (high >= 1 << 21) throw new RangeError(`request id ${response.requestId()}`);
    const id = at ? high * TWO_32 + bb.readUint32(response.bb_pos + at) : 0;
    return new Answer(response, id, response.status(), response.message() ?? '');
  } catch (error) {
    if (error instanceof LogkvError) throw error;
    throw new ProtocolError(`the server sent a frame that is not a Response (${String(error)})`);
  }
}

function bytesOut(view: Uint8Array | null): Buffer {
  if (view === null) return Buffer.alloc(0);
  // Small: one copy (Buffer.from of a typed array copies); large: a view.
  return view.byteLength < COPY_BELOW_BYTES ? Buffer.from(view)
    : Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

function malformed(what: string, error: unknown): Error {
  if (error instanceof LogkvError) return error;
  return new ProtocolError(`${what}: the answer is not well formed (${String(error)})`);
}

// One ValueResult and WriteResult reader each, re-pointed per answer: every get and
// put reads one, and an object per answer is garbage to collect.
const valueResult = new p.ValueResult();
const writeResult = new p.WriteResult();

function guard<T>(what: string, read: () => T): T {
  try {
    return read();
  } catch (error) {
    if (error instanceof LogkvError) throw error;
    throw new ProtocolError(`${what}: the answer is not well formed (${String(error)})`);
  }
}

export function toValue(a: Answer, what = 'get'): Value {
  try {
    const r = a.result(p.Result.ValueResult, valueResult, what);
    return { value: bytesOut(r.valueArray()), version: r.version(), timestamp: r.timestamp(),
             expiryUnixMs: Number(r.expiryUnixMs()) };
  } catch (error) {
    throw malformed(what, error);
  }
}

export function toWrite(a: Answer, what = 'put'): WriteResult {
  try {
    const r = a.result(p.Result.WriteResult, writeResult, what);
    return { version: r.version(), timestamp: r.timestamp(), sequence: r.sequence(),
             shard: r.shard() };
  } catch (error) {
    throw malformed(what, error);
  }
}

export function toBatch(a: Answer): BatchItemResult[] {
  return guard('batch', () => {
    const r = a.result(p.Result.BatchResult, new p.BatchResult(), 'batch');
    const out: BatchItemResult[] = [];
    for (let i = 0; i < r.itemsLength(); i++) {
      const item = r.items(i)!;
      const status = item.status();
      const message = item.message() ?? '';
      out.push({ status, message, version: item.version(), ok: status === 0,
                 error: status === 0 ? null : errorFor(status, message) });
    }
    return out;
  });
}

export function toScan(a: Answer): ScanPage {
  return guard('scan', () => {
    const r = a.result(p.Result.ScanResult, new p.ScanResult(), 'scan');
    const items = [];
    for (let i = 0; i < r.itemsLength(); i++) {
      const item = r.items(i)!;
      items.push({ key: bytesOut(item.keyArray()), value: {
        value: bytesOut(item.valueArray()), version: item.version(), timestamp: item.timestamp(),
        expiryUnixMs: Number(item.expiryUnixMs()) } });
    }
    return { items, nextCursor: bytesOut(r.nextCursorArray()) };
  });
}

export function toEvents(a: Answer): Event[] {
  return guard('watch', () => {
    const r = a.result(p.Result.WatchEvents, new p.WatchEvents(), 'watch');
    const out: Event[] = [];
    for (let i = 0; i < r.eventsLength(); i++) {
      const e = r.events(i)!;
      out.push({ type: e.type() === p.EventType.Delete ? 'delete' : 'put', shard: e.shard(),
                 sequence: e.sequence(), key: bytesOut(e.keyArray()),
                 value: bytesOut(e.valueArray()), version: e.version(),
                 timestamp: e.timestamp() });
    }
    return out;
  });
}

export function toStats(a: Answer): Stats {
  return guard('stats', () => {
    const r = a.result(p.Result.StatsResult, new p.StatsResult(), 'stats');
    const last: bigint[] = [];
    for (let i = 0; i < r.lastSequencesLength(); i++) last.push(r.lastSequences(i)!);
    return {
      keys: r.keys(), tombstones: r.tombstones(), segments: r.segments(), logBytes: r.logBytes(),
      deadBytes: r.deadBytes(), indexBytes: r.indexBytes(), puts: r.puts(), deletes: r.deletes(),
      gets: r.gets(), fsyncs: r.fsyncs(), compactions: r.compactions(),
      expiredSwept: r.expiredSwept(), connections: r.connections(), requests: r.requests(),
      uptimeMs: r.uptimeMs(), shardCount: r.shardCount(), lastSequences: last,
    };
  });
}

export function toHello(a: Answer): HelloInfo {
  return guard('hello', () => {
    const r = a.result(p.Result.HelloResult, new p.HelloResult(), 'hello');
    const members = [];
    for (let i = 0; i < r.membersLength(); i++) {
      const m = r.members(i)!;
      members.push({ nodeId: m.nodeId() ?? '', address: m.address() ?? '' });
    }
    return {
      protocolVersion: r.protocolVersion(), nodeId: r.nodeId() ?? '', shardCount: r.shardCount(),
      maxFrameBytes: r.maxFrameBytes(), maxKeyBytes: r.maxKeyBytes(),
      maxValueBytes: r.maxValueBytes(), maxBatchItems: r.maxBatchItems(), members,
      serverVersion: r.serverVersion() ?? '',
      keyPrefix: Uint8Array.from(r.keyPrefixArray() ?? []),
    };
  });
}

/**
 * Splits received chunks into frames. Chunks are kept in a list and joined
 * once per frame that spans several of them, so a large answer costs one
 * copy, not one per chunk. A length of 0 or over maxFrameBytes is refused at
 * once, before anything of that size is buffered.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(private readonly maxFrameBytes = 64 << 20) {}

  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const frames: Buffer[] = [];
    while (this.size >= 4) {
      if (this.chunks[0].length < 4) this.chunks = [Buffer.concat(this.chunks, this.size)];
      const head = this.chunks[0];
      const length = head.readUInt32LE(0);
      if (length === 0 || length > this.maxFrameBytes) {
        throw new ProtocolError(
          `the server announced a frame of ${length} bytes (limit ${this.maxFrameBytes}): ` +
          'not the logkv protocol');
      }
      const total = 4 + length;
      if (this.size < total) break;
      let source = head;
      if (head.length < total) {
        source = Buffer.concat(this.chunks, this.size);
        this.chunks = [source];
      }
      frames.push(source.subarray(0, total));
      if (source.length > total) this.chunks[0] = source.subarray(total);
      else this.chunks.shift();
      this.size -= total;
    }
    return frames;
  }

  get pendingBytes(): number {
    return this.size;
  }
}
