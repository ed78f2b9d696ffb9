#!/usr/bin/env python3
"""A tour of the sync client: quickstart.py [host:port]"""
import sys

import logkv

with logkv.Client(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070") as kv:
    written = kv.put(b"greeting", b"hello from Python")
    print("put version", written.version)
    print("get", kv.get(b"greeting").value)

    # Compare-and-set: only if the key is still at the version we read.
    try:
        kv.put(b"greeting", b"stale", if_version=written.version + 1)
    except logkv.FailedPreconditionError as error:
        print("CAS refused:", error.message)

    # A pipeline sends many calls at once and reads the answers together.
    with kv.pipeline() as p:
        for i in range(100):
            p.put(b"items/%d" % i, b"value %d" % i, ttl_ms=60_000)
        p.execute()
    print("scanned", sum(len(page.items) for page in kv.scan(prefix=b"items/", limit=30)), "keys")

    # A watch streams changes and resumes by itself after a reconnect.
    with kv.watch(b"items/") as watch:
        kv.delete(b"items/7")
        for event in watch:
            print("event", event.type, event.key)
            break
