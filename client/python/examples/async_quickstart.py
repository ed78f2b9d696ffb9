#!/usr/bin/env python3
"""The asyncio client: async_quickstart.py [host:port]"""
import asyncio
import sys

import logkv


async def main(address):
    async with logkv.AsyncClient(address) as kv:
        await kv.put(b"greeting", b"hello from asyncio")
        print("get", (await kv.get(b"greeting")).value)
        # Calls in flight at once are pipelined on one connection.
        await asyncio.gather(*(kv.put(b"items/%d" % i, b"v") for i in range(1000)))
        values = await asyncio.gather(*(kv.get(b"items/%d" % i) for i in range(1000)))
        print("read", sum(v is not None for v in values), "values")
        async for page in kv.scan(prefix=b"items/", limit=500):
            print("page of", len(page.items))
        watch = await kv.watch(b"items/").start()
        await kv.delete(b"items/1")
        async for event in watch:
            print("event", event.type, event.key)
            break
        await watch.close()


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070"))
