"""The storage layer's two seams: where metadata lives and where bytes live.

Each seam is a small protocol with two implementations that pass the same tests:

* :class:`ByteStore`: content-addressed bytes. :class:`~._blobs.BlobStore` keeps them in files
  under the data dir (the embedded default); :class:`~._s3.S3ByteStore` in an S3-compatible
  bucket shared by every node.
* :class:`MetadataBackend`: the transactional metadata (tenants, apps, grants, buckets, object
  versions, reference counts, quotas, upload sessions, settings). SQLite under the data dir
  (``_metadata``/``_queries``), or PostgreSQL shared by every node (``_postgres``).

Invariants every implementation keeps:

* A write of bytes returns a :class:`~._pins.WrittenBlob` whose ``location`` names where the
  bytes are. Files name the bytes by their digest (``location == digest``: identical content
  is one file). An S3 store names each write by a fresh random key, so a location is never
  reused: once the metadata transaction that removed the last reference to a location has
  committed, nothing can reference it again, and it may be deleted without asking anyone.
  That is what makes reference counting safe across nodes without a cross-node pin: a node
  committing a new reference to a digest either finds its ``blobs`` row (and references that
  row's location, in the same transaction that keeps the row alive) or creates the row with
  its own new location.
* ``shared`` is True for a store several nodes use at once. The reaper then never assumes, at
  start-up, that nothing is in flight: only what is older than ``temp_max_age`` is stale.
* Metadata writes are the messages of ``_metadata``; one implementation-neutral writer applies
  them in one transaction each (or several in one, with a savepoint each). PostgreSQL runs
  the same statements (``?`` placeholders rewritten) under row locks taken first on every
  tenant a transaction touches, so quotas, ``if_none_match``, single visibility and
  bucket-not-empty hold across nodes.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeVar

from ._pins import WrittenBlob

__all__ = ["ByteReader", "ByteStore", "MetadataBackend", "MetadataReads"]

_T = TypeVar("_T")


class ByteReader(Protocol):
    """An open byte range: an async iterator of chunks of at most ``chunk_size`` bytes.

    ``size`` is the whole content's size; ``start``/``end`` the clamped, end-exclusive range;
    ``position`` the absolute offset of the next chunk. Closed by exhausting it, on error, or
    by :meth:`aclose` / ``async with``.
    """

    size: int
    start: int
    end: int
    position: int

    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def __anext__(self) -> bytes: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc_info: object) -> None: ...


class ByteStore(Protocol):
    """Content-addressed bytes (see the module docstring). Errors are
    :class:`~._errors.StorageError` subclasses: :class:`~._errors.StorageUnavailableError`
    when the store cannot be reached (retryable), :class:`~._errors.StorageIOError` when it
    failed, :class:`~._errors.NotFoundError` for a location or upload that does not exist."""

    #: Several nodes write to this store at once.
    shared: bool
    #: The largest chunk a reader yields.
    chunk_size: int
    #: Bytes a write gathers before handing them on, and how many such batches it may have in
    #: flight: a write holds at most ``(pipeline_depth + 1) * batch_size`` bytes in memory.
    batch_size: int
    pipeline_depth: int

    async def write(
        self, chunks: AsyncIterable[bytes], *, max_size: int | None = None,
        expected_sha256: str | None = None, expected_size: int | None = None,
    ) -> WrittenBlob:
        """Store ``chunks`` durably, hashing while streaming; the result is pinned until
        released. Raises ObjectTooLargeError, InvalidArgumentError (size differs from
        ``expected_size``), ChecksumMismatchError; on any error nothing is left that the
        reaper would not remove."""
        ...

    async def open_range(self, location: str, start: int = 0, end: int | None = None) -> ByteReader:
        """Open ``[start, end)`` of the bytes at ``location``. Raises NotFoundError."""
        ...

    async def delete_if_unpinned(
        self, location: str, *, defer_unlink: Callable[[pathlib.Path], None] | None = None
    ) -> bool:
        """Delete ``location`` unless an in-flight write of this process pins it; the caller
        has checked that no metadata references it. Returns whether it was deleted."""
        ...

    def purge(self, dead: pathlib.Path) -> None:
        """Finish a deferred delete (files only; blocking)."""
        ...

    def iter_locations(self, older_than: float) -> Iterator[str]:
        """Every stored location written more than ``older_than`` seconds ago (0: all);
        blocking, run in a worker thread."""
        ...

    async def remove_stale_temp(self, older_than: float) -> int:
        """Remove what unfinished writes left that is older than ``older_than`` seconds
        (part files; unfinished multipart uploads). Returns how many were removed."""
        ...

    async def upload_create(self, upload_id: str) -> None: ...
    async def upload_append(self, upload_id: str, offset: int, data: bytes) -> int: ...
    async def upload_size(self, upload_id: str) -> int: ...
    async def upload_finish(
        self, upload_id: str, *, expected_sha256: str | None = None
    ) -> WrittenBlob: ...
    async def upload_discard(self, upload_id: str) -> bool: ...
    def iter_upload_ids(self) -> Iterator[str]: ...
    async def aclose(self) -> None:
        """Release connections and threads (the store is not used afterwards)."""
        ...


class MetadataReads(Protocol):
    """Runs read functions of ``_queries`` (``fn(conn, *args)``) in one read transaction."""

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T: ...
    def close(self) -> None: ...


class MetadataBackend(Protocol):
    """Opens the metadata store: its single writer (driven by the metadata actor), its
    readers, and the settings every node shares."""

    #: Several nodes use this store at once (PostgreSQL).
    shared: bool

    def prepare(self) -> bytes:
        """Create or migrate the schema (blocking); returns the page-token secret.
        Raises StorageError for a schema newer than this code."""
        ...

    def open_writer(self) -> Any:
        """A new :class:`~._metadata.MetadataWriter`-like writer (blocking)."""
        ...

    def open_reader(self, *, max_connections: int) -> MetadataReads: ...

    def reaper_lease(self) -> Any:
        """None when one process owns the store; else a new lease with blocking
        ``acquire() -> bool`` and ``release()``, held by one node at a time."""
        ...
