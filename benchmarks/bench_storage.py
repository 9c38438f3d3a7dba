"""Throughput and memory of the Storage façade, beside plain file I/O measured in the same run.

Puts go through ``Storage.put_object`` (validation, quota pre-check, blob writer with SHA-256,
fsync and rename, then the metadata actor's SQLite transaction) fed 1 MiB chunks by a sender
task over a bounded memory channel, as a PutObject handler does; gets stream the whole object
with ``Storage.get_object``. The baselines are a plain loop of 1 MiB ``write`` calls plus one
``fsync`` (no hashing) and a plain loop of 1 MiB ``read`` calls, on the same disk. Every put
uses fresh content (no dedup); reads are warm (just written, in the page cache, for both).
Figures are the median of ``--repeat`` runs after one warm-up.

Small operations: sequential and 32-way concurrent puts of 100-byte objects (each its own
content, so each creates a file and a row), and heads.

Memory: a child process writes a 1 GiB object through ``put_object``, and another reads it
back; each reports its peak RSS (``VmHWM``) above its idle RSS after start-up, resetting the
high-water mark first through ``/proc/self/clear_refs`` when the kernel allows it.

Usage: python benchmarks/bench_storage.py [--sizes 1,16,256] [--repeat 3] [--dir DIR]
       [--rss-mib 1024] [--small 300]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import trio

from anvil_trio.storage import Storage, StorageConfig, run_storage
from _baselines import chunk, raw_read, raw_write









async def put(s: Storage, key: str, mib: int, run: int) -> float:
    send, receive = trio.open_memory_channel[bytes](4)

    async def sender() -> None:
        async with send:
            for i in range(mib):
                await send.send(chunk(run, i))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        async with receive:
            await s.put_object("bench", "bkt", key, receive)
    return time.perf_counter() - start


async def get(s: Storage, key: str) -> float:
    start = time.perf_counter()
    _, reader = await s.get_object("bench", "bkt", key)
    async with reader:
        async for _ in reader:
            pass
    return time.perf_counter() - start


async def open_storage(nursery: trio.Nursery, data_dir: pathlib.Path, *, fresh: bool) -> Storage:
    s = await nursery.start(functools.partial(run_storage, StorageConfig(data_dir=data_dir)))
    if fresh:
        await s.create_tenant("bench")
        await s.create_bucket("bench", "bkt")
    return s


async def throughput(s: Storage, raw_dir: pathlib.Path, mib: int, run: int) -> list[float]:
    """One round: MiB/s of raw write+fsync, put_object, raw read, get_object."""
    raw_path = raw_dir / f"{mib}.bin"
    t_raw_w = await trio.to_thread.run_sync(raw_write, raw_path, mib, run)
    t_put = await put(s, f"obj{mib}", mib, run + 1)
    t_raw_r = await trio.to_thread.run_sync(raw_read, raw_path)
    t_get = await get(s, f"obj{mib}")
    raw_path.unlink()
    await s.delete_object("bench", "bkt", f"obj{mib}")  # unversioned: the file goes too
    return [mib / t for t in (t_raw_w, t_put, t_raw_r, t_get)]


async def small_ops(s: Storage, count: int) -> dict[str, float]:
    async def one_chunk(data: bytes):
        yield data

    async def timed(fn, n: int, width: int) -> float:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(width):
                nursery.start_soon(lambda w=w: _worker(fn, range(w, n, width)))
        return n / (time.perf_counter() - start)

    async def _worker(fn, indices) -> None:
        for i in indices:
            await fn(i)

    async def small_put(i: int, tag: str) -> None:
        await s.put_object("bench", "bkt", f"small/{tag}/{i}",
                           one_chunk(tag.encode() + i.to_bytes(8, "big") + b"." * 90))

    async def head(i: int, tag: str) -> None:
        await s.head_object("bench", "bkt", f"small/{tag}/{i}")

    return {
        "put 100 B, 1 task": await timed(lambda i: small_put(i, "seq"), count, 1),
        "put 100 B, 32 tasks": await timed(lambda i: small_put(i, "par"), count, 32),
        "head, 1 task": await timed(lambda i: head(i, "seq"), count, 1),
        "head, 32 tasks": await timed(lambda i: head(i, "par"), count, 32),
    }


async def main(args: argparse.Namespace, root: pathlib.Path) -> None:
    sizes = [int(x) for x in args.sizes.split(",")]
    raw_dir = root / "raw"
    raw_dir.mkdir()
    async with trio.open_nursery() as nursery:
        s = await open_storage(nursery, root / "data", fresh=True)
        await throughput(s, raw_dir, 1, 0)  # warm-up
        rows = []
        for n, mib in enumerate(sizes):
            rounds = [await throughput(s, raw_dir, mib, 1000 * (n + 1) + 2 * r)
                      for r in range(args.repeat)]
            rows.append((mib, *(statistics.median(col) for col in zip(*rounds))))
        small = await small_ops(s, args.small)
        await s.stop()
    rss = {phase: rss_child(root / "rss", phase, args.rss_mib) for phase in ("write", "read")}

    print("| size MiB | raw write+fsync | put_object | put/raw | raw read | get_object | get/raw |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for mib, raw_w, put_, raw_r, get_ in rows:
        print(f"| {mib} | {raw_w:,.0f} | {put_:,.0f} | {put_ / raw_w:.2f} | {raw_r:,.0f} "
              f"| {get_:,.0f} | {get_ / raw_r:.2f} |")
    print("(MiB/s, median of %d runs)\n" % args.repeat)
    print("| small operation | ops/s |")
    print("|---|---:|")
    for name, rate in small.items():
        print(f"| {name} | {rate:,.0f} |")
    print(f"({args.small} operations each)\n")
    print(f"| {args.rss_mib} MiB object | idle RSS MiB | peak RSS MiB | growth MiB | HWM reset |")
    print("|---|---:|---:|---:|---|")
    for phase, r in rss.items():
        print(f"| {phase} ({r['mib_s']:,.0f} MiB/s) | {r['idle'] / 1024:.1f} "
              f"| {r['peak'] / 1024:.1f} | {(r['peak'] - r['idle']) / 1024:.1f} "
              f"| {'yes' if r['reset'] else 'no'} |")
    print("(growth = VmHWM during the operation - VmRSS at idle; target < 64 MiB)")


# ------------------------------------------------------------------------- RSS child


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return status_kib("VmHWM") <= status_kib("VmRSS") + 64


def rss_child(data_dir: pathlib.Path, phase: str, mib: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rss-child", phase, "--rss-mib", str(mib),
                          "--dir", str(data_dir)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def rss_main(phase: str, data_dir: pathlib.Path, mib: int) -> None:
    async with trio.open_nursery() as nursery:
        s = await open_storage(nursery, data_dir, fresh=phase == "write")
        reset = reset_hwm()
        idle = status_kib("VmRSS")
        if phase == "write":
            elapsed = await put(s, "big", mib, 7)
        else:
            elapsed = await get(s, "big")
        peak = status_kib("VmHWM")
        await s.stop()
    print(json.dumps({"idle": idle, "peak": peak, "reset": reset, "mib_s": mib / elapsed}))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,16,256", help="comma-separated sizes in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median)")
    parser.add_argument("--small", type=int, default=300, help="small operations per row")
    parser.add_argument("--rss-mib", type=int, default=1024, help="size of the RSS object")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--rss-child", choices=["write", "read"], help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    if args.rss_child:
        trio.run(rss_main, args.rss_child, pathlib.Path(args.dir), args.rss_mib)
    else:
        with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
            trio.run(main, args, pathlib.Path(scratch))
