// The promise-based client: pipelined connections, a pool per node, routing
// of keys to their owners in a cluster, failover, timeouts and resumable
// watches (docs/protocol.md).
//
// Every call registers a pending entry under a fresh request id and queues
// its frame; frames queued in one turn of the event loop are written
// together, and answers (in any order) complete the entry with the same id.
// A sweeper fails calls past their deadline and drops the connection, whose
// late answers could no longer be told apart.
//
// Backpressure: a connection has at most maxInFlight requests awaiting
// answers and writes nothing new while the socket's buffer is full
// (socket.write returned false, until 'drain'); calls beyond that wait in a
// backlog, unencoded, so any number of calls in flight buffers a bounded
// amount.
import * as net from 'node:net';
import * as tls from 'node:tls';

import {
  Answer, Bytes, decode, Encoder, FrameReader, toBatch, toBytes, toEvents, toHello, toScan,
  toStats, toValue, toWrite,
} from './codec.js';
import {
  DeadlineExceededError, isTransport, LogkvError, ProtocolError, transportError, UnavailableError,
} from './errors.js';
import { Ring } from './placement.js';
import type {
  BatchItemResult, BatchOp, Consistency, Event, HelloInfo, Member, ScanPage, Stats, Value,
  WriteResult,
} from './types.js';

const SWEEP_MS = 100;

export interface ClientOptions {
  /** "host:port" strings (or one comma-separated string), tried in order. */
  nodes?: string[] | string;
  /** API key sent in Hello (servers with --auth=on). */
  apiKey?: string;
  clientName?: string;
  connectTimeoutMs?: number;
  /** A call without an answer in time fails with DeadlineExceededError. */
  requestTimeoutMs?: number;
  /** Connections per node; calls are spread over them, each pipelined. */
  poolSize?: number;
  /** In a cluster, send each key's get/put/delete/getVersion to its owners. */
  routeToOwners?: boolean;
  /** Extra attempts of a read on the next node after a transport failure. */
  readRetries?: number;
  /**
   * TLS options: connections are made with tls.connect, for a logkvd serving
   * TLS (--tls-cert/--tls-key; docs/tls.md) or a TLS-terminating proxy.
   */
  tls?: tls.ConnectionOptions;
  maxFrameBytes?: number;
  /** How long a watch keeps trying to resume after its connection broke. */
  watchReconnectTimeoutMs?: number;
  /** Requests awaiting their answer on one connection at most; more wait. */
  maxInFlight?: number;
}

type Resolved = Required<Omit<ClientOptions, 'apiKey' | 'tls' | 'nodes'>> &
  Pick<ClientOptions, 'apiKey' | 'tls'> & { nodes: string[] };

function resolveOptions(o: ClientOptions): Resolved {
  const nodes = typeof o.nodes === 'string' ? o.nodes.split(',').filter(Boolean)
    : o.nodes ?? ['127.0.0.1:7070'];
  if (nodes.length === 0) throw new RangeError('nodes: give at least one "host:port"');
  nodes.forEach(parseNode);
  return {
    nodes, apiKey: o.apiKey, tls: o.tls, clientName: o.clientName ?? 'logkv-typescript',
    connectTimeoutMs: o.connectTimeoutMs ?? 2000, requestTimeoutMs: o.requestTimeoutMs ?? 10000,
    poolSize: Math.max(1, o.poolSize ?? 1), routeToOwners: o.routeToOwners ?? true,
    readRetries: o.readRetries ?? 1, maxFrameBytes: o.maxFrameBytes ?? 64 << 20,
    watchReconnectTimeoutMs: o.watchReconnectTimeoutMs ?? 10000,
    maxInFlight: Math.max(1, o.maxInFlight ?? 4096),
  };
}

export function parseNode(node: string): { host: string; port: number } {
  const colon = node.lastIndexOf(':');
  let host = node.slice(0, colon);
  const port = Number(node.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new RangeError(`node "${node}" is not host:port`);
  }
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port };
}

interface Pending {
  resolve: (answer: Answer) => void;
  reject: (error: Error) => void;
  deadline: number;
}

/** One connection that said Hello; any number of calls may be in flight on it. */
export class Connection {
  readonly encoder = new Encoder();
  hello!: HelloInfo;
  closed = false;
  lastId = 0;
  private nextId = 1;
  private socket!: net.Socket;
  private readonly reader: FrameReader;
  private readonly pending = new Map<number, Pending>();
  private readonly streams = new Map<number, (answer: Answer | Error) => void>();
  private out: Buffer[] = [];
  private sweeper: NodeJS.Timeout | null = null;
  // Calls waiting for room (maxInFlight, a full socket buffer), from backlogHead on.
  private backlog: Array<{ encode: (id: number) => Buffer; entry: Pending }> = [];
  private backlogHead = 0;
  private blocked = false;  // socket.write returned false; waiting for 'drain'
  /** The most requests awaiting answers at once (for tests and monitoring). */
  peakInFlight = 0;
  /** The largest number of bytes the socket held unsent. */
  peakWriteBuffer = 0;

  private constructor(readonly address: string, private readonly options: Resolved) {
    this.reader = new FrameReader(options.maxFrameBytes);
  }

  static async open(address: string, options: Resolved): Promise<Connection> {
    const conn = new Connection(address, options);
    await conn.connect();
    let answer: Answer;
    try {
      answer = await conn.call((id) => conn.encoder.hello(id, options.apiKey, options.clientName),
                               options.connectTimeoutMs);
    } catch (error) {
      conn.close();
      if (error instanceof DeadlineExceededError) throw transportError(error.message, false);
      throw error;
    }
    if (answer.status !== 0) {
      conn.close();
      throw answer.error(`hello refused by ${address}`);
    }
    try {
      conn.hello = toHello(answer);
    } catch (error) {
      conn.close();
      throw error;
    }
    return conn;
  }

  private connect(): Promise<void> {
    const { host, port } = parseNode(this.address);
    return new Promise((resolve, reject) => {
      const socket = this.options.tls
        ? tls.connect({ ...this.options.tls, host, port,
                        servername: net.isIP(host) ? undefined : host })
        : net.connect({ host, port });
      this.socket = socket;
      socket.setNoDelay(true);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(transportError(`connect to ${this.address} timed out`, false));
      }, this.options.connectTimeoutMs);
      const onError = (error: Error) => {
        clearTimeout(timer);
        reject(transportError(`connect to ${this.address}: ${error.message}`, false));
      };
      socket.once('error', onError);
      socket.once(this.options.tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        socket.on('error', (error) => this.lost(`${this.address}: ${error.message}`));
        socket.on('close', () => this.lost(`${this.address}: the node closed the connection`));
        socket.on('data', (chunk: Buffer) => this.received(chunk));
        resolve();
      });
    });
  }

  close(): void {
    if (!this.closed) {
      this.socket?.destroy();
      this.lost(`${this.address}: the connection was closed`);
    }
  }

  private id(): number {
    this.lastId = this.nextId++;
    return this.lastId;
  }

  private queue(frame: Buffer): void {
    if (this.out.length === 0) process.nextTick(() => this.flush());
    this.out.push(frame);
  }

  private flush(): void {
    const out = this.out;
    this.out = [];
    if (out.length && !this.closed) {
      const room = this.socket.write(out.length === 1 ? out[0] : Buffer.concat(out));
      this.peakWriteBuffer = Math.max(this.peakWriteBuffer, this.socket.writableLength);
      if (!room && !this.blocked) {
        this.blocked = true;
        this.socket.once('drain', () => {
          this.blocked = false;
          this.pump();
        });
      }
    }
  }

  private hasRoom(): boolean {
    return !this.blocked && this.pending.size < this.options.maxInFlight;
  }

  /** Sends calls of the backlog while there is room. */
  private pump(): void {
    const backlog = this.backlog;
    while (this.backlogHead < backlog.length && this.hasRoom() && !this.closed) {
      const { encode, entry } = backlog[this.backlogHead];
      backlog[this.backlogHead++] = undefined as never;
      this.send(encode, entry);
    }
    if (this.backlogHead === backlog.length) {
      this.backlog = [];
      this.backlogHead = 0;
    } else if (this.backlogHead > 1024 && this.backlogHead * 2 > backlog.length) {
      this.backlog = backlog.slice(this.backlogHead);
      this.backlogHead = 0;
    }
  }

  private send(encode: (id: number) => Buffer, entry: Pending): void {
    const id = this.id();
    let frame: Buffer;
    try {
      frame = encode(id);
    } catch (error) {
      entry.reject(error as Error);
      return;
    }
    this.pending.set(id, entry);
    if (this.pending.size > this.peakInFlight) this.peakInFlight = this.pending.size;
    this.queue(frame);
  }

  /** The Answer to encode(requestId), or a rejection (transport, timeout). */
  call(encode: (id: number) => Buffer, timeoutMs: number): Promise<Answer> {
    if (this.closed) {
      return Promise.reject(transportError(`${this.address}: not connected`, false));
    }
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, deadline: Date.now() + timeoutMs };
      if (this.backlogHead < this.backlog.length || !this.hasRoom()) {
        this.backlog.push({ encode, entry });
      } else {
        this.send(encode, entry);
      }
      if (this.sweeper === null) {
        this.sweeper = setTimeout(() => this.sweep(), SWEEP_MS);
      }
    });
  }

  /** Sends a streaming request (watch): onAnswer gets each of its frames, or the error. */
  stream(encode: (id: number) => Buffer, onAnswer: (answer: Answer | Error) => void): number {
    const id = this.id();
    this.streams.set(id, onAnswer);
    this.queue(encode(id));
    return id;
  }

  sendOnly(encode: (id: number) => Buffer): void {
    if (!this.closed) this.queue(encode(this.id()));
  }

  private sweep(): void {
    this.sweeper = null;
    if (this.closed || (this.pending.size === 0 && this.backlogHead === this.backlog.length)) {
      return;
    }
    const now = Date.now();
    let expired = false;
    for (const [id, entry] of this.pending) {
      if (entry.deadline <= now) {
        this.pending.delete(id);
        entry.reject(new DeadlineExceededError(
          `no answer from ${this.address} within the request timeout`));
        expired = true;
      }
    }
    // A call still in the backlog at its deadline: the node is that slow.
    const waiting = this.backlog[this.backlogHead];
    if (waiting !== undefined && waiting.entry.deadline <= now) expired = true;
    if (expired) {
      this.close();
      return;
    }
    this.sweeper = setTimeout(() => this.sweep(), SWEEP_MS);
  }

  private received(chunk: Buffer): void {
    try {
      for (const frame of this.reader.push(chunk)) {
        const answer = decode(frame);
        const entry = this.pending.get(answer.requestId);
        if (entry !== undefined) {
          this.pending.delete(answer.requestId);
          entry.resolve(answer);
          continue;
        }
        const stream = this.streams.get(answer.requestId);
        if (stream !== undefined) {
          if (answer.status !== 0 || answer.response.resultType() === 0) {
            this.streams.delete(answer.requestId);
          }
          stream(answer);
          continue;
        }
        if (answer.requestId === 0) {
          // The server refuses the stream itself (and closes it), or garbage.
          this.fail(answer.status !== 0 ? answer.error(`${this.address} closed the connection`)
            : new ProtocolError(`${this.address} sent an answer without request id`));
          return;
        }
        if (answer.requestId > this.lastId) {
          throw new ProtocolError(`${this.address} answered request ${answer.requestId}, never sent`);
        }
        // Otherwise a late answer of a call that timed out: dropped.
      }
    } catch (error) {
      const e = error instanceof LogkvError ? error : new ProtocolError(String(error));
      const wrapped = transportError(`${this.address}: ${e.message}`, true);
      this.fail(wrapped);
      return;
    }
    if (this.backlogHead < this.backlog.length) this.pump();
  }

  private fail(error: LogkvError): void {
    this.socket.destroy();
    this.lost('', error);
  }

  private lost(message: string, error?: LogkvError): void {
    this.closed = true;
    if (this.sweeper !== null) {
      clearTimeout(this.sweeper);
      this.sweeper = null;
    }
    const failure = error ?? transportError(message, true);
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const entry of pending) entry.reject(failure);
    const streams = [...this.streams.values()];
    this.streams.clear();
    for (const onAnswer of streams) onAnswer(failure);
    // Calls of the backlog were never sent: safe to send elsewhere.
    const backlog = this.backlog.slice(this.backlogHead);
    this.backlog = [];
    this.backlogHead = 0;
    const unsent = transportError(failure.message, false);
    for (const { entry } of backlog) entry.reject(unsent);
  }
}

/** Which nodes to try for a key: its owners first, then the seed nodes. */
class Router {
  private ring: Ring | null = null;
  private addressOf = new Map<string, string>();
  private membersKey = '';
  private keyPrefix: Uint8Array = new Uint8Array(0);
  preferred = 0;

  constructor(private readonly options: Resolved) {}

  get routing(): boolean {
    return this.ring !== null;
  }

  update(members: Member[], keyPrefix: Uint8Array = new Uint8Array(0)): void {
    // The servers place the engine key: the tenant's prefix, then the key.
    this.keyPrefix = keyPrefix;
    if (!this.options.routeToOwners || members.length < 2) return;
    const key = members.map((m) => `${m.nodeId}=${m.address}`).sort().join(',');
    if (key === this.membersKey) return;
    this.ring = new Ring(members.map((m) => m.nodeId));
    this.addressOf = new Map(members.filter((m) => m.address).map((m) => [m.nodeId, m.address]));
    this.membersKey = key;
  }

  candidates(key?: Uint8Array): string[] {
    const nodes = this.options.nodes;
    const seeds = [...nodes.slice(this.preferred), ...nodes.slice(0, this.preferred)];
    if (key === undefined || this.ring === null) return seeds;
    const placed = this.keyPrefix.length === 0 ? key : Buffer.concat([this.keyPrefix, key]);
    const owners = this.ring.preferenceList(placed, this.ring.members.length)
      .map((id) => this.addressOf.get(id)).filter((a): a is string => a !== undefined);
    return [...owners, ...seeds.filter((s) => !owners.includes(s))];
  }

  answered(address: string): void {
    const index = this.options.nodes.indexOf(address);
    if (index >= 0) this.preferred = index;
  }
}

type Convert<T> = (answer: Answer) => T;

function valueOrNull(answer: Answer): Value | null {
  return answer.status === 1 ? null : toValue(answer);
}

function writeOrNull(answer: Answer): WriteResult | null {
  return answer.status === 1 ? null : toWrite(answer, 'delete');
}

export interface PutOptions {
  ttlMs?: number;
  /** Compare-and-set: the key must be at this version now (0n = absent). */
  ifVersion?: bigint;
  consistency?: Consistency;
  timeoutMs?: number;
}

export interface ScanOptions {
  prefix?: Bytes;
  startKey?: Bytes;
  endKey?: Bytes;
  afterKey?: Bytes;
  limit?: number;
  keysOnly?: boolean;
  timeoutMs?: number;
}

/**
 * logkv client.
 *
 *     const kv = await Client.connect({ nodes: ['127.0.0.1:7070'] });
 *     await kv.put('greeting', 'hello');
 *     const value = await kv.get('greeting');   // { value: Buffer, version, ... } or null
 *     await Promise.all(keys.map((k) => kv.get(k)));   // pipelined
 *     await kv.close();
 */
export class Client {
  helloInfo: HelloInfo | null = null;
  private readonly options: Resolved;
  private readonly router: Router;
  private readonly pools = new Map<string, Connection[]>();
  private readonly opening = new Map<string, Promise<Connection>>();
  private turn = 0;
  private closed = false;

  constructor(options: ClientOptions = {}) {
    this.options = resolveOptions(options);
    this.router = new Router(this.options);
  }

  /** A client connected to the first reachable node (rejects on a refused key). */
  static async connect(options: ClientOptions = {}): Promise<Client> {
    const client = new Client(options);
    await client.connection(undefined);
    return client;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const pool of this.pools.values()) for (const conn of pool) conn.close();
    this.pools.clear();
  }

  // ---- pool ----

  private async connection(address: string | undefined): Promise<Connection> {
    if (this.closed) throw new UnavailableError('the client is closed');
    const addresses = address !== undefined ? [address] : this.router.candidates();
    const failures: string[] = [];
    for (const addr of addresses) {
      let pool = this.pools.get(addr);
      if (pool === undefined) {
        pool = [];
        this.pools.set(addr, pool);
      }
      for (let i = pool.length - 1; i >= 0; i--) if (pool[i].closed) pool.splice(i, 1);
      if (pool.length >= this.options.poolSize) return pool[this.turn++ % pool.length];
      // One connection is opened at a time per node; concurrent callers share it.
      let opening = this.opening.get(addr);
      if (opening === undefined) {
        opening = Connection.open(addr, this.options);
        this.opening.set(addr, opening);
        opening.then((conn) => {
          pool!.push(conn);
          this.helloInfo = conn.hello;
          this.router.update(conn.hello.members, conn.hello.keyPrefix);
        }, () => {}).finally(() => this.opening.delete(addr));
      } else if (pool.length > 0) {
        return pool[this.turn++ % pool.length];
      }
      try {
        return await opening;
      } catch (error) {
        if (!isTransport(error)) throw error;
        failures.push(error.message);
        if (pool.length > 0) return pool[0];
      }
    }
    throw transportError(`no node reachable (${failures.join('; ')})`, false);
  }

  /** A pooled open connection to address, when the pool is full (no await needed). */
  private ready(address: string): Connection | undefined {
    const pool = this.pools.get(address);
    if (pool === undefined || pool.length < this.options.poolSize) return undefined;
    const conn = pool.length === 1 ? pool[0] : pool[this.turn++ % pool.length];
    return conn.closed ? undefined : conn;
  }

  private finish<T>(what: string, answer: Answer, convert: Convert<T>): T {
    if (answer.status !== 0 && !(answer.status === 1 && (convert === valueOrNull as unknown ||
                                                          convert === writeOrNull as unknown))) {
      throw answer.error(what);
    }
    return convert(answer);
  }

  private call<T>(what: string, encode: (conn: Connection, id: number) => Buffer,
                  convert: Convert<T>, o: { key?: Uint8Array; read?: boolean;
                                            timeoutMs?: number } = {}): Promise<T> {
    // The common case, kept free of awaits and arrays: one node (or no ring
    // yet), its connections open.
    if (o.key === undefined || !this.router.routing) {
      const address = this.options.nodes[this.router.preferred];
      const conn = this.ready(address);
      if (conn !== undefined) {
        const timeout = o.timeoutMs ?? this.options.requestTimeoutMs;
        return conn.call((id) => encode(conn, id), timeout).then(
          (answer) => this.finish(what, answer, convert),
          (error) => {
            if (!isTransport(error)) throw error;
            // A write that may have reached the node is not sent again.
            if (error.sent && !o.read) throw new UnavailableError(`${what}: ${error.message}`);
            return this.callSlow(what, encode, convert, o);
          });
      }
    }
    return this.callSlow(what, encode, convert, o);
  }

  private async callSlow<T>(what: string, encode: (conn: Connection, id: number) => Buffer,
                            convert: Convert<T>, o: { key?: Uint8Array; read?: boolean;
                                                      timeoutMs?: number } = {}): Promise<T> {
    const timeout = o.timeoutMs ?? this.options.requestTimeoutMs;
    let attemptsLeft = 1 + (o.read ? this.options.readRetries : 0);
    let last: UnavailableError | null = null;
    for (const address of this.router.candidates(o.key)) {
      let answer: Answer;
      try {
        const conn = await this.connection(address);
        answer = await conn.call((id) => encode(conn, id), timeout);
      } catch (error) {
        if (!isTransport(error)) throw error;
        last = error;
        if (error.sent && --attemptsLeft <= 0) {
          throw new UnavailableError(`${what}: ${error.message}`);
        }
        continue;
      }
      this.router.answered(address);
      return this.finish(what, answer, convert);
    }
    throw new UnavailableError(`${what}: ${last?.message ?? 'no node'}`);
  }

  // ---- operations ----

  async ping(): Promise<void> {
    await this.call('ping', (c, id) => c.encoder.ping(id), () => undefined, { read: true });
  }

  /** HelloInfo of a node: version, limits, cluster members. */
  async hello(): Promise<HelloInfo> {
    return (await this.connection(undefined)).hello;
  }

  /** Uses apiKey from now on: connections are replaced by ones that said Hello with it. */
  async auth(apiKey: string): Promise<HelloInfo> {
    this.options.apiKey = apiKey;
    for (const pool of this.pools.values()) for (const conn of pool) conn.close();
    this.pools.clear();
    return this.hello();
  }

  /** The key's Value, or null when it is absent. */
  get(key: Bytes, o: { consistency?: Consistency; timeoutMs?: number } = {}): Promise<Value | null> {
    const k = toBytes(key);
    return this.call('get', (c, id) => c.encoder.get(id, k, o.consistency), valueOrNull,
                     { key: k, read: true, timeoutMs: o.timeoutMs });
  }

  /** That version's Value if the server keeps it (--versions), else null. */
  getVersion(key: Bytes, version: bigint, o: { timeoutMs?: number } = {}): Promise<Value | null> {
    const k = toBytes(key);
    return this.call('getVersion', (c, id) => c.encoder.getVersion(id, k, version), valueOrNull,
                     { key: k, read: true, timeoutMs: o.timeoutMs });
  }

  /** Writes; with ifVersion a compare-and-set (FailedPreconditionError on mismatch). */
  put(key: Bytes, value: Bytes, o: PutOptions = {}): Promise<WriteResult> {
    const k = toBytes(key);
    const v = toBytes(value);
    return this.call('put', (c, id) => c.encoder.put(id, k, v, o.ttlMs ?? 0, o.ifVersion,
                                                     o.consistency),
                     (a) => toWrite(a), { key: k, timeoutMs: o.timeoutMs });
  }

  /** Deletes; the WriteResult, or null when the key was absent. */
  delete(key: Bytes, o: { ifVersion?: bigint; consistency?: Consistency;
                          timeoutMs?: number } = {}): Promise<WriteResult | null> {
    const k = toBytes(key);
    return this.call('delete', (c, id) => c.encoder.delete(id, k, o.ifVersion, o.consistency),
                     writeOrNull, { key: k, timeoutMs: o.timeoutMs });
  }

  /** Applies the operations in order (not atomic); one result each. */
  batch(operations: BatchOp[], o: { consistency?: Consistency; timeoutMs?: number } = {}):
      Promise<BatchItemResult[]> {
    return this.call('batch', (c, id) => c.encoder.batch(id, operations, o.consistency), toBatch,
                     { timeoutMs: o.timeoutMs });
  }

  /** One page; page.nextCursor continues it (empty at the end). */
  scanPage(o: ScanOptions = {}): Promise<ScanPage> {
    return this.call('scan', (c, id) => c.encoder.scan(id, o), toScan,
                     { read: true, timeoutMs: o.timeoutMs });
  }

  /** Async iterator over pages until the range is exhausted. */
  async *scan(o: Omit<ScanOptions, 'afterKey'> = {}): AsyncGenerator<ScanPage> {
    let after: Uint8Array = new Uint8Array();
    for (;;) {
      const page = await this.scanPage({ ...o, afterKey: after });
      if (page.items.length > 0 || page.nextCursor.length === 0) yield page;
      if (page.nextCursor.length === 0) return;
      after = page.nextCursor;
    }
  }

  stats(o: { timeoutMs?: number } = {}): Promise<Stats> {
    return this.call('stats', (c, id) => c.encoder.stats(id), toStats,
                     { read: true, timeoutMs: o.timeoutMs });
  }

  /** Calls queued, then sent together: `await kv.pipeline().put(k, v).get(k).exec()`. */
  pipeline(): Pipeline {
    return new Pipeline(this);
  }

  /** Connections to a node ("host:port") open now (for tests and monitoring). */
  connections(address: string): readonly Connection[] {
    return this.pools.get(address) ?? [];
  }

  /** Events of keys with the prefix: `for await (const e of kv.watch('p/'))`. */
  watch(prefix: Bytes = '', afterSequences?: bigint[]): Watch {
    return new Watch(this.options, this.router, toBytes(prefix), afterSequences);
  }
}

/**
 * Calls queued and sent together by exec(), which resolves to their results
 * in order. Each call takes the client's path: in a cluster it goes to its
 * key's owner (the calls of one node leave in one write), with failover, and
 * a connection's maxInFlight bounds how many are in flight at once.
 */
export class Pipeline {
  private calls: Array<() => Promise<unknown>> = [];

  constructor(private readonly client: Client) {}

  get length(): number {
    return this.calls.length;
  }

  get(key: Bytes, o: { consistency?: Consistency } = {}): this {
    this.calls.push(() => this.client.get(key, o));
    return this;
  }

  put(key: Bytes, value: Bytes, o: Omit<PutOptions, 'timeoutMs'> = {}): this {
    this.calls.push(() => this.client.put(key, value, o));
    return this;
  }

  delete(key: Bytes, o: { ifVersion?: bigint; consistency?: Consistency } = {}): this {
    this.calls.push(() => this.client.delete(key, o));
    return this;
  }

  /**
   * Sends the queued calls; one result each, in order (Value | null for get,
   * WriteResult for put, WriteResult | null for delete). A failure rejects
   * with the first error in order, or with raiseOnError false is that
   * call's entry.
   */
  async exec(o: { raiseOnError?: boolean } = {}): Promise<unknown[]> {
    const calls = this.calls;
    this.calls = [];
    const settled = await Promise.allSettled(calls.map((call) => call()));
    return settled.map((result) => {
      if (result.status === 'fulfilled') return result.value;
      if (o.raiseOnError ?? true) throw result.reason;
      return result.reason;
    });
  }
}

/**
 * A change feed that survives reconnects: it remembers the last sequence
 * delivered per shard and, when its connection breaks, connects again to the
 * same node (sequences are a node's own), within watchReconnectTimeoutMs,
 * and resumes after them, so no event is lost or repeated. Started "from now", it first reads the shards' last
 * sequences (Stats), so it can resume even before its first event.
 */
export class Watch implements AsyncIterable<Event> {
  positions: bigint[] | null;
  reconnects = 0;
  /** The node the watch follows ("host:port"), once subscribed. */
  address: string | null = null;
  private conn: Connection | null = null;
  private id = 0;
  private readonly queue: Array<Answer | Error> = [];
  private wake: (() => void) | null = null;
  private ended = false;
  private started = false;

  constructor(private readonly options: Resolved, private readonly router: Router,
              readonly prefix: Uint8Array, afterSequences?: bigint[]) {
    this.positions = afterSequences && afterSequences.length ? [...afterSequences] : null;
  }

  /** Subscribes now (the first iteration would otherwise). */
  async start(): Promise<this> {
    if (!this.started) {
      this.started = true;
      await this.subscribe();
    }
    return this;
  }

  private push(item: Answer | Error): void {
    this.queue.push(item);
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  private async subscribe(): Promise<void> {
    const deadline = Date.now() + this.options.watchReconnectTimeoutMs;
    let last: Error | null = null;
    for (;;) {
      // Sequences are a node's own: a watch resumes on the node it started on.
      const addresses = this.address !== null ? [this.address] : this.router.candidates();
      for (const address of addresses) {
        let conn: Connection;
        try {
          conn = await Connection.open(address, this.options);
          if (this.positions === null) {
            const answer = await conn.call((id) => conn.encoder.stats(id),
                                           this.options.requestTimeoutMs);
            if (answer.status !== 0) {
              conn.close();
              throw answer.error('watch');
            }
            this.positions = toStats(answer).lastSequences;
          }
        } catch (error) {
          if (!isTransport(error)) throw error;
          last = error;
          continue;
        }
        const first = await new Promise<Answer | Error>((resolve) => {
          let firstSeen = false;
          const timer = setTimeout(() => {
            firstSeen = true;
            conn.close();
            resolve(transportError('watch: no answer', true));
          }, this.options.requestTimeoutMs);
          this.id = conn.stream((id) => conn.encoder.watch(id, this.prefix, this.positions!),
                                (answer) => {
                                  if (!firstSeen) {
                                    firstSeen = true;
                                    clearTimeout(timer);
                                    resolve(answer);
                                  } else {
                                    this.push(answer);
                                  }
                                });
        });
        if (first instanceof Error) {
          if (!isTransport(first)) throw first;
          last = first;
          continue;
        }
        if (first.status !== 0) {
          conn.close();
          throw first.error('watch');
        }
        this.conn = conn;
        this.address = address;
        this.push(first);
        return;
      }
      if (Date.now() >= deadline) {
        throw new UnavailableError(`watch: cannot resume: ${last?.message ?? 'no node'}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Event> {
    await this.start();
    for (;;) {
      while (this.queue.length === 0) {
        if (this.ended) return;
        await new Promise<void>((resolve) => { this.wake = resolve; });
      }
      const item = this.queue.shift()!;
      if (item instanceof Error) {
        if (this.ended) return;
        if (isTransport(item)) {
          this.conn?.close();
          this.reconnects++;
          await this.subscribe();
          continue;
        }
        throw item;
      }
      if (item.status !== 0) throw item.error('watch');
      if (item.response.resultType() === 0) return; // Ok after Unwatch
      for (const event of toEvents(item)) {
        const positions = this.positions!;
        if (event.shard < positions.length) {
          if (event.sequence <= positions[event.shard]) continue;
          positions[event.shard] = event.sequence;
        }
        yield event;
      }
    }
  }

  /** Ends the watch (Unwatch) and its connection; iteration stops. */
  async close(): Promise<void> {
    this.ended = true;
    const conn = this.conn;
    if (conn !== null && !conn.closed) {
      conn.sendOnly((id) => conn.encoder.unwatch(id, this.id));
      await new Promise((resolve) => setImmediate(resolve));
      conn.close();
    }
    this.push(new UnavailableError('closed'));
  }
}

export type { Event };
