"""Metadata reads: the record and result types, read-only queries and the pool of read connections.

Invariants:

* Every read function takes a connection already inside a read transaction (one snapshot),
  so a page of a listing is consistent even while the writer commits.
* Read connections are ``query_only``; a write through them fails. They are separate from the
  writer's connection, so in WAL mode a read never waits for a write.
* Point reads (:data:`POINT_READS`: a row or three found through unique indexes, e.g. an
  object, its bucket and its tenant) run inline on the event loop's thread, on a dedicated
  connection whose busy timeout is 0, instead of hopping to a worker thread (the hop costs
  ~100 µs, the read ~20 µs). The guard: the inline connection never waits in SQLite's busy handler; a read that
  meets SQLITE_BUSY or SQLITE_LOCKED (WAL recovery after a crash, a database that is not in WAL
  mode, an exclusive lock) is retried at once through the worker-thread pool, which waits as
  usual. Two inline reads in a row that each take longer than ``inline_budget`` (cold pages on
  a slow disk) send the following point reads through the pool for ``inline_cooldown``
  seconds; a single slow one does not, since on a busy machine the loop's thread is sometimes
  preempted in the middle of a 20 µs read, and that says nothing about the disk. Every other
  read runs in the pool.
* Keys are UTF-8 BLOBs ordered bytewise. UTF-8 never contains ``0xFF``, so every key that
  starts with ``p`` lies in ``[p, p + b"\\xff")``; prefix scans and "skip this common prefix"
  both use that bound.
* Lookups are tenant-scoped: a bucket, blob or upload of another tenant raises
  :class:`NotFoundError` exactly as a missing one does.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import attrs
import trio

from ._errors import NotFoundError, StorageError, StorageFullError, StorageUnavailableError

__all__ = [
    "POINT_READS",
    "AppInfo",
    "BlobInfo",
    "BucketInfo",
    "CompletedUpload",
    "DeleteResult",
    "ListObjectsResult",
    "ListVersionsResult",
    "MetadataReader",
    "ObjectInfo",
    "PutResult",
    "TenantInfo",
    "UploadInfo",
    "UploadState",
    "connect",
    "transaction",
]

_T = TypeVar("_T")

BUSY_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------- connections


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open a connection with the project's pragmas (WAL, FULL sync, foreign keys, busy timeout).

    Connections are used by one thread at a time but may move between worker threads.
    """
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    if read_only:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool) -> Iterator[sqlite3.Connection]:
    """Run a block in one transaction; roll back on any exception.

    ``sqlite3`` "database or disk is full" becomes :class:`StorageFullError`.
    """
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if "full" in str(exc):
            raise StorageFullError("metadata disk is full") from exc
        raise


# ---------------------------------------------------------------------------------- records


@attrs.frozen
class TenantInfo:
    """A tenant: ``quota_bytes`` ``None`` means unlimited."""

    name: str
    quota_bytes: int | None
    used_bytes: int


@attrs.frozen
class AppInfo:
    """An app (API client) with its tenant, opaque secret hash and granted scopes."""

    client_id: str
    tenant: str
    name: str
    secret_hash: str
    scopes: frozenset[str]


@attrs.frozen
class BucketInfo:
    """A bucket; ``created_at`` is Unix seconds."""

    name: str
    versioning: bool
    created_at: float


@attrs.frozen
class ObjectInfo:
    """One object version (or delete marker). ``etag`` is the hex SHA-256 (empty for markers)."""

    bucket: str
    key: str
    version_id: str
    size: int
    etag: str
    content_type: str
    user_metadata: dict[str, str]
    last_modified: float
    is_latest: bool
    delete_marker: bool
    seq: int
    #: Where the byte store keeps the bytes (set by point reads and writes; "" otherwise).
    location: str = attrs.field(default="", eq=False, repr=False)


@attrs.frozen
class BlobInfo:
    """A tenant's blob: its digest (hex), size, attributes and content type."""

    digest: str
    size: int
    content_type: str
    attributes: dict[str, str]
    created_at: float
    #: Where the byte store keeps the bytes (set by point reads and writes; "" otherwise).
    location: str = attrs.field(default="", eq=False, repr=False)

    @property
    def key(self) -> str:
        """The blob key text, ``sha256:<digest>``."""
        return "sha256:" + self.digest


@attrs.frozen
class UploadInfo:
    """A resumable upload session; ``received`` is as last recorded (the file is the truth)."""

    upload_id: str
    total_size: int
    received: int
    attributes: dict[str, str]
    expires_at: float



class PutResult(NamedTuple):
    """A stored object version: ``etag`` is the hex SHA-256 of its bytes."""

    etag: str
    version_id: str
    size: int


class DeleteResult(NamedTuple):
    """What a delete did: the version removed or the marker added ("" when nothing existed)."""

    version_id: str
    delete_marker: bool


class ListObjectsResult(NamedTuple):
    """One page of ``list_objects``; ``next_page_token`` is "" on the last page."""

    objects: list[ObjectInfo]
    common_prefixes: list[str]
    next_page_token: str


class ListVersionsResult(NamedTuple):
    """One page of ``list_object_versions`` (``is_latest``/``delete_marker`` on each info)."""

    versions: list[ObjectInfo]
    next_page_token: str


class UploadState(NamedTuple):
    """An upload session and the bytes it holds durably."""

    upload_id: str
    received: int


class CompletedUpload(NamedTuple):
    """A finished upload: blob ``key`` (``sha256:<hex>``), ``size``, ``deduplicated``."""

    key: str
    size: int
    deduplicated: bool



# -------------------------------------------------------------------------------- helpers


def tenant_id(conn: sqlite3.Connection, tenant: str) -> int:
    """Return a tenant's row id. Raises NotFoundError."""
    row = conn.execute("SELECT id FROM tenants WHERE name = ?", (tenant,)).fetchone()
    if row is None:
        raise NotFoundError(f"tenant {tenant!r} does not exist")
    return row[0]


def bucket_row(conn: sqlite3.Connection, tenant: str, bucket: str) -> tuple[int, bool]:
    """Return ``(bucket_id, versioning)``. Raises NotFoundError (also for a missing tenant)."""
    row = conn.execute(
        "SELECT b.id, b.versioning FROM buckets b JOIN tenants t ON t.id = b.tenant_id "
        "WHERE t.name = ? AND b.name = ?",
        (tenant, bucket),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"bucket {bucket!r} does not exist")
    return row[0], bool(row[1])


OBJECT_COLUMNS = (
    "seq, key, version_id, latest, delete_marker, digest, size, content_type, "
    "user_metadata, last_modified"
)


def object_from_row(bucket: str, row: Sequence[Any]) -> ObjectInfo:
    """Build an :class:`ObjectInfo` from a row selected with ``OBJECT_COLUMNS`` (and, for a
    point read, the bytes' location after them)."""
    seq, key, version_id, latest, marker, digest, size, ctype, meta, modified = row[:10]
    return ObjectInfo(
        bucket=bucket, key=bytes(key).decode("utf-8"), version_id=version_id, size=size,
        etag=digest or "", content_type=ctype,
        user_metadata={} if meta == "{}" else json.loads(meta),
        last_modified=modified, is_latest=bool(latest), delete_marker=bool(marker), seq=seq,
        location=(row[10] or "") if len(row) > 10 else "",
    )


def dump_json(value: dict[str, str]) -> str:
    """Serialize a string map canonically (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _upper(prefix: bytes) -> bytes | None:
    """The exclusive upper bound of keys starting with ``prefix`` (None: no bound)."""
    return prefix + b"\xff" if prefix else None


# ------------------------------------------------------------------------------------ reads


def read_setting(conn: sqlite3.Connection, name: str) -> bytes:
    """A value from the ``settings`` table. Raises NotFoundError."""
    row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFoundError(f"setting {name!r} is missing")
    return bytes(row[0])


def read_tenant(conn: sqlite3.Connection, name: str) -> TenantInfo:
    """A tenant with its quota and usage. Raises NotFoundError."""
    row = conn.execute(
        "SELECT quota_bytes, used_bytes FROM tenants WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"tenant {name!r} does not exist")
    return TenantInfo(name, row[0], row[1])


def read_app(conn: sqlite3.Connection, client_id: str) -> AppInfo:
    """An app with its tenant, secret hash and granted scopes. Raises NotFoundError."""
    row = conn.execute(
        "SELECT t.name, a.name, a.secret_hash FROM apps a JOIN tenants t ON t.id = a.tenant_id "
        "WHERE a.client_id = ?",
        (client_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"app {client_id!r} does not exist")
    scopes = frozenset(
        r[0] for r in conn.execute("SELECT scope FROM grants WHERE client_id = ?", (client_id,))
    )
    return AppInfo(client_id, row[0], row[1], row[2], scopes)


def read_buckets(conn: sqlite3.Connection, tenant: str) -> list[BucketInfo]:
    """All of a tenant's buckets, by name. Raises NotFoundError for a missing tenant."""
    tid = tenant_id(conn, tenant)
    return [
        BucketInfo(name, bool(versioning), created)
        for name, versioning, created in conn.execute(
            "SELECT name, versioning, created FROM buckets WHERE tenant_id = ? ORDER BY name",
            (tid,),
        )
    ]


def read_bucket(conn: sqlite3.Connection, tenant: str, name: str) -> BucketInfo:
    """One bucket. Raises NotFoundError."""
    row = conn.execute(
        "SELECT b.versioning, b.created FROM buckets b JOIN tenants t ON t.id = b.tenant_id "
        "WHERE t.name = ? AND b.name = ?",
        (tenant, name),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"bucket {name!r} does not exist")
    return BucketInfo(name, bool(row[0]), row[1])


# One statement finds the tenant, the bucket, the object and where its bytes are (all through
# unique indexes).
_OBJECT_FROM_SQL = (
    "SELECT " + ", ".join("o." + c.strip() for c in OBJECT_COLUMNS.split(","))
    + ", bl.location FROM tenants t JOIN buckets b ON b.tenant_id = t.id"
    " JOIN object_versions o ON o.bucket_id = b.id"
    " LEFT JOIN blobs bl ON bl.digest = o.digest WHERE t.name = ? AND b.name = ? AND o.key = ?"
)
_OBJECT_LATEST_SQL = _OBJECT_FROM_SQL + " AND o.latest = 1"
_OBJECT_VERSION_SQL = _OBJECT_FROM_SQL + " AND o.version_id = ?"


def read_object(
    conn: sqlite3.Connection, tenant: str, bucket: str, key: bytes, version_id: str | None
) -> ObjectInfo:
    """The current object at ``key`` or one version of it.

    Raises:
        NotFoundError: no bucket, no such key or version, the key's latest version is a delete
            marker (without ``version_id``), or ``version_id`` names a delete marker.
    """
    if version_id:
        row = conn.execute(_OBJECT_VERSION_SQL, (tenant, bucket, key, version_id)).fetchone()
    else:
        row = conn.execute(_OBJECT_LATEST_SQL, (tenant, bucket, key)).fetchone()
    if row is None or row[4]:
        bucket_row(conn, tenant, bucket)  # a missing bucket (or tenant) says so
        what = f"version {version_id!r}" if version_id else "object"
        raise NotFoundError(f"{what} of {key.decode('utf-8')!r} does not exist")
    return object_from_row(bucket, row)


def read_put_context(
    conn: sqlite3.Connection, tenant: str, bucket: str, key: bytes
) -> tuple[BucketInfo, ObjectInfo | None, TenantInfo]:
    """What a put checks before streaming: the bucket, the current object (if any), the tenant.

    Raises:
        NotFoundError: no such bucket (or tenant).
    """
    info = read_bucket(conn, tenant, bucket)
    try:
        current: ObjectInfo | None = read_object(conn, tenant, bucket, key, None)
    except NotFoundError:
        current = None
    return info, current, read_tenant(conn, tenant)


def read_object_page(
    conn: sqlite3.Connection, tenant: str, bucket: str, *, prefix: bytes, delimiter: bytes,
    max_keys: int, after: bytes | None,
) -> tuple[list[ObjectInfo], list[str], bytes | None]:
    """One page of current objects and common prefixes, in bytewise key order.

    Args:
        after: exclusive start position (a key, or a common prefix followed by ``0xFF``).

    Returns:
        ``(objects, common_prefixes, next_after)``; ``next_after`` is None on the last page.
        Objects and common prefixes together number at most ``max_keys``.
    """
    bid, _ = bucket_row(conn, tenant, bucket)
    upper = _upper(prefix)
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    position = after

    def fetch(limit: int) -> list[tuple]:
        sql = [f"SELECT {OBJECT_COLUMNS} FROM object_versions "
               "WHERE bucket_id = ? AND latest = 1 AND delete_marker = 0 AND key >= ?"]
        args: list[Any] = [bid, prefix]
        if upper is not None:
            sql.append("AND key < ?")
            args.append(upper)
        if position is not None:
            sql.append("AND key > ?")
            args.append(position)
        sql.append("ORDER BY key LIMIT ?")
        args.append(limit)
        return conn.execute(" ".join(sql), args).fetchall()

    while len(objects) + len(prefixes) < max_keys:
        rows = fetch(max_keys - len(objects) - len(prefixes))
        if not rows:
            return objects, prefixes, None
        for row in rows:
            key = bytes(row[1])
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                prefixes.append(common.decode("utf-8"))
                position = common + b"\xff"
                break  # re-query past everything under this common prefix
            objects.append(object_from_row(bucket, row))
            position = key
    return objects, prefixes, (position if fetch(1) else None)


def read_version_page(
    conn: sqlite3.Connection, tenant: str, bucket: str, *, prefix: bytes, max_keys: int,
    after: tuple[bytes, int] | None,
) -> tuple[list[ObjectInfo], tuple[bytes, int] | None]:
    """One page of versions and delete markers: keys ascending, newest first within a key.

    Returns:
        ``(versions, next_after)`` where positions are ``(key, seq)``, exclusive.
    """
    bid, _ = bucket_row(conn, tenant, bucket)
    sql = [f"SELECT {OBJECT_COLUMNS} FROM object_versions WHERE bucket_id = ? AND key >= ?"]
    args: list[Any] = [bid, prefix]
    upper = _upper(prefix)
    if upper is not None:
        sql.append("AND key < ?")
        args.append(upper)
    if after is not None:
        sql.append("AND (key > ? OR (key = ? AND seq < ?))")
        args.extend([after[0], after[0], after[1]])
    sql.append("ORDER BY key, seq DESC LIMIT ?")
    args.append(max_keys + 1)
    rows = conn.execute(" ".join(sql), args).fetchall()
    versions = [object_from_row(bucket, row) for row in rows[:max_keys]]
    if len(rows) <= max_keys:
        return versions, None
    last = rows[max_keys - 1]
    return versions, (bytes(last[1]), last[0])


def read_blob(conn: sqlite3.Connection, tenant: str, digest: str) -> BlobInfo:
    """One of a tenant's blobs. Raises NotFoundError."""
    tid = tenant_id(conn, tenant)
    row = conn.execute(
        "SELECT t.size, t.content_type, t.attributes, t.created, b.location "
        "FROM tenant_blobs t LEFT JOIN blobs b ON b.digest = t.digest "
        "WHERE t.tenant_id = ? AND t.digest = ?",
        (tid, digest),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"blob sha256:{digest} does not exist")
    return BlobInfo(digest, row[0], row[1], json.loads(row[2]), row[3], location=row[4] or "")


def read_blob_page(
    conn: sqlite3.Connection, tenant: str, *, limit: int, start_after: str | None
) -> list[BlobInfo]:
    """A tenant's blobs ordered by digest (so by key), strictly after ``start_after``."""
    tid = tenant_id(conn, tenant)
    return [
        BlobInfo(digest, size, ctype, json.loads(attributes), created)
        for digest, size, ctype, attributes, created in conn.execute(
            "SELECT digest, size, content_type, attributes, created FROM tenant_blobs "
            "WHERE tenant_id = ? AND digest > ? ORDER BY digest LIMIT ?",
            (tid, start_after or "", limit),
        )
    ]


def read_upload(conn: sqlite3.Connection, tenant: str, upload_id: str) -> UploadInfo:
    """An upload session of this tenant (expired or not). Raises NotFoundError."""
    tid = tenant_id(conn, tenant)
    row = conn.execute(
        "SELECT total_size, received, attributes, expires_at FROM uploads "
        "WHERE upload_id = ? AND tenant_id = ?",
        (upload_id, tid),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"upload {upload_id!r} does not exist")
    return UploadInfo(upload_id, row[0], row[1], json.loads(row[2]), row[3])


def read_referenced(conn: sqlite3.Connection, locations: Iterable[str]) -> set[str]:
    """Which of ``locations`` a ``blobs`` row names (for files a location is the digest)."""
    return {
        loc for loc in locations
        if conn.execute("SELECT 1 FROM blobs WHERE location = ?", (loc,)).fetchone() is not None
    }


def read_location_referenced(conn: sqlite3.Connection, location: str) -> bool:
    """Whether a ``blobs`` row names ``location``."""
    row = conn.execute("SELECT 1 FROM blobs WHERE location = ? LIMIT 1", (location,)).fetchone()
    return row is not None


def read_refcount(conn: sqlite3.Connection, digest: str) -> int:
    """The reference count of ``digest`` (0 when it has no ``blobs`` row)."""
    row = conn.execute("SELECT refcount FROM blobs WHERE digest = ?", (digest,)).fetchone()
    return 0 if row is None else row[0]


def read_upload_ids(conn: sqlite3.Connection) -> set[str]:
    """Every upload session id (for the reaper: files without a session are garbage)."""
    return {r[0] for r in conn.execute("SELECT upload_id FROM uploads")}


# ------------------------------------------------------------------------------------- pool

#: Reads that run inline on the event loop's thread: each looks up one row through a unique
#: index (plus its bucket or tenant), touching a handful of pages.
POINT_READS = frozenset(
    {read_object, read_bucket, read_tenant, read_blob, read_upload, read_put_context}
)

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is SQLITE_BUSY or SQLITE_LOCKED (any extended code of them)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _BUSY_CODES
    text = str(exc)
    return "locked" in text or "busy" in text


class MetadataReader:
    """A pool of read-only connections; each :meth:`run` is one read transaction, in a worker
    thread, or inline for a point read (see the module docstring).

    Args:
        path: the SQLite file (must already exist and be migrated).
        max_connections: at most this many reads run at once in threads; more wait their turn.
        inline: run :data:`POINT_READS` inline on the event loop's thread.
        inline_budget: seconds an inline read may take; two slower ones in a row pause
            inline reads.
        inline_cooldown: seconds they pause for.
        timer: the clock that times inline reads and the pause (real time: it measures how
            long the event loop was blocked).
    """

    def __init__(
        self, path: Path, *, max_connections: int = 4, inline: bool = True,
        inline_budget: float = 0.002, inline_cooldown: float = 1.0,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._path = path
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._inline = inline
        self._inline_budget = inline_budget
        self._inline_cooldown = inline_cooldown
        self._timer = timer
        self._inline_conn: sqlite3.Connection | None = None
        self._inline_paused_until = float("-inf")
        self._last_inline_slow = False
        self.inline_reads = 0
        self.pooled_reads = 0

    def _call(
        self, conn: sqlite3.Connection | None, fn: Callable[..., _T], args: Sequence[Any]
    ) -> tuple[sqlite3.Connection | None, _T | None, BaseException | None]:
        if conn is None:
            conn = connect(self._path, read_only=True)
        error: BaseException | None = None
        result: _T | None = None
        try:
            with transaction(conn, write=False):
                try:
                    result = fn(conn, *args)
                except StorageError as exc:
                    error = exc
        except BaseException:
            conn.close()
            raise
        return conn, result, error

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(conn, *args)`` inside a read transaction: inline on the event loop's
        thread for a point read (:data:`POINT_READS`), else on a pooled connection in a worker
        thread. Either way it is a checkpoint.

        Raises:
            Whatever ``fn`` raises. A connection that failed with anything but a
            :class:`StorageError` (or, inline, SQLITE_BUSY/LOCKED, which goes to the pool) is
            closed instead of being kept.
        """
        if self._closed:
            raise StorageUnavailableError("metadata reads are closed")
        if self._inline and fn in POINT_READS and self._timer() >= self._inline_paused_until:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._inline_conn is None:
                conn = await trio.to_thread.run_sync(self._open_inline)
                if self._inline_conn is None and not self._closed:
                    self._inline_conn = conn
                else:
                    conn.close()  # another task opened one first, or the reader closed
            done, result = self._run_inline(fn, args)
            if done:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return result  # type: ignore[return-value]
        self.pooled_reads += 1
        async with self._limiter:
            conn = self._idle.pop() if self._idle else None
            conn, result, error = await trio.to_thread.run_sync(self._call, conn, fn, args)
            self._release(conn)
            if error is not None:
                raise error
            return result  # type: ignore[return-value]

    def _open_inline(self) -> sqlite3.Connection:
        """Open the inline connection (in a worker thread: opening may wait for locks), then
        make it never wait: from now on SQLite answers SQLITE_BUSY at once."""
        conn = connect(self._path, read_only=True)
        conn.execute("PRAGMA busy_timeout = 0")
        return conn

    def _run_inline(self, fn: Callable[..., _T], args: Sequence[Any]) -> tuple[bool, _T | None]:
        """One read on the inline connection: ``(True, result)``, or ``(False, None)`` when
        SQLite answered busy or locked (the caller goes through the pool). A StorageError from
        ``fn`` propagates; any other error closes the inline connection and propagates."""
        conn = self._inline_conn
        if conn is None or self._closed:
            return False, None
        started = self._timer()
        try:
            with transaction(conn, write=False):
                result = fn(conn, *args)
        except StorageError:
            self._charge(started)
            raise
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                self._drop_inline()
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._charge(started)
            return False, None
        except BaseException:
            self._drop_inline()
            raise
        self._charge(started)
        self.inline_reads += 1
        return True, result

    def _charge(self, started: float) -> None:
        """Pause inline reads if the one that began at ``started`` and the one before it both
        blocked the loop too long."""
        now = self._timer()
        slow = now - started > self._inline_budget
        if slow and self._last_inline_slow:
            self._inline_paused_until = now + self._inline_cooldown
            slow = False  # after the pause, two new slow reads are needed again
        self._last_inline_slow = slow

    def _drop_inline(self) -> None:
        conn, self._inline_conn = self._inline_conn, None
        if conn is not None:
            conn.close()

    def _release(self, conn: sqlite3.Connection | None) -> None:
        if conn is None:
            return
        if self._closed:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections; connections in use close when their read ends."""
        self._closed = True
        self._drop_inline()
        while self._idle:
            self._idle.pop().close()
