#!/usr/bin/env python3
"""Pipelined SET/GET throughput of the Python logkv client beside redis-py.

Both clients run the same workload in this process, one after the other:
N keys of VALUE bytes written then read, PIPELINE requests per round trip
(logkv: Client.pipeline(); redis-py: pipeline(transaction=False)), and the
same with asyncio (logkv.AsyncClient's pipeline();
redis.asyncio's pipeline). Prints one CSV row per client and operation, and
the median time of reading one 1 MiB value. Run by bench/vs-redis-clients.sh.

  python_bench.py --logkv 127.0.0.1:7070 --redis 127.0.0.1:6379 [-n 100000] [-P 100] [-R 3]
"""
import argparse
import asyncio
import statistics
import time

import redis
import redis.asyncio

import logkv


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sync_logkv(address, keys, value, pipeline):
    kv = logkv.Client(address, request_timeout=60)
    out = {}

    def run(op):
        for i in range(0, len(keys), pipeline):
            p = kv.pipeline()
            for key in keys[i:i + pipeline]:
                if op == "SET":
                    p.put(key, value)
                else:
                    p.get(key)
            results = p.execute()
            if op == "GET":
                assert results[-1].value == value
    for op in ("SET", "GET"):
        out[op] = len(keys) / timed(lambda: run(op))
    kv.put(b"bench/large", b"x" * (1 << 20))
    samples = [timed(lambda: kv.get(b"bench/large")) for _ in range(20)]
    kv.close()
    return out, statistics.median(samples)


def sync_redis(address, keys, value, pipeline):
    host, port = address.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port))
    out = {}

    def run(op):
        for i in range(0, len(keys), pipeline):
            p = r.pipeline(transaction=False)
            for key in keys[i:i + pipeline]:
                if op == "SET":
                    p.set(key, value)
                else:
                    p.get(key)
            results = p.execute()
            if op == "GET":
                assert results[-1] == value
    for op in ("SET", "GET"):
        out[op] = len(keys) / timed(lambda: run(op))
    r.set(b"bench/large", b"x" * (1 << 20))
    samples = [timed(lambda: r.get(b"bench/large")) for _ in range(20)]
    r.close()
    return out, statistics.median(samples)


async def async_logkv(address, keys, value, pipeline):
    kv = await logkv.AsyncClient(address, request_timeout=60).connect()
    out = {}
    for op in ("SET", "GET"):
        start = time.perf_counter()
        for i in range(0, len(keys), pipeline):
            p = kv.pipeline()
            for key in keys[i:i + pipeline]:
                if op == "SET":
                    p.put(key, value)
                else:
                    p.get(key)
            results = await p.execute()
            if op == "GET":
                assert results[-1].value == value
        out[op] = len(keys) / (time.perf_counter() - start)
    await kv.close()
    return out


async def async_redis(address, keys, value, pipeline):
    host, port = address.rsplit(":", 1)
    r = redis.asyncio.Redis(host=host, port=int(port))
    out = {}
    for op in ("SET", "GET"):
        start = time.perf_counter()
        for i in range(0, len(keys), pipeline):
            p = r.pipeline(transaction=False)
            for key in keys[i:i + pipeline]:
                if op == "SET":
                    p.set(key, value)
                else:
                    p.get(key)
            results = await p.execute()
            if op == "GET":
                assert results[-1] == value
        out[op] = len(keys) / (time.perf_counter() - start)
    await r.close()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--logkv", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("-P", "--pipeline", type=int, default=100)
    parser.add_argument("-R", "--rounds", type=int, default=3)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    keys = [b"bench/%08d" % i for i in range(args.n)]
    value = b"v" * args.value_bytes
    # Rounds alternate the clients, so a busy moment of a shared machine hits
    # both; rates and ratios are the medians over the rounds.
    rates = {}
    ratios = {}
    large = {}
    for _ in range(args.rounds):
        now = {}
        now["logkv-python sync"], large["logkv-python"] = sync_logkv(args.logkv, keys, value,
                                                                     args.pipeline)
        now["redis-py sync"], large["redis-py"] = sync_redis(args.redis, keys, value,
                                                             args.pipeline)
        now["logkv-python asyncio"] = asyncio.run(async_logkv(args.logkv, keys, value,
                                                              args.pipeline))
        now["redis-py asyncio"] = asyncio.run(async_redis(args.redis, keys, value,
                                                          args.pipeline))
        for client, ops in now.items():
            for op, rate in ops.items():
                rates.setdefault((client, op), []).append(rate)
        for mode in ("sync", "asyncio"):
            for op in ("SET", "GET"):
                ratios.setdefault((mode, op), []).append(
                    now["logkv-python " + mode][op] / now["redis-py " + mode][op])
    print("client,op,value")
    for (client, op), values in rates.items():
        print("%s (ops/s),%s,%.0f" % (client, op, statistics.median(values)))
    for (mode, op), values in ratios.items():
        print("ratio logkv/redis python %s,%s,%.2f" % (mode, op, statistics.median(values)))
    for (mode, op), values in ratios.items():
        print("lowest round's ratio python %s,%s,%.2f" % (mode, op, min(values)))
    for client, seconds in large.items():
        print("1 MiB GET median ms %s,GET,%.2f" % (client, seconds * 1000))


if __name__ == "__main__":
    main()
