"""Direct-I/O blob file writes (storage/_direct.py): exact bytes for any chunking and size,
aligned direct writes, the buffered tail, and the fall-back when direct I/O is refused."""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anvil_trio.storage._direct import ALIGN, DIRECT_FLAG, StagedWriter, StagingPool, open_new
from anvil_trio.storage._faults import DiskSteps, FaultInjector


class _Recorder(FaultInjector):
    """Records (offset, length, direct) of every file write."""

    def __init__(self, fd_box: list[int]) -> None:
        super().__init__()
        self.writes: list[tuple[int, int, bool]] = []
        self._fd_box = fd_box

    def before_write(self, offset: int, length: int) -> None:
        flags = fcntl.fcntl(self._fd_box[0], fcntl.F_GETFL)
        self.writes.append((offset, length, bool(flags & DIRECT_FLAG) if DIRECT_FLAG else False))
        super().before_write(offset, length)


def write_file(path: pathlib.Path, chunks: list[bytes], *, direct: bool,
               injector: FaultInjector | None = None, fd_box: list[int] | None = None,
               pool: StagingPool | None = None) -> tuple[bool, int]:
    fd, is_direct = open_new(path, direct)
    if fd_box is not None:
        fd_box.append(fd)
    try:
        writer = StagedWriter(DiskSteps(fsync=False, faults=injector), fd,
                              pool or StagingPool(4 * ALIGN), direct=is_direct)
        for index in range(0, len(chunks), 3):
            writer.write_batch(chunks[index:index + 3])
        size = writer.finish()
    finally:
        os.close(fd)
    return is_direct, size


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * ALIGN + 7), max_size=12), direct=st.booleans())
def test_any_chunking_writes_exact_bytes(tmp_path_factory, sizes: list[int],
                                         direct: bool) -> None:
    """Whatever the chunk sizes (aligned or not), the file holds exactly the bytes given."""
    path = tmp_path_factory.mktemp("direct") / "blob.part"
    chunks = [os.urandom(size) for size in sizes]
    _, size = write_file(path, chunks, direct=direct)
    assert size == sum(sizes)
    assert path.read_bytes() == b"".join(chunks)


def test_direct_writes_are_aligned_and_only_the_tail_is_buffered(tmp_path: pathlib.Path) -> None:
    """Where the file system allows O_DIRECT, every write but the last is a direct, aligned
    multiple of ALIGN at an aligned offset; the short tail is written buffered."""
    fd_box: list[int] = []
    recorder = _Recorder(fd_box)
    data = os.urandom(9 * ALIGN + 123)
    is_direct, size = write_file(tmp_path / "b.part", [data[:5000], data[5000:]], direct=True,
                                 injector=recorder, fd_box=fd_box)
    if not is_direct:
        pytest.skip("this file system refuses O_DIRECT (buffered fall-back tested elsewhere)")
    assert size == len(data) and (tmp_path / "b.part").read_bytes() == data
    *body, tail = recorder.writes
    assert body and all(direct and offset % ALIGN == 0 and length % ALIGN == 0
                        for offset, length, direct in body)
    assert tail == (9 * ALIGN, 123, False)


def test_refused_direct_write_falls_back_to_buffered(tmp_path: pathlib.Path) -> None:
    """An EINVAL from a direct write (a file system that accepts the flag but not the I/O)
    switches the file to buffered writes; the bytes still come out exact. Other errors
    propagate."""
    probe, is_direct = open_new(tmp_path / "probe", True)
    os.close(probe)
    if not is_direct:
        pytest.skip("this file system refuses O_DIRECT at open already")
    data = os.urandom(6 * ALIGN + 17)
    injector = FaultInjector(fail_at="write", errno=errno.EINVAL, times=1)
    _, size = write_file(tmp_path / "a.part", [data], direct=True, injector=injector)
    assert size == len(data) and (tmp_path / "a.part").read_bytes() == data
    chunks = [os.urandom(3 * ALIGN), os.urandom(2 * ALIGN), os.urandom(100), os.urandom(ALIGN)]
    injector = FaultInjector(fail_at="write", errno=errno.EINVAL, times=1)
    _, size = write_file(tmp_path / "m.part", chunks, direct=True, injector=injector)
    assert injector.fired == 1  # refused in the middle of a batch: the rest still arrives
    assert (tmp_path / "m.part").read_bytes() == b"".join(chunks) and size == 6 * ALIGN + 100
    with pytest.raises(OSError) as caught:
        write_file(tmp_path / "c.part", [data], direct=True,
                   injector=FaultInjector(fail_at="write", errno=errno.EIO))
    assert caught.value.errno == errno.EIO


def test_staging_buffers_are_reused_and_bounded() -> None:
    """The pool hands back idle buffers and keeps at most ``keep`` of them."""
    pool = StagingPool(ALIGN, keep=1)
    first, second = pool.take(), pool.take()
    pool.give_back(first)
    pool.give_back(second)
    assert second.closed and not first.closed
    assert pool.take() is first
    third = pool.take()
    view = memoryview(third)  # e.g. held by an error's traceback
    pool.give_back(pool.take())
    pool.give_back(third)  # the pool is full and the buffer exported: no BufferError
    view.release()
    with pytest.raises(ValueError):
        StagingPool(ALIGN + 1)
