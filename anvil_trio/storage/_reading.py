"""Streaming a byte range of a blob file: :class:`BlobReader`.

Invariants:

* A reader yields the bytes of ``[start, end)`` in order, in chunks of at most ``chunk_size``
  bytes, each read by one ``pread`` in a worker thread (never abandoned); ``position`` is the
  absolute offset of the next chunk.
* It holds one open descriptor, closed when the range is exhausted, on any error, on
  :meth:`BlobReader.aclose` and (as a last resort) when the reader is garbage-collected. A file
  unlinked meanwhile is still read to the end.
* Blob files are written past the page cache (see ``_direct``), so the first read of a fresh
  blob comes from the device: the reader keeps up to ``_READ_AHEAD`` bytes requested from the
  kernel ahead of its position (``posix_fadvise(WILLNEED)``, only a hint), so the device works
  while earlier chunks go out.
"""

from __future__ import annotations

import contextlib
import os

import attrs

from ._errors import StorageIOError
from ._faults import run_io

__all__ = ["BlobReader"]

_READ_AHEAD = 16 << 20  # bytes a reader asks the kernel to fetch ahead of its position
_WILLNEED: int | None = getattr(os, "POSIX_FADV_WILLNEED", None)


@attrs.define(eq=False)
class BlobReader:
    """An open byte range of a blob: an async iterator of chunks of at most ``chunk_size`` bytes.

    ``size`` is the whole blob's size, ``start``/``end`` the (clamped, end-exclusive) range and
    ``position`` the absolute offset of the next chunk. The file stays open until the range is
    exhausted, an error occurs, or :meth:`aclose` (also ``async with reader:``); a blob deleted
    meanwhile is still read to the end.
    """

    _fd: int | None = attrs.field(repr=False)
    size: int
    start: int
    end: int
    _chunk_size: int = attrs.field(repr=False)
    position: int = attrs.field(init=False)
    _advised: int = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.position = self._advised = self.start

    def _read(self, fd: int, length: int, position: int) -> bytes:
        """pread, after asking the kernel for the next window ahead (in a worker thread)."""
        if _WILLNEED is not None and self._advised < self.end and (
                position + _READ_AHEAD // 2 >= self._advised):
            window = min(_READ_AHEAD, self.end - self._advised)
            with contextlib.suppress(OSError):  # only a hint
                os.posix_fadvise(fd, self._advised, window, _WILLNEED)
            self._advised += window
        return os.pread(fd, length, position)

    def __aiter__(self) -> BlobReader:
        return self

    async def __anext__(self) -> bytes:
        fd = self._fd
        if fd is None or self.position >= self.end:
            self._close()
            raise StopAsyncIteration
        length = min(self._chunk_size, self.end - self.position)
        try:
            data = await run_io("reading a blob", self._read, fd, length, self.position)
            if not data:
                raise StorageIOError("blob file is shorter than its recorded size")
        except BaseException:
            self._close()
            raise
        self.position += len(data)
        return data

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def aclose(self) -> None:
        """Close the file; further iteration yields nothing."""
        self._close()

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def __del__(self) -> None:  # a reader dropped unfinished must not leak its descriptor
        with contextlib.suppress(OSError):
            self._close()
