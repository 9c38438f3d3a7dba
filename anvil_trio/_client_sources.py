"""Upload sources for the client: bytes, files and async iterables, read in bounded chunks.

Invariants:
- :meth:`ByteSource.chunks` yields the content from byte 0, in pieces of at most
  ``chunk_size`` bytes, none empty.
- A source is ``replayable`` when ``chunks()`` can run again and yield the same bytes (bytes
  and paths). An async iterable is read at most once: ``started`` becomes true when its first
  item is requested, and a second ``chunks()`` raises :class:`SourceConsumedError`.
- A path is opened afresh on every pass; its size is taken when the source is made, and a pass
  that reads a different number of bytes raises :class:`SourceChangedError`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Union

import trio

__all__ = [
    "ByteSource",
    "Source",
    "SourceChangedError",
    "SourceConsumedError",
    "SourceError",
    "open_source",
]

Source = Union[bytes, bytearray, memoryview, str, os.PathLike, AsyncIterable[bytes]]


class SourceError(ValueError):
    """An upload source cannot deliver what was promised."""


class SourceConsumedError(SourceError):
    """An async-iterable source was asked for its bytes a second time."""


class SourceChangedError(SourceError):
    """A file changed size while being uploaded."""


class ByteSource:
    """Base: a sized or unsized stream of bytes (see the module invariants).

    Attributes:
        size: the exact length in bytes, or ``None`` when unknown.
        replayable: ``chunks()`` may run again.
        started: reading has begun at least once.
    """

    replayable = True

    def __init__(self, size: int | None, chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.size = size
        self.chunk_size = chunk_size
        self.started = False

    def chunks(self) -> AsyncIterator[bytes]:
        """The content from byte 0 in non-empty pieces of at most ``chunk_size`` bytes."""
        self.started = True
        return self._chunks()

    def _chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError


class _MemorySource(ByteSource):
    def __init__(self, data: bytes | bytearray | memoryview, chunk_size: int) -> None:
        self._data = memoryview(data).cast("B")
        super().__init__(len(self._data), chunk_size)

    async def _chunks(self) -> AsyncIterator[bytes]:
        step = self.chunk_size
        for start in range(0, len(self._data), step):
            yield bytes(self._data[start:start + step])


class _FileSource(ByteSource):
    def __init__(self, path: pathlib.Path, chunk_size: int) -> None:
        self._path = path
        super().__init__(path.stat().st_size, chunk_size)

    async def _chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        async with await trio.open_file(self._path, "rb") as handle:
            while piece := await handle.read(self.chunk_size):
                seen += len(piece)
                if self.size is not None and seen > self.size:
                    break
                yield piece
        if seen != self.size:
            raise SourceChangedError(f"{self._path} changed size during the upload "
                                     f"({self.size} bytes expected, {seen} read)")


class _IterableSource(ByteSource):
    replayable = False

    def __init__(self, iterable: AsyncIterable[bytes], size: int | None, chunk_size: int) -> None:
        self._iterable = iterable
        super().__init__(size, chunk_size)

    def chunks(self) -> AsyncIterator[bytes]:
        if self.started:
            raise SourceConsumedError("an async-iterable source can be read only once")
        return super().chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        step = self.chunk_size
        async for item in self._iterable:
            view = memoryview(item).cast("B")
            for start in range(0, len(view), step):
                yield bytes(view[start:start + step])


def open_source(source: Source, *, size: int | None = None, chunk_size: int) -> ByteSource:
    """Wrap what a caller passed as an upload source.

    Args:
        source: ``bytes``/``bytearray``/``memoryview`` (kept by reference: do not modify it
            during the upload), a path as ``str`` or ``os.PathLike``, or an async iterable of
            bytes-like items.
        size: the exact length; for bytes and paths it must match when given.
        chunk_size: the largest piece ``chunks()`` yields.

    Raises:
        TypeError: an unsupported source type.
        OSError: a path that cannot be stat'ed.
        SourceError: ``size`` disagrees with the bytes or the file.
    """
    made: ByteSource
    if isinstance(source, (bytes, bytearray, memoryview)):
        made = _MemorySource(source, chunk_size)
    elif isinstance(source, (str, os.PathLike)):
        made = _FileSource(pathlib.Path(source), chunk_size)
    elif hasattr(source, "__aiter__"):
        return _IterableSource(source, size, chunk_size)
    else:
        raise TypeError(f"an upload source must be bytes, a path or an async iterable of bytes, "
                        f"not {type(source).__name__}")
    if size is not None and size != made.size:
        raise SourceError(f"size={size} but the source holds {made.size} bytes")
    return made
