// A tour of the client: node dist/examples/quickstart.js [host:port]
import { Client, FailedPreconditionError } from '../src/index.js';

const kv = await Client.connect({ nodes: [process.argv[2] ?? '127.0.0.1:7070'] });
try {
  const written = await kv.put('greeting', 'hello from TypeScript');
  console.log('put version', written.version);
  console.log('get', (await kv.get('greeting'))?.value.toString());

  // Compare-and-set: only if the key is still at the version we read.
  try {
    await kv.put('greeting', 'stale', { ifVersion: written.version + 1n });
  } catch (error) {
    if (!(error instanceof FailedPreconditionError)) throw error;
    console.log('CAS refused:', error.message);
  }

  // Many calls in flight at once are pipelined on one connection.
  await Promise.all(Array.from({ length: 100 }, (_, i) => kv.put(`items/${i}`, `value ${i}`,
                                                                  { ttlMs: 60_000 })));
  let count = 0;
  for await (const page of kv.scan({ prefix: 'items/', limit: 30 })) count += page.items.length;
  console.log('scanned', count, 'keys');

  // A watch streams changes and resumes by itself after a reconnect.
  const watch = await kv.watch('items/').start();
  await kv.delete('items/7');
  for await (const event of watch) {
    console.log('event', event.type, event.key.toString());
    break;
  }
  await watch.close();
} finally {
  await kv.close();
}
