"""The storage façade: the async, tenant-scoped API the RPC layer calls (run by ``_run``).

Invariants:

* Exactly one metadata writer: :class:`MetadataActor`, the only child of the storage
  supervisor that writes SQLite. :class:`Storage` holds its :class:`ActorRef`, never the actor,
  and reads through a separate pool of read-only connections.
* Order of every write: validate (INVALID_ARGUMENT first), cheap read-side checks (NOT_FOUND,
  ALREADY_EXISTS, quota and size pre-checks to fail fast), bytes made durable and pinned, then
  one metadata transaction that re-checks everything authoritatively, then the pin is released.
  A failure before the transaction leaves nothing visible; bytes it left behind are
  unreferenced and reclaimed (at once when possible, else by the reaper).
* A file is deleted only inside the metadata actor's turn, after the actor saw its reference
  count at zero, and only if no in-flight write holds a pin on it
  (:meth:`BlobStore.delete_if_unpinned`). Since every new reference is committed by that same
  actor while the writer still holds its pin, a referenced file is never deleted.
* An upload session row is created before its file and removed before (or with) its file,
  so an upload file without a row is always garbage.
* Timestamps and upload expiry use ``clock()`` (wall-clock seconds, injectable for tests).
* A metadata actor that is down, restarting or stopped surfaces as
  :class:`StorageUnavailableError` (retryable), never as a hang.
* Space (``_space``): every write that adds bytes is admitted by the :class:`SpaceGuard`
  first (the floor; chunk by chunk for streamed content), and refused with
  :class:`StorageFullError` below it. Deletes (bucket, object, blob, upload) are never
  refused for space: when one hits a full disk, the ballast is released and it is retried
  once. Any ENOSPC, from the blob files or from SQLite, releases the ballast.
"""

from __future__ import annotations

import contextlib
import pathlib
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from ..actors import (
    ActorRef,
    ActorStoppedError,
    ActorUnavailableError,
    AskTimeoutError,
    Supervisor,
    SupervisorStats,
)
from . import _metadata as m
from ._metadata_actor import ReclaimBlob, Sync
from . import _queries as q
from . import _validation as v
from ._backends import DB_NAME
from ._seams import ByteReader, ByteStore, MetadataBackend, MetadataReads
from ._errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    QuotaExceededError,
    StorageError,
    StorageFullError,
    StorageIOError,
    StorageUnavailableError,
)
from ._queries import (
    AppInfo,
    BlobInfo,
    BucketInfo,
    CompletedUpload,
    DeleteResult,
    ListObjectsResult,
    ListVersionsResult,
    MetadataReader,
    ObjectInfo,
    PutResult,
    TenantInfo,
    UploadInfo,
    UploadState,
)
from ._reaper import REAPER_CHILD, ReapNow, ReapReport
from ._space import Reservation, SpaceGuard, SpaceStats, hit_enospc, watching

__all__ = [
    "CompletedUpload",
    "DeleteResult",
    "ListObjectsResult",
    "ListVersionsResult",
    "PutResult",
    "Storage",
    "StorageConfig",
    "UploadState",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"


@attrs.frozen(kw_only=True)
class StorageConfig:
    """Configuration of storage: SQLite + local files under ``data_dir`` by default, or
    PostgreSQL and an S3-compatible bucket shared by several nodes (see ``_backends``).

    Args:
        data_dir: root of ``meta.sqlite3``, ``blobs/``, ``tmp/`` and ``uploads/`` (unused when
            both ``metadata_url`` and ``blob_url`` are set).
        metadata_url: ``postgresql://USER@HOST:PORT/DB`` for PostgreSQL; empty: SQLite.
        blob_url: ``s3://BUCKET[/PREFIX]`` for an S3-compatible store; empty: files.
        s3_endpoint: the S3 endpoint URL (empty: AWS's own); s3_region: its region.
        max_object_size: largest object or blob in bytes (``None``: no limit).
        upload_ttl: seconds an unfinished upload stays resumable after its last activity.
        fsync: fsync blob files (turn off only for throwaway test data).
        direct_io: write new blob files with direct I/O where the file system allows it (see
            ``_direct``).
        read_connections: concurrent metadata reads.
        ask_timeout: seconds to wait for the metadata actor before StorageUnavailableError.
        restart_intensity, restart_period: the supervisor escalates past ``restart_intensity``
            restarts within ``restart_period`` seconds.
        reaper_interval: seconds between the end of one reaper pass and the next.
        temp_max_age: seconds after which a periodic pass treats a temp file as stale (the
            start-up pass treats them all as stale; see ``_reaper``).
        ballast_bytes: size of ``data_dir/ballast``, released when the disk runs out so that
            deletes still have room (``None``: ``min(16 MiB, 1% of the file system)``; 0: no
            ballast). See ``_space``.
        min_free_bytes: writes that add bytes are refused with StorageFullError below this
            much effective free space (``None``: ``min(128 MiB, 2% of the file system)``;
            0: no floor).
        space_check_interval: seconds a free-space measurement is trusted (0: measure on
            every check).
    """

    data_dir: pathlib.Path = attrs.field(converter=pathlib.Path)
    metadata_url: str = ""
    blob_url: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    max_object_size: int | None = 5 << 30
    upload_ttl: float = 24 * 3600.0
    fsync: bool = True
    direct_io: bool = True
    read_connections: int = 4
    ask_timeout: float = 30.0
    restart_intensity: int = 3
    restart_period: float = 5.0
    reaper_interval: float = 60.0
    temp_max_age: float = 3600.0
    ballast_bytes: int | None = None
    min_free_bytes: int | None = None
    space_check_interval: float = 1.0


class _QuotaGuard:
    """Pass chunks through, raising QuotaExceededError once more than ``allowance`` bytes came."""

    def __init__(self, chunks: AsyncIterable[bytes], allowance: int | None) -> None:
        self._it = chunks.__aiter__()
        self._allowance = allowance
        self._seen = 0

    def __aiter__(self) -> _QuotaGuard:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._it.__anext__()
        self._seen += len(chunk)
        if self._allowance is not None and self._seen > self._allowance:
            raise QuotaExceededError("tenant quota exceeded by this object")
        return chunk


class _SpaceCheck:
    """Pass chunks through, each admitted by the :class:`SpaceGuard` (StorageFullError below
    the floor) against one write's reservation before the blob writer sees it (bytes of a
    declared size were admitted up front)."""

    def __init__(
        self, chunks: AsyncIterable[bytes], space: SpaceGuard, reservation: Reservation
    ) -> None:
        self._it = chunks.__aiter__()
        self._space = space
        self._reservation = reservation

    def __aiter__(self) -> _SpaceCheck:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._it.__anext__()
        excess = self._reservation.passed(len(chunk))
        if excess:
            await self._space.admit(excess, reservation=self._reservation)
        return chunk


class Storage:
    """Tenant-scoped object, blob and upload operations (see API.md for the semantics).

    Built by :func:`run_storage`; every method may raise :class:`StorageUnavailableError`
    (retryable) when the metadata actor is down. All byte streams returned are
    :class:`~._seams.ByteReader` objects: async iterators of chunks of at most 1 MiB, closed by
    exhausting them or with ``async with`` / ``aclose()``.
    """

    def __init__(
        self, config: StorageConfig, *, metadata: ActorRef, reader: MetadataReads,
        blobs: ByteStore, token_secret: bytes, clock: Callable[[], float],
        supervisor: Supervisor, space: SpaceGuard, backend: MetadataBackend | None = None,
    ) -> None:
        self.config = config
        self.blobs = blobs
        self.backend = backend
        self.space = space
        self._meta = metadata
        self._reader = reader
        self._tokens = v.PageTokenCodec(token_secret)
        self._clock = clock
        self._supervisor = supervisor
        self._finished = trio.Event()

    # -- plumbing

    async def _write(self, message: Any) -> Any:
        try:
            return await self._meta.ask(message, timeout=self.config.ask_timeout)
        except (ActorUnavailableError, ActorStoppedError, AskTimeoutError) as exc:
            raise StorageUnavailableError("metadata is unavailable; retry shortly") from exc

    async def _delete(self, message: Any) -> Any:
        """A write that frees space: never refused for space. Measures first (which releases
        the ballast on a nearly full disk); if the disk is full anyway, releases the ballast
        and tries once more."""
        try:
            await self.space.refresh()
        except StorageError:
            pass  # measuring is best effort here: the delete itself decides
        try:
            result = await self._write(message)
        except StorageFullError as exc:
            if not hit_enospc(exc):
                raise
            await self.space.on_full(exc)
            result = await self._write(message)
        self.space.invalidate()
        return result

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._reader.run(fn, *args)

    async def _reclaim_quietly(self, location: str) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._write(ReclaimBlob(location))
            except StorageError:
                pass  # left for the reaper

    async def ping(self) -> None:
        """One round trip to the metadata store (health checks).

        Raises:
            StorageUnavailableError: it cannot be reached.
        """
        await self._read(q.read_setting, "page_token_secret")

    @contextlib.asynccontextmanager
    async def reaper_turn(self) -> AsyncIterator[bool]:
        """``async with storage.reaper_turn() as mine:``: whether this node may run a reaper
        pass now (always, unless the metadata store is shared, where one node at a time holds
        its lease for the length of the pass)."""
        lease = self.backend.reaper_lease() if self.backend is not None else None
        if lease is None:
            yield True
            return
        try:
            held = await trio.to_thread.run_sync(lease.acquire)
        except StorageError:
            held = False
        try:
            yield held
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lease.release)

    def statistics(self) -> SupervisorStats:
        """The storage supervisor's statistics (restarts, mailbox depth, state)."""
        return self._supervisor.statistics()

    def space_statistics(self) -> SpaceStats:
        """Free space, the floor and the ballast, as of the last measurement (no I/O)."""
        return self.space.statistics()

    async def check_space(self) -> SpaceStats:
        """Measure free space now, releasing or recreating the ballast as needed (the reaper
        does this every pass).

        Raises:
            StorageIOError: the file system cannot be measured, or the ballast not created.
        """
        await self.space.refresh(force=True)
        return self.space.statistics()

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop the storage supervisor in order and wait until :func:`run_storage` has released
        the data dir (so another ``run_storage`` may open it at once)."""
        await self._supervisor.stop(grace=grace)
        await self._finished.wait()

    def _mark_finished(self) -> None:
        """Called by :func:`~._run.run_storage` once it has released the data dir."""
        self._finished.set()

    # -- tenants, apps, grants (used by the auth layer and the admin CLI)

    async def create_tenant(self, name: str, quota_bytes: int | None = None) -> TenantInfo:
        """Create a tenant. Raises AlreadyExistsError, InvalidArgumentError."""
        return await self._write(m.CreateTenant(name, quota_bytes, self._clock()))

    async def set_tenant_quota(self, name: str, quota_bytes: int | None) -> TenantInfo:
        """Change a tenant's quota (``None``: unlimited). Raises NotFoundError."""
        return await self._write(m.SetTenantQuota(name, quota_bytes))

    async def get_tenant(self, name: str) -> TenantInfo:
        """A tenant's quota and usage. Raises NotFoundError."""
        return await self._read(q.read_tenant, name)

    async def create_app(
        self, tenant: str, name: str, client_id: str, secret_hash: str
    ) -> AppInfo:
        """Register an app; ``secret_hash`` is stored as given (opaque to storage).

        Raises:
            NotFoundError: no such tenant. AlreadyExistsError: the client id, or the app
            name within the tenant, is taken.
        """
        return await self._write(m.CreateApp(tenant, name, client_id, secret_hash, self._clock()))

    async def set_app_secret(self, client_id: str, secret_hash: str) -> None:
        """Replace an app's secret hash. Raises NotFoundError."""
        await self._write(m.SetAppSecret(client_id, secret_hash))

    async def grant_scopes(self, client_id: str, scopes: Sequence[str]) -> None:
        """Grant scopes to an app (idempotent). Raises NotFoundError."""
        await self._write(m.ChangeGrants(client_id, tuple(scopes), True))

    async def revoke_scopes(self, client_id: str, scopes: Sequence[str]) -> None:
        """Revoke scopes from an app (revoking one not granted is a no-op). Raises NotFoundError."""
        await self._write(m.ChangeGrants(client_id, tuple(scopes), False))

    async def get_app(self, client_id: str) -> AppInfo:
        """An app's tenant, secret hash and scopes. Raises NotFoundError."""
        return await self._read(q.read_app, client_id)

    # -- buckets

    async def create_bucket(self, tenant: str, name: str, *, versioning: bool = False) -> BucketInfo:
        """Create a bucket. Raises InvalidArgumentError, NotFoundError (tenant), AlreadyExistsError."""
        v.validate_bucket_name(name)
        await self.space.admit()
        async with watching(self.space):
            return await self._write(m.CreateBucket(tenant, name, versioning, self._clock()))

    async def delete_bucket(self, tenant: str, name: str) -> None:
        """Delete an empty bucket.

        Raises:
            InvalidArgumentError, NotFoundError, FailedPreconditionError: any version or
            delete marker remains.
        """
        v.validate_bucket_name(name)
        await self._delete(m.DeleteBucket(tenant, name))

    async def list_buckets(self, tenant: str) -> list[BucketInfo]:
        """All of the tenant's buckets, by name."""
        return await self._read(q.read_buckets, tenant)

    async def get_bucket(self, tenant: str, name: str) -> BucketInfo:
        """One bucket. Raises InvalidArgumentError, NotFoundError."""
        v.validate_bucket_name(name)
        return await self._read(q.read_bucket, tenant, name)

    # -- objects

    async def put_object(
        self, tenant: str, bucket: str, key: str, chunks: AsyncIterable[bytes], *,
        content_type: str = "", user_metadata: Mapping[str, str] | None = None,
        content_length: int | None = None, expected_sha256: str | None = None,
        if_none_match: bool = False,
    ) -> PutResult:
        """Store an object from a stream of chunks; visible only once durable and committed.

        Args:
            content_type: stored as given (empty: ``application/octet-stream``).
            content_length: when given, the exact size (checked; lets limits fail early).
            expected_sha256: hex SHA-256 the bytes must have (empty/None: unchecked).
            if_none_match: fail if the key currently exists.

        Raises:
            InvalidArgumentError: bad name, key, metadata, size or hash format; size mismatch.
            ChecksumMismatchError: the bytes do not match ``expected_sha256``.
            NotFoundError: no such bucket. AlreadyExistsError: ``if_none_match`` and it exists.
            ObjectTooLargeError, QuotaExceededError, StorageIOError.
            StorageFullError: the disk is full, or the write would take free space below
                ``min_free_bytes`` (checked before the first byte for ``content_length``,
                and chunk by chunk).
            Whatever ``chunks`` raises. In every error case nothing becomes visible.
        """
        v.validate_bucket_name(bucket)
        raw_key = v.validate_object_key(key)
        meta = v.validate_metadata_map(user_metadata, what="user metadata")
        expected = v.parse_expected_hash(expected_sha256 or None)
        if content_length is not None and content_length < 0:
            raise InvalidArgumentError("content_length must not be negative")
        limit = self.config.max_object_size
        info, current, usage = await self._read(q.read_put_context, tenant, bucket, raw_key)
        if if_none_match and current is not None:
            raise AlreadyExistsError(f"object {key!r} already exists")
        if content_length is not None and limit is not None and content_length > limit:
            raise ObjectTooLargeError(f"{content_length} bytes exceed the limit of {limit}")
        allowance = None
        if usage.quota_bytes is not None:
            freed = current.size if current is not None and not info.versioning else 0
            allowance = max(usage.quota_bytes - usage.used_bytes + freed, 0)
            if content_length is not None and content_length > allowance:
                raise QuotaExceededError(f"tenant quota of {usage.quota_bytes} bytes exceeded")
        async with watching(self.space):
            # The writer holds at most pipeline_depth + 1 batches in memory (see _blobs).
            with self.space.reserve(batches=self.blobs.pipeline_depth + 1,
                                    batch_size=self.blobs.batch_size) as reservation:
                await self.space.admit(content_length or 0, reservation=reservation)
                written = await self.blobs.write(
                    _SpaceCheck(_QuotaGuard(chunks, allowance), self.space, reservation),
                    max_size=limit, expected_sha256=expected, expected_size=content_length,
                )
            try:
                with written:
                    stored: ObjectInfo = await self._write(m.CommitPut(
                        tenant, bucket, raw_key, written.digest, written.size,
                        content_type or DEFAULT_CONTENT_TYPE, meta, if_none_match, self._clock(),
                        written.location,
                    ))
            except BaseException:
                if written.created:
                    await self._reclaim_quietly(written.location)
                raise
            if stored.location != written.location:
                # The content was stored already (elsewhere in a shared store): these bytes
                # are a duplicate nobody references.
                await self._reclaim_quietly(written.location)
        return PutResult(stored.etag, stored.version_id, stored.size)

    async def head_object(
        self, tenant: str, bucket: str, key: str, *, version_id: str | None = None
    ) -> ObjectInfo:
        """The current object (or a version) without its bytes.

        Raises:
            InvalidArgumentError; NotFoundError: no bucket, key or version, or a delete marker.
        """
        v.validate_bucket_name(bucket)
        raw_key = v.validate_object_key(key)
        return await self._read(q.read_object, tenant, bucket, raw_key, version_id or None)

    async def get_object(
        self, tenant: str, bucket: str, key: str, *, version_id: str | None = None,
        start: int = 0, end: int | None = None,
    ) -> tuple[ObjectInfo, ByteReader]:
        """An object's info and a stream of ``[start, end)`` of its bytes (``end`` exclusive,
        clamped; ``None``: to the end). ``info.size`` is the whole object's size.

        Raises:
            InvalidArgumentError: bad name/key, ``start < 0`` or ``end < start``.
            NotFoundError: as for :meth:`head_object`.
            OutOfRangeError: ``start`` at or past the end of a non-empty object.
        """
        v.validate_bucket_name(bucket)
        raw_key = v.validate_object_key(key)
        v.check_range(start, end)
        for _ in range(3):
            info = await self._read(q.read_object, tenant, bucket, raw_key, version_id or None)
            lo, hi = v.resolve_range(start, end, info.size)
            try:
                return info, await self.blobs.open_range(info.location or info.etag, lo, hi)
            except NotFoundError:
                continue  # replaced and reclaimed between lookup and open: look it up again
        raise StorageIOError(f"the bytes of {key!r} are missing from the blob store")

    async def delete_object(
        self, tenant: str, bucket: str, key: str, *, version_id: str | None = None
    ) -> DeleteResult:
        """Delete an object, or one version of it.

        Without ``version_id``: versioning on adds a delete marker (none if the key has no
        versions; the existing one if the latest already is a marker); versioning off removes
        the object. A missing key succeeds with ``DeleteResult("", False)``. With
        ``version_id``: removes that version or delete marker; the next newest becomes latest.

        Raises:
            InvalidArgumentError; NotFoundError: no bucket, or no such version.
        """
        v.validate_bucket_name(bucket)
        raw_key = v.validate_object_key(key)
        version, marker = await self._delete(
            m.DeleteObject(tenant, bucket, raw_key, version_id or None, self._clock())
        )
        return DeleteResult(version, marker)

    def check_page_token(self, page_token: str) -> None:
        """Check that a page token is empty or one this server issued (format and signature
        only; which listing it belongs to is checked when it is used). Pure and cheap, so the
        RPC layer runs it before authorization (INVALID_ARGUMENT beats PERMISSION_DENIED).

        Raises:
            InvalidArgumentError: a token this server did not issue.
        """
        if page_token:
            self._tokens.verify(page_token)

    def _page_context(self, kind: str, tenant: str, bucket: str, prefix: str, delim: str) -> dict:
        return {"k": kind, "t": tenant, "b": bucket, "p": prefix, "d": delim}

    async def list_objects(
        self, tenant: str, bucket: str, *, prefix: str = "", delimiter: str = "",
        max_keys: int = 0, page_token: str = "",
    ) -> ListObjectsResult:
        """One page of current objects (ascending UTF-8 byte order) and common prefixes.

        Objects and common prefixes together number at most ``max_keys`` (0: 1000; capped at
        1000). Pass the returned ``next_page_token`` to continue ("" means no more).

        Raises:
            InvalidArgumentError: bad name, prefix, delimiter, ``max_keys`` or page token.
            NotFoundError: no such bucket.
        """
        v.validate_bucket_name(bucket)
        raw_prefix = v.decode_prefix(prefix, what="prefix")
        raw_delim = v.decode_prefix(delimiter, what="delimiter")
        limit = v.normalize_max_keys(max_keys)
        context = self._page_context("o", tenant, bucket, prefix, delimiter)
        after = None
        if page_token:
            position = self._tokens.decode(page_token, context)
            if not isinstance(position, str):
                raise InvalidArgumentError("invalid page token")
            after = bytes.fromhex(position)
        objects, prefixes, nxt = await self._read(
            lambda conn: q.read_object_page(conn, tenant, bucket, prefix=raw_prefix,
                                          delimiter=raw_delim, max_keys=limit, after=after)
        )
        token = self._tokens.encode(context, nxt.hex()) if nxt is not None else ""
        return ListObjectsResult(objects, prefixes, token)

    async def list_object_versions(
        self, tenant: str, bucket: str, *, prefix: str = "", max_keys: int = 0,
        page_token: str = "",
    ) -> ListVersionsResult:
        """One page of versions and delete markers: keys ascending, newest first within a key.

        Raises:
            InvalidArgumentError: bad name, prefix, ``max_keys`` or page token.
            NotFoundError: no such bucket.
        """
        v.validate_bucket_name(bucket)
        raw_prefix = v.decode_prefix(prefix, what="prefix")
        limit = v.normalize_max_keys(max_keys)
        context = self._page_context("v", tenant, bucket, prefix, "")
        after = None
        if page_token:
            position = self._tokens.decode(page_token, context)
            if (not isinstance(position, list) or len(position) != 2
                    or not isinstance(position[0], str) or not isinstance(position[1], int)):
                raise InvalidArgumentError("invalid page token")
            after = (bytes.fromhex(position[0]), position[1])
        versions, nxt = await self._read(
            lambda conn: q.read_version_page(conn, tenant, bucket, prefix=raw_prefix,
                                           max_keys=limit, after=after)
        )
        token = self._tokens.encode(context, [nxt[0].hex(), nxt[1]]) if nxt is not None else ""
        return ListVersionsResult(versions, token)

    # -- blobs

    async def stat_blob(self, tenant: str, key: bytes | str) -> BlobInfo:
        """A tenant's blob. Raises InvalidArgumentError (bad key), NotFoundError."""
        return await self._read(q.read_blob, tenant, v.parse_blob_key(key))

    async def get_blob(
        self, tenant: str, key: bytes | str, *, start: int = 0, end: int | None = None
    ) -> tuple[BlobInfo, ByteReader]:
        """A blob's metadata and a stream of ``[start, end)`` (ranges as for objects);
        ``reader.start`` is the absolute offset of the first chunk.

        Raises:
            InvalidArgumentError, NotFoundError, OutOfRangeError.
        """
        digest = v.parse_blob_key(key)
        v.check_range(start, end)
        info = await self._read(q.read_blob, tenant, digest)
        lo, hi = v.resolve_range(start, end, info.size)
        return info, await self.blobs.open_range(info.location or digest, lo, hi)

    async def delete_blob(self, tenant: str, key: bytes | str) -> None:
        """Remove a tenant's blob (bytes are reclaimed once no one references them).

        Raises:
            InvalidArgumentError, NotFoundError.
        """
        await self._delete(m.DeleteBlob(tenant, v.parse_blob_key(key)))

    async def list_blobs(
        self, tenant: str, *, limit: int = 0, start_after: bytes | str = b""
    ) -> list[BlobInfo]:
        """A tenant's blobs ordered by key, after ``start_after`` (empty: from the start);
        ``limit`` 0 means 1000, capped at 1000.

        Raises:
            InvalidArgumentError: bad ``limit`` or ``start_after``. NotFoundError: no tenant.
        """
        count = v.normalize_max_keys(limit)
        after = v.parse_blob_key(start_after) if start_after else None
        return await self._read(
            lambda conn: q.read_blob_page(conn, tenant, limit=count, start_after=after)
        )

    # -- resumable uploads

    async def _live_upload(self, tenant: str, upload_id: str) -> UploadInfo:
        v.validate_upload_id(upload_id)
        session = await self._read(q.read_upload, tenant, upload_id)
        if session.expires_at <= self._clock():
            raise NotFoundError(f"upload {upload_id!r} has expired")
        return session

    async def _touch(self, tenant: str, session: UploadInfo, received: int, *, force: bool) -> None:
        ttl = self.config.upload_ttl
        expires_at = self._clock() + ttl
        # Refresh the expiry at most every min(60 s, ttl/10) of activity, not on every chunk.
        if force or expires_at - session.expires_at >= min(60.0, ttl / 10):
            await self._write(m.TouchUpload(tenant, session.upload_id, received, expires_at))

    async def start_upload(
        self, tenant: str, total_size: int, attributes: Mapping[str, str] | None = None,
        upload_id: str | None = None,
    ) -> UploadState:
        """Start a new upload (``upload_id`` empty) or resume one (its original attributes
        stay; those given on resume are ignored).

        Returns:
            The upload id and the bytes already held durably (0 for a new upload).

        Raises:
            InvalidArgumentError: negative size, bad attributes or id, or on resume a
                ``total_size`` that differs from the original.
            NotFoundError: unknown or expired upload (or tenant).
            ObjectTooLargeError, QuotaExceededError: the declared size cannot fit.
            StorageFullError: free space is below ``min_free_bytes`` (or the disk is full).
        """
        attributes = v.validate_metadata_map(attributes, what="attributes")
        if total_size < 0:
            raise InvalidArgumentError("total_size must not be negative")
        if upload_id:
            session = await self._live_upload(tenant, upload_id)
            if session.total_size != total_size:
                raise InvalidArgumentError(
                    f"total_size {total_size} differs from the upload's {session.total_size}"
                )
            received = await self.blobs.upload_size(upload_id)
            await self._touch(tenant, session, received, force=True)
            return UploadState(upload_id, received)
        limit = self.config.max_object_size
        if limit is not None and total_size > limit:
            raise ObjectTooLargeError(f"{total_size} bytes exceed the limit of {limit}")
        usage = await self._read(q.read_tenant, tenant)
        if usage.quota_bytes is not None and usage.used_bytes + total_size > usage.quota_bytes:
            raise QuotaExceededError(f"tenant quota of {usage.quota_bytes} bytes exceeded")
        await self.space.admit()
        new_id = secrets.token_hex(16)
        now = self._clock()
        async with watching(self.space):
            await self._write(m.StartUpload(
                tenant, new_id, total_size, attributes, now, now + self.config.upload_ttl
            ))
        try:
            async with watching(self.space):
                await self.blobs.upload_create(new_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self._write(m.DiscardUpload(tenant, new_id))
                except StorageError:
                    pass  # the session expires and is reaped
            raise
        return UploadState(new_id, 0)

    async def append_upload(self, tenant: str, upload_id: str, offset: int, data: bytes) -> int:
        """Append ``data`` at ``offset`` (which must equal the bytes received so far).

        Returns:
            The bytes now held durably.

        Raises:
            InvalidArgumentError: offset mismatch, or more than ``total_size`` bytes.
            NotFoundError: unknown or expired upload.
            StorageFullError: ``data`` would take free space below ``min_free_bytes``, or
                the disk is full; nothing of ``data`` was kept.
            StorageIOError: nothing of ``data`` was kept.
        """
        session = await self._live_upload(tenant, upload_id)
        if offset < 0 or offset + len(data) > session.total_size:
            raise InvalidArgumentError(
                f"{offset + len(data)} bytes would exceed total_size {session.total_size}"
            )
        async with watching(self.space):
            with self.space.reserve() as reservation:
                await self.space.admit(len(data), reservation=reservation)
                reservation.passed(len(data))
                received = await self.blobs.upload_append(upload_id, offset, data)
            await self._touch(tenant, session, received, force=False)
        return received

    async def complete_upload(
        self, tenant: str, upload_id: str, expected_hash: bytes | str | None = None
    ) -> CompletedUpload:
        """Finish an upload holding exactly ``total_size`` bytes into a tenant blob. When the
        tenant already holds that content (``deduplicated``), its first attributes are kept.

        Args:
            expected_hash: raw 32-byte SHA-256 (or 64 hex), empty/None: unchecked.

        Raises:
            InvalidArgumentError: fewer bytes than ``total_size``; bad hash format.
            ChecksumMismatchError: the hash differs; the upload is discarded.
            NotFoundError: unknown or expired upload.
            QuotaExceededError: the blob does not fit; the upload is discarded.
        """
        expected = v.parse_expected_hash(expected_hash)
        session = await self._live_upload(tenant, upload_id)
        received = await self.blobs.upload_size(upload_id)
        if received != session.total_size:
            raise InvalidArgumentError(
                f"upload holds {received} of {session.total_size} bytes; cannot complete"
            )
        try:
            # Not admitted against the floor: the bytes are on disk already, and finishing
            # moves them (a disk that is full anyway still releases the ballast).
            async with watching(self.space):
                written = await self.blobs.upload_finish(upload_id, expected_sha256=expected)
        except ChecksumMismatchError:
            with trio.CancelScope(shield=True):
                await self._forget_upload(tenant, upload_id)
            raise
        try:
            with written:
                async with watching(self.space):
                    blob, dedup = await self._write(
                        m.CompleteUpload(tenant, upload_id, written.digest, written.size,
                                         self._clock(), written.location)
                    )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._forget_upload(tenant, upload_id)
                await self._reclaim_quietly(written.location)
            raise
        if blob.location and blob.location != written.location:
            await self._reclaim_quietly(written.location)  # a duplicate of stored bytes
        return CompletedUpload(v.format_blob_key(blob.digest), written.size, dedup)

    async def _forget_upload(self, tenant: str, upload_id: str) -> None:
        try:
            await self._write(m.DiscardUpload(tenant, upload_id))
            await self.blobs.upload_discard(upload_id)
        except StorageError:
            pass  # expired sessions and orphan files are reaped

    async def abort_upload(self, tenant: str, upload_id: str) -> None:
        """Discard an unfinished upload. Raises InvalidArgumentError, NotFoundError."""
        v.validate_upload_id(upload_id)
        await self._delete(m.DiscardUpload(tenant, upload_id))
        await self.blobs.upload_discard(upload_id)
        self.space.invalidate()

    # -- hooks for the reaper and for tests

    async def expire_uploads(self) -> list[str]:
        """Remove upload sessions whose expiry has passed, and their files.

        Returns:
            The ids removed.
        """
        ids = await self._delete(m.ExpireUploads(self._clock()))
        for upload_id in ids:
            await self.blobs.upload_discard(upload_id)
        return list(ids)

    async def unreferenced_digests(self, older_than: float = 0.0) -> list[str]:
        """Locations in the byte store (for files: digests) written more than ``older_than``
        seconds ago that no metadata references: candidates for :meth:`reclaim_blob`. An
        in-flight write of this process may appear here, and is pinned; one of another node
        (a shared store) is younger than the ``older_than`` the reaper passes."""
        stored = await trio.to_thread.run_sync(
            lambda: list(self.blobs.iter_locations(older_than))
        )
        referenced = await self._read(q.read_referenced, stored)
        return [loc for loc in stored if loc not in referenced]

    async def orphan_upload_ids(self) -> list[str]:
        """Ids of upload files that have no session row (garbage: rows come first)."""
        on_disk = await trio.to_thread.run_sync(lambda: list(self.blobs.iter_upload_ids()))
        known = await self._read(q.read_upload_ids)
        return [u for u in on_disk if u not in known]

    async def reclaim_blob(self, location: str) -> bool:
        """Delete the bytes at ``location`` (for files: a digest) if unreferenced and
        unpinned; returns whether deleted."""
        if not self.blobs.shared:
            location = v.validate_digest(location)
        return await self._write(ReclaimBlob(location))

    async def sync(self) -> None:
        """Wait until the follow-up work of every write answered so far is done: a put that
        replaced an object (versioning off) or a delete answers before the bytes it left
        unreferenced are deleted; after ``sync()`` they are.

        Raises:
            StorageUnavailableError: the metadata actor is down or stopped.
        """
        await self._write(Sync())
        self.space.invalidate()

    async def reap_now(self) -> ReapReport:
        """Run one reaper pass now (after any pass in progress) and wait for it; no timeout.

        Raises:
            StorageUnavailableError: the reaper or the metadata actor is down or stopped.
            StorageError: a scan or delete failed (the rest waits for the next pass).
        """
        try:
            return await self._supervisor.ref(REAPER_CHILD).ask(ReapNow(), timeout=None)
        except (ActorUnavailableError, ActorStoppedError) as exc:
            raise StorageUnavailableError("the reaper is unavailable; retry shortly") from exc
