"""The plain-file baselines the storage benchmarks print beside the store's numbers, so every
table compares against the same raw write+fsync and raw read."""

from __future__ import annotations

import os
import pathlib
import time

MiB = 1 << 20
_BLOCK = os.urandom(MiB)


def chunk(run: int, index: int) -> bytes:
    """A 1 MiB chunk unique to (run, index), so no two runs write the same content."""
    return run.to_bytes(8, "big") + index.to_bytes(8, "big") + _BLOCK[16:]


def raw_write(path: pathlib.Path, mib: int, run: int) -> float:
    """Seconds to write ``mib`` MiB to ``path`` with 1 MiB writes, then fsync."""
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for i in range(mib):
            f.write(chunk(run, i))
        os.fsync(f.fileno())
    return time.perf_counter() - start


def raw_read(path: pathlib.Path) -> float:
    """Seconds to read ``path`` in 1 MiB reads."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass
    return time.perf_counter() - start
