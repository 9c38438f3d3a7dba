"""Small-object puts against ``anvil-trio serve``: puts/s and server CPU per put.

A 4 KiB put costs little CPU per byte; what bounds it is what every put pays once: the call
itself, the thread hand-offs of the blob write, three fsyncs (the file, its directory, the
SQLite WAL) and the metadata commit, which concurrent puts share (group commit). Each caller is
one thread with its own channel putting fresh 4 KiB objects to new keys, back to back, for a
fixed time; the official grpcio client runs in this process, the server in another. Figures
are medians of ``--repeats`` runs.

Usage: python benchmarks/bench_small_puts.py [--seconds 3] [--repeats 3] [--size 4096]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import start_anvil  # noqa: E402

from anvil_trio._proto.anvil.v1 import object_pb2, object_pb2_grpc  # noqa: E402


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_puts(port: int, metadata, callers: int, seconds: float, size: int) -> int:
    """Put fresh ``size``-byte objects from ``callers`` threads for ``seconds``; the count."""
    counts = [0] * callers
    stop_at = time.perf_counter() + seconds

    def work(index: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = object_pb2_grpc.ObjectServiceStub(channel)
            while time.perf_counter() < stop_at:
                requests = [
                    object_pb2.PutObjectRequest(metadata=object_pb2.ObjectMetadata(
                        bucket_name="bench", object_key=f"small-{index}-{counts[index]}")),
                    object_pb2.PutObjectRequest(chunk=os.urandom(size)),
                ]
                stub.PutObject(iter(requests), metadata=metadata, timeout=60)
                counts[index] += 1

    threads = [threading.Thread(target=work, args=(index,)) for index in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dir", type=Path, default=None, help="where the data dir goes")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-small-", dir=args.dir))
    anvil = None
    try:
        anvil, metadata = start_anvil(root / "data")
        print(f"{args.size}-byte puts, {args.seconds:g} s per run, medians of {args.repeats}")
        print(f"{'callers':>7} | {'puts/s':>7} | {'server cpu ms/put':>17}")
        print("-" * 38)
        for callers in (1, 16):
            rates, cpus = [], []
            for _ in range(args.repeats):
                before = _cpu_seconds(anvil.pid)
                count = run_puts(anvil.port, metadata, callers, args.seconds, args.size)
                rates.append(count / args.seconds)
                cpus.append(1000 * (_cpu_seconds(anvil.pid) - before) / max(count, 1))
            print(f"{callers:>7} | {statistics.median(rates):>7.0f} | "
                  f"{statistics.median(cpus):>17.2f}")
    finally:
        if anvil is not None:
            anvil.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
