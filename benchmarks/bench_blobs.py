"""Throughput of the blob store against plain file I/O, measured in the same run.

Writes go through ``BlobStore.write`` fed 1 MiB chunks by a sender task over a bounded memory
channel (as a PutObject handler does), and are compared with a plain loop of 1 MiB
``write`` calls plus one ``fsync``. Reads stream the whole blob with ``BlobStore.open_range``
and are compared with a plain loop of 1 MiB ``read`` calls on the same file. The store also
hashes (SHA-256) what it writes, so two more columns show that cost: "sha256 only" (hashing in
memory) and "raw write+sha256+fsync" (the plain loop hashing each chunk too: the like-for-like
baseline for ``BlobStore.write``).
Every write uses fresh content (no dedup). Reads are warm (the file was just written and is in
the page cache for both columns). Each figure is the median of ``--repeat`` runs, after one
warm-up run (worker threads started, directories created).

Usage: python benchmarks/bench_blobs.py [--sizes 1,16,256] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import pathlib
import statistics
import tempfile
import time

import trio

from anvil_trio.storage._blobs import BlobStore
from _baselines import chunk, raw_read, raw_write







def raw_hash_write(path: pathlib.Path, mib: int, run: int) -> float:
    start = time.perf_counter()
    hasher = hashlib.sha256()
    with open(path, "wb", buffering=0) as f:
        for i in range(mib):
            data = chunk(run, i)
            f.write(data)
            hasher.update(data)
        os.fsync(f.fileno())
    return time.perf_counter() - start




def hash_only(mib: int, run: int) -> float:
    start = time.perf_counter()
    hasher = hashlib.sha256()
    for i in range(mib):
        hasher.update(chunk(run, i))
    return time.perf_counter() - start


async def store_write(store: BlobStore, mib: int, run: int) -> tuple[float, str]:
    send, receive = trio.open_memory_channel[bytes](4)

    async def sender() -> None:
        async with send:
            for i in range(mib):
                await send.send(chunk(run, i))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        async with receive:
            written = await store.write(receive)
    elapsed = time.perf_counter() - start
    written.release()
    return elapsed, written.digest


async def store_read(store: BlobStore, digest: str) -> float:
    start = time.perf_counter()
    reader = await store.open_range(digest)
    async with reader:
        async for _ in reader:
            pass
    return time.perf_counter() - start


async def measure(store: BlobStore, raw_dir: pathlib.Path, mib: int, run: int) -> list[float]:
    """One round for ``mib``: MiB/s of raw write, raw hash+write, store write, hash only,
    raw read, store read."""
    raw_path = raw_dir / f"{mib}.bin"
    t_raw_hw = await trio.to_thread.run_sync(raw_hash_write, raw_path, mib, run + 3)
    raw_path.unlink()
    t_raw_w = await trio.to_thread.run_sync(raw_write, raw_path, mib, run)
    t_store_w, digest = await store_write(store, mib, run + 1)
    t_hash = await trio.to_thread.run_sync(hash_only, mib, run + 2)
    t_raw_r = await trio.to_thread.run_sync(raw_read, raw_path)
    t_store_r = await store_read(store, digest)
    raw_path.unlink()
    await store.delete_if_unpinned(digest)
    times = (t_raw_w, t_raw_hw, t_store_w, t_hash, t_raw_r, t_store_r)
    return [mib / t for t in times]


async def main(sizes: list[int], repeat: int, root: pathlib.Path) -> None:
    store = BlobStore(root / "store")
    raw_dir = root / "raw"
    raw_dir.mkdir()
    runs = itertools.count(0, 4)
    await measure(store, raw_dir, 1, next(runs))
    rows = []
    for mib in sizes:
        rounds = [await measure(store, raw_dir, mib, next(runs)) for _ in range(repeat)]
        rows.append((mib, *(statistics.median(column) for column in zip(*rounds))))
    header = ("size MiB", "raw write+fsync", "raw write+sha256+fsync", "BlobStore.write",
              "w ratio", "sha256 only", "raw read", "BlobStore read", "r ratio")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    for mib, raw_w, raw_hw, st_w, sha_only, raw_r, st_r in rows:
        cells = (f"{mib}", f"{raw_w:,.0f}", f"{raw_hw:,.0f}", f"{st_w:,.0f}",
                 f"{st_w / raw_hw:.2f}", f"{sha_only:,.0f}", f"{raw_r:,.0f}", f"{st_r:,.0f}",
                 f"{st_r / raw_r:.2f}")
        print("| " + " | ".join(cells) + " |")
    print("(MiB/s, median of runs; w ratio = BlobStore.write / raw write+sha256+fsync,")
    print(" r ratio = BlobStore read / raw read)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,16,256", help="comma-separated sizes in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        trio.run(main, sizes, args.repeat, pathlib.Path(scratch))
