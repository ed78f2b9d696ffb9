// logkv: Node.js client of logkv's binary protocol. See README.md.
export { Client, Connection, Pipeline, Watch, parseNode } from './client.js';
export type { ClientOptions, PutOptions, ScanOptions } from './client.js';
export * from './errors.js';
export { Ring, keyHash, VIRTUAL_NODES_PER_MEMBER } from './placement.js';
export { FrameReader, decode, Encoder, PROTOCOL_VERSION } from './codec.js';
export type * from './types.js';
