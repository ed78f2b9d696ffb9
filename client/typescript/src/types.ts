// Plain result and option types of the client. 64-bit numbers of the
// protocol (versions, timestamps, sequences) are bigint: hybrid-clock
// timestamps exceed Number.MAX_SAFE_INTEGER.

export type Consistency = 'default' | 'eventual' | 'strong';

export interface Value {
  value: Buffer;
  version: bigint;
  timestamp: bigint;
  expiryUnixMs: number; // 0 = no expiry
}

export interface WriteResult {
  version: bigint;
  timestamp: bigint;
  sequence: bigint;
  shard: number;
}

/** One item of a batch: a put, or a delete when value is null/undefined. */
export interface BatchOp {
  key: Uint8Array | string;
  value?: Uint8Array | string | null;
  ttlMs?: number;
}

export interface BatchItemResult {
  status: number; // wire StatusCode, 0 = Ok
  message: string;
  version: bigint;
  ok: boolean;
  error: Error | null;
}

export interface ScanItem {
  key: Buffer;
  value: Value;
}

export interface ScanPage {
  items: ScanItem[];
  nextCursor: Buffer; // empty when nothing more
}

export interface Event {
  type: 'put' | 'delete';
  shard: number;
  sequence: bigint;
  key: Buffer;
  value: Buffer;
  version: bigint;
  timestamp: bigint;
}

export interface Stats {
  keys: bigint; tombstones: bigint; segments: bigint; logBytes: bigint; deadBytes: bigint;
  indexBytes: bigint; puts: bigint; deletes: bigint; gets: bigint; fsyncs: bigint;
  compactions: bigint; expiredSwept: bigint; connections: bigint; requests: bigint;
  uptimeMs: bigint; shardCount: number; lastSequences: bigint[];
}

export interface Member {
  nodeId: string;
  address: string;
}

export interface HelloInfo {
  protocolVersion: number;
  nodeId: string;
  shardCount: number;
  maxFrameBytes: number;
  maxKeyBytes: number;
  maxValueBytes: number;
  maxBatchItems: number;
  members: Member[];
  serverVersion: string;
  /**
   * What the node puts before this session's keys (the tenant's prefix with
   * auth on): keys are placed on the ring as keyPrefix + key.
   */
  keyPrefix: Uint8Array;
}
