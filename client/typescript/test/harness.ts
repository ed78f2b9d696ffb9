// Starts real logkvd processes on loopback for the client tests: ports are
// chosen by logkvd (--listen=127.0.0.1:0) and read from the "listening on"
// lines it prints; every wait is bounded; every process is stopped by
// close() or, at the latest, when the test process exits.
import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const LOGKVD = process.env.LOGKVD ?? 'logkvd';
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export class Server {
  port = 0;
  httpPort = 0;
  address = '';
  output = '';
  private child: ChildProcess | null = null;
  readonly dataDir: string;

  private constructor(readonly flags: string[], readonly nodeId?: string,
                      readonly seeds?: string[]) {
    this.dataDir = mkdtempSync(join(tmpdir(), 'logkv-tstest-'));
  }

  static async start(flags: string[] = [], o: { nodeId?: string; seeds?: string[] } = {}) {
    const server = new Server(flags, o.nodeId, o.seeds);
    try {
      await server.run(0);
    } catch (error) {
      server.close();
      throw error;
    }
    return server;
  }

  private run(port: number, timeoutMs = 30000): Promise<void> {
    const args = [`--data-dir=${this.dataDir}`, `--listen=127.0.0.1:${port}`, '--http=127.0.0.1:0',
                  '--threads=1', '--shards=2'];
    if (this.nodeId) {
      args.push(`--node-id=${this.nodeId}`, '--cluster-secret=client-tests',
                '--gossip-interval-ms=100');
    }
    if (this.seeds) args.push(`--seeds=${this.seeds.join(',')}`);
    args.push(...this.flags);
    const child = spawn(LOGKVD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    live.add(child);
    this.output = '';
    return new Promise((resolve, reject) => {
      const found: Record<string, number> = {};
      const timer = setTimeout(() => reject(new Error(`logkvd did not start: ${this.output}`)),
                               timeoutMs);
      const onData = (chunk: Buffer) => {
        this.output += chunk.toString();
        for (const m of this.output.matchAll(/listening on [0-9.]+:(\d+) \((binary|HTTP)/g)) {
          if (!(m[2] in found)) found[m[2]] = Number(m[1]);
        }
        if ('binary' in found && 'HTTP' in found) {
          clearTimeout(timer);
          this.port = found.binary;
          this.httpPort = found.HTTP;
          this.address = `127.0.0.1:${this.port}`;
          resolve();
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('exit', () => {
        clearTimeout(timer);
        reject(new Error(`logkvd exited: ${this.output}`));
      });
    });
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child === null || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
      child.once('exit', () => {
        clearTimeout(timer);
        live.delete(child);
        resolve();
      });
      child.kill(signal);
    });
  }

  /** Stops and starts again on the same port and data (retrying a port taken meanwhile). */
  async restart(): Promise<void> {
    const port = this.port;
    await this.stop();
    const deadline = Date.now() + 30000;
    for (;;) {
      try {
        await this.run(port);
        return;
      } catch (error) {
        if (Date.now() >= deadline) throw error;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  close(): Promise<void> {
    return this.stop().finally(() => rmSync(this.dataDir, { recursive: true, force: true }));
  }

  async http(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
    const answer = await fetch(`http://127.0.0.1:${this.httpPort}${path}`, {
      method, body: body === undefined ? undefined : JSON.stringify(body),
      headers: { 'Content-Type': 'application/json', ...headers },
      signal: AbortSignal.timeout(10000),
    });
    const text = await answer.text();
    if (!answer.ok) throw new Error(`${method} ${path}: ${answer.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  async protocolRequests(operation: string): Promise<number> {
    // With --auth=on the node's figures need the operator credential.
    const answer = await fetch(`http://127.0.0.1:${this.httpPort}/metrics?format=prometheus`,
                               { signal: AbortSignal.timeout(10000),
                                 headers: { Authorization: 'Bearer client-tests' } });
    let total = 0;
    for (const m of (await answer.text()).matchAll(
      /^logkv_protocol_requests_total\{([^}]*)\} (\S+)$/gm)) {
      if (m[1].includes(`operation="${operation}"`)) total += Number(m[2]);
    }
    return total;
  }

  /** Signs up, logs in and creates an API key (a server with --auth=on). */
  async apiKey(email = 'ts@example.com', username = 'tstest', password = 'ts-test-pass-1') {
    await this.http('POST', '/signup', { email, username, password });
    const login = await this.http('POST', '/login', { email, password });
    const token = login.access_token as string;
    const created = await this.http('POST', '/apikeys', { name: 'tests', scopes: ['read', 'write'] },
                                    { Authorization: `Bearer ${token}` });
    return { key: created.key as string, token, id: created.id as number };
  }
}

export class Cluster {
  readonly nodes: Server[] = [];

  static async start(size = 3, flags: string[] = []): Promise<Cluster> {
    const cluster = new Cluster();
    try {
      const first = await Server.start(flags, { nodeId: 'n0' });
      cluster.nodes.push(first);
      for (let i = 1; i < size; i++) {
        cluster.nodes.push(await Server.start(flags, { nodeId: `n${i}`, seeds: [first.address] }));
      }
      const deadline = Date.now() + 60000;
      for (;;) {
        let formed = 0;
        for (const node of cluster.nodes) {
          try {
            const members = await node.http('GET', '/nodes');
            if (members.filter((m: { state: string }) => m.state === 'alive').length >= size) formed++;
          } catch {
            // not yet
          }
        }
        if (formed === size) break;
        if (Date.now() > deadline) throw new Error('the cluster did not form');
        await new Promise((r) => setTimeout(r, 200));
      }
    } catch (error) {
      await cluster.close();
      throw error;
    }
    return cluster;
  }

  async close(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.close()));
  }
}

/** A loopback TCP server that runs handler on every connection. */
export class FakeServer {
  readonly address: string;
  private readonly sockets = new Set<net.Socket>();

  private constructor(private readonly server: net.Server) {
    const port = (server.address() as net.AddressInfo).port;
    this.address = `127.0.0.1:${port}`;
  }

  static async start(handler: (socket: net.Socket) => void): Promise<FakeServer> {
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => sockets.delete(socket));
      handler(socket);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const fake = new FakeServer(server);
    (fake as unknown as { sockets: Set<net.Socket> }).sockets = sockets;
    return fake;
  }

  close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
