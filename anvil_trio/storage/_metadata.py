"""Metadata in SQLite: schema, migrations, the single writer and the read functions.

Invariants:

* One writer. :class:`MetadataWriter` owns the only read-write connection of a process; in the
  server it is driven by the metadata actor alone (``_metadata_actor``), so writes are
  serialized. The admin CLI may open its own writer on the same file while the server runs;
  SQLite's write lock and ``busy_timeout`` serialize the two.
* One transaction per mutation (``BEGIN IMMEDIATE`` ... ``COMMIT``), or one for several
  (``apply_many``, a savepoint each): a put's version row, its reference count change and the
  tenant's quota usage commit together or not at all.
* ``blobs.refcount`` = object version rows + tenant blob rows naming that digest; a ``blobs`` row
  exists only while the count is positive. A writer call returns the digests whose row it
  removed ("zeroed"); their files may then be deleted, unless pinned by an in-flight write.
* ``tenants.used_bytes`` = logical bytes of every stored object version (current or not; delete
  markers count 0) plus every tenant blob. Shared content counts for each holder. Upload
  sessions in progress do not count; they are checked at start and at completion.
* Within a (bucket, key), ``seq`` orders versions (larger is newer) and exactly the newest row
  has ``latest = 1``. ``version_id`` is random, never empty, unique.
* Keys are stored as UTF-8 BLOBs, so ``ORDER BY key`` is bytewise.
* Reads run on separate ``query_only`` connections, each read in one transaction (a snapshot);
  in WAL mode they never wait for the writer.
* The schema version is ``PRAGMA user_version``; migrations run in order, each in the same
  transaction as its version bump. A database newer than this code is refused.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ._errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    QuotaExceededError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from ._queries import (
    OBJECT_COLUMNS,
    AppInfo,
    BlobInfo,
    BucketInfo,
    ObjectInfo,
    TenantInfo,
    bucket_row,
    connect,
    dump_json,
    read_location_referenced,
    tenant_id,
    transaction,
)

__all__ = [
    "MIGRATIONS",
    "MetadataWriter",
    "WriteResult",
    "migrate",
]

# ----------------------------------------------------------------------------- migrations


def _migration_1(conn: sqlite3.Connection) -> None:
    statements = [
        "CREATE TABLE settings (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
        """CREATE TABLE tenants (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, quota_bytes INTEGER,
            used_bytes INTEGER NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
            created REAL NOT NULL)""",
        """CREATE TABLE apps (
            client_id TEXT PRIMARY KEY, tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL, secret_hash TEXT NOT NULL, created REAL NOT NULL,
            UNIQUE (tenant_id, name))""",
        """CREATE TABLE grants (
            client_id TEXT NOT NULL REFERENCES apps(client_id) ON DELETE CASCADE,
            scope TEXT NOT NULL, PRIMARY KEY (client_id, scope)) WITHOUT ROWID""",
        """CREATE TABLE buckets (
            id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL, versioning INTEGER NOT NULL, created REAL NOT NULL,
            UNIQUE (tenant_id, name))""",
        """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
            refcount INTEGER NOT NULL CHECK (refcount > 0), created REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE object_versions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            bucket_id INTEGER NOT NULL REFERENCES buckets(id),
            key BLOB NOT NULL, version_id TEXT NOT NULL UNIQUE,
            latest INTEGER NOT NULL, delete_marker INTEGER NOT NULL,
            digest TEXT REFERENCES blobs(digest), size INTEGER NOT NULL,
            content_type TEXT NOT NULL, user_metadata TEXT NOT NULL, last_modified REAL NOT NULL,
            CHECK ((delete_marker = 1) = (digest IS NULL)))""",
        "CREATE INDEX object_versions_by_key ON object_versions (bucket_id, key, seq)",
        """CREATE UNIQUE INDEX object_versions_latest ON object_versions (bucket_id, key)
            WHERE latest = 1""",
        "CREATE INDEX object_versions_by_digest ON object_versions (digest)",
        """CREATE TABLE tenant_blobs (
            tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            digest TEXT NOT NULL REFERENCES blobs(digest), size INTEGER NOT NULL,
            attributes TEXT NOT NULL, content_type TEXT NOT NULL, created REAL NOT NULL,
            PRIMARY KEY (tenant_id, digest)) WITHOUT ROWID""",
        """CREATE TABLE uploads (
            upload_id TEXT PRIMARY KEY, tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            total_size INTEGER NOT NULL, received INTEGER NOT NULL DEFAULT 0,
            attributes TEXT NOT NULL, created REAL NOT NULL, expires_at REAL NOT NULL)""",
        "CREATE INDEX uploads_by_expiry ON uploads (expires_at)",
    ]
    for statement in statements:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO settings (name, value) VALUES ('page_token_secret', ?)",
        (secrets.token_bytes(32),),
    )


def _migration_2(conn: sqlite3.Connection) -> None:
    """Where each digest's bytes are: its own name for files, a per-write name in S3."""
    conn.execute("ALTER TABLE blobs ADD COLUMN location TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE blobs SET location = digest")
    conn.execute("CREATE INDEX blobs_by_location ON blobs (location)")


#: Ordered migrations; migration ``i`` (0-based) brings ``user_version`` from ``i`` to ``i + 1``.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migration_1, _migration_2)


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Callable[[sqlite3.Connection], None]] = MIGRATIONS,
) -> int:
    """Bring the schema up to date, one transaction per migration.

    Returns:
        The schema version after migrating.

    Raises:
        StorageError: the database was written by a newer version of this code.
    """
    while True:
        with transaction(conn, write=True):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(migrations):
                raise StorageError(
                    f"metadata schema version {version} is newer than this code "
                    f"({len(migrations)})"
                )
            if version == len(migrations):
                return version
            migrations[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")


# -------------------------------------------------------------------------------- messages


@attrs.frozen
class CreateTenant:
    """Create a tenant (reply: TenantInfo)."""
    op: ClassVar[str] = "create_tenant"
    name: str
    quota_bytes: int | None
    now: float


@attrs.frozen
class SetTenantQuota:
    """Change a tenant's quota (reply: TenantInfo)."""
    op: ClassVar[str] = "set_tenant_quota"
    name: str
    quota_bytes: int | None


@attrs.frozen
class CreateApp:
    """Register an app with an opaque secret hash (reply: AppInfo)."""
    op: ClassVar[str] = "create_app"
    tenant: str
    name: str
    client_id: str
    secret_hash: str
    now: float


@attrs.frozen
class SetAppSecret:
    """Replace an app's secret hash."""
    op: ClassVar[str] = "set_app_secret"
    client_id: str
    secret_hash: str


@attrs.frozen
class ChangeGrants:
    """Grant (``grant=True``) or revoke scopes, idempotently."""
    op: ClassVar[str] = "change_grants"
    client_id: str
    scopes: tuple[str, ...]
    grant: bool


@attrs.frozen
class CreateBucket:
    """Create a bucket (reply: BucketInfo)."""
    op: ClassVar[str] = "create_bucket"
    tenant: str
    name: str
    versioning: bool
    now: float


@attrs.frozen
class DeleteBucket:
    """Delete a bucket that holds no version or delete marker."""
    op: ClassVar[str] = "delete_bucket"
    tenant: str
    name: str


@attrs.frozen
class CommitPut:
    """Record a durable blob as a new object version (reply: ObjectInfo)."""
    op: ClassVar[str] = "commit_put"
    tenant: str
    bucket: str
    key: bytes
    digest: str
    size: int
    content_type: str
    user_metadata: dict[str, str]
    if_none_match: bool
    now: float
    location: str = ""


@attrs.frozen
class DeleteObject:
    """Delete an object or one version (reply: ``(version_id, delete_marker)``)."""
    op: ClassVar[str] = "delete_object"
    tenant: str
    bucket: str
    key: bytes
    version_id: str | None
    now: float


@attrs.frozen
class StartUpload:
    """Record a new upload session."""
    op: ClassVar[str] = "start_upload"
    tenant: str
    upload_id: str
    total_size: int
    attributes: dict[str, str]
    now: float
    expires_at: float


@attrs.frozen
class TouchUpload:
    """Record upload progress and push its expiry out."""
    op: ClassVar[str] = "touch_upload"
    tenant: str
    upload_id: str
    received: int
    expires_at: float


@attrs.frozen
class CompleteUpload:
    """Turn an upload into a tenant blob (reply: ``(BlobInfo, deduplicated)``)."""
    op: ClassVar[str] = "complete_upload"
    tenant: str
    upload_id: str
    digest: str
    size: int
    now: float
    location: str = ""


@attrs.frozen
class DiscardUpload:
    """Forget an upload session."""
    op: ClassVar[str] = "discard_upload"
    tenant: str
    upload_id: str


@attrs.frozen
class DeleteBlob:
    """Remove a tenant's blob reference."""
    op: ClassVar[str] = "delete_blob"
    tenant: str
    digest: str


@attrs.frozen
class ExpireUploads:
    """Remove sessions expired at ``now`` (reply: their ids)."""
    op: ClassVar[str] = "expire_uploads"
    now: float


@attrs.frozen
class WriteResult:
    """What a write returns: its ``value`` and the locations whose last reference it removed
    (for files, a location is the digest)."""

    value: Any
    zeroed: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------- writer


def _operational_error(exc: sqlite3.OperationalError) -> Exception:
    """The storage error for a failed SQLite write: busy or locked (retry), disk full; else
    ``exc`` itself."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StorageUnavailableError("metadata is busy; retry")
    if "full" in text:
        return StorageFullError("metadata disk is full")
    return exc


class MetadataWriter:
    """The single writer: applies one message per transaction on its own connection.

    Args:
        path: the SQLite file (created and migrated if needed).

    Every ``apply`` either commits fully or raises with nothing changed; ``apply_many`` commits
    several messages in one transaction (one fsync), each in its own savepoint. Domain errors
    are :class:`StorageError` subclasses; anything else (``sqlite3`` errors) means the
    connection or disk is in trouble and the owner should be restarted.
    """

    def __init__(self, path: Path) -> None:
        self.conn = connect(path)
        migrate(self.conn)
        #: Transactions committed (or attempted) by apply and apply_many.
        self.transactions = 0

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` (a read function of ``_queries``) in one read transaction
        on the writer's own connection (the admin tool's reads)."""
        with transaction(self.conn, write=False) as conn:
            return fn(conn, *args)

    def location_referenced(self, location: str) -> bool:
        """Whether any ``blobs`` row names ``location`` (a read of the committed state)."""
        with transaction(self.conn, write=False) as conn:
            return read_location_referenced(conn, location)

    def apply(self, message: Any) -> WriteResult:
        """Apply one write message in one transaction and return its :class:`WriteResult`."""
        handler = getattr(self, "_" + message.op)
        self.transactions += 1
        try:
            with transaction(self.conn, write=True) as conn:
                return handler(conn, message)
        except sqlite3.OperationalError as exc:
            error = _operational_error(exc)
            if error is exc:
                raise
            raise error from exc

    def apply_many(self, messages: Sequence[Any]) -> list[WriteResult | StorageError]:
        """Apply write messages in order in one transaction: one commit (one fsync) for all.

        Each message runs in its own savepoint: one that raises a :class:`StorageError` is
        undone alone and its error takes its place in the result; the others see the effects
        of those before them, exactly as if applied one by one. If the commit itself fails,
        nothing is kept and every message gets that error.

        Returns:
            One :class:`WriteResult` or :class:`StorageError` per message, in order.

        Raises:
            Anything but a :class:`StorageError` (nothing is kept; the owner should restart).
        """
        if len(messages) == 1:
            try:
                return [self.apply(messages[0])]
            except StorageError as exc:
                return [exc]
        results: list[WriteResult | StorageError] = []
        self.transactions += 1
        try:
            with transaction(self.conn, write=True) as conn:
                for message in messages:
                    handler = getattr(self, "_" + message.op)
                    conn.execute("SAVEPOINT message")
                    try:
                        results.append(handler(conn, message))
                    except StorageError as exc:
                        conn.execute("ROLLBACK TO message")
                        results.append(exc)
                    conn.execute("RELEASE message")
        except sqlite3.OperationalError as exc:
            error = _operational_error(exc)
            if error is exc:
                raise
            error.__cause__ = exc
            return [error] * len(messages)
        except StorageError as exc:  # the commit failed (disk full): nothing was kept
            return [exc] * len(messages)
        return results

    # -- references and quota (inside a transaction)

    def _ref(
        self, conn: sqlite3.Connection, digest: str, size: int, location: str, now: float
    ) -> str:
        """Take one reference on ``digest``; returns the location its bytes are at: the
        existing row's, or ``location`` (default: the digest) for a new row. Each statement
        is atomic on its row, so a concurrent last unref either happens first (and this
        inserts a new row) or sees the count it must keep."""
        row = conn.execute(
            "UPDATE blobs SET refcount = refcount + 1 WHERE digest = ? RETURNING location",
            (digest,),
        ).fetchone()
        if row is not None:
            return row[0]
        location = location or digest
        conn.execute(
            "INSERT INTO blobs (digest, size, refcount, created, location) VALUES (?, ?, 1, ?, ?)",
            (digest, size, now, location),
        )
        return location

    def _unref(self, conn: sqlite3.Connection, digest: str, zeroed: list[str]) -> None:
        row = conn.execute(
            "DELETE FROM blobs WHERE digest = ? AND refcount = 1 RETURNING location", (digest,)
        ).fetchone()
        if row is not None:
            zeroed.append(row[0])
        else:
            conn.execute("UPDATE blobs SET refcount = refcount - 1 WHERE digest = ?", (digest,))

    def _charge(self, conn: sqlite3.Connection, tid: int, delta: int) -> None:
        quota, used = conn.execute(
            "SELECT quota_bytes, used_bytes FROM tenants WHERE id = ?", (tid,)
        ).fetchone()
        if delta > 0 and quota is not None and used + delta > quota:
            raise QuotaExceededError(
                f"tenant quota of {quota} bytes exceeded ({used} used, {delta} more needed)"
            )
        conn.execute("UPDATE tenants SET used_bytes = used_bytes + ? WHERE id = ?", (delta, tid))

    # -- tenants, apps, grants

    def _create_tenant(self, conn: sqlite3.Connection, m: CreateTenant) -> WriteResult:
        if not m.name or len(m.name) > 255 or not m.name.isprintable():
            raise InvalidArgumentError("a tenant name is 1-255 printable characters")
        if m.quota_bytes is not None and m.quota_bytes < 0:
            raise InvalidArgumentError("quota_bytes must not be negative")
        if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (m.name,)).fetchone():
            raise AlreadyExistsError(f"tenant {m.name!r} already exists")
        conn.execute(
            "INSERT INTO tenants (name, quota_bytes, used_bytes, created) VALUES (?, ?, 0, ?)",
            (m.name, m.quota_bytes, m.now),
        )
        return WriteResult(TenantInfo(m.name, m.quota_bytes, 0))

    def _set_tenant_quota(self, conn: sqlite3.Connection, m: SetTenantQuota) -> WriteResult:
        if m.quota_bytes is not None and m.quota_bytes < 0:
            raise InvalidArgumentError("quota_bytes must not be negative")
        tid = tenant_id(conn, m.name)
        conn.execute("UPDATE tenants SET quota_bytes = ? WHERE id = ?", (m.quota_bytes, tid))
        (used,) = conn.execute("SELECT used_bytes FROM tenants WHERE id = ?", (tid,)).fetchone()
        return WriteResult(TenantInfo(m.name, m.quota_bytes, used))

    def _create_app(self, conn: sqlite3.Connection, m: CreateApp) -> WriteResult:
        tid = tenant_id(conn, m.tenant)
        if not m.client_id or not m.name:
            raise InvalidArgumentError("an app needs a client id and a name")
        if conn.execute("SELECT 1 FROM apps WHERE client_id = ?", (m.client_id,)).fetchone():
            raise AlreadyExistsError(f"app {m.client_id!r} already exists")
        if conn.execute(
            "SELECT 1 FROM apps WHERE tenant_id = ? AND name = ?", (tid, m.name)
        ).fetchone():
            raise AlreadyExistsError(f"tenant {m.tenant!r} already has an app named {m.name!r}")
        conn.execute(
            "INSERT INTO apps (client_id, tenant_id, name, secret_hash, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (m.client_id, tid, m.name, m.secret_hash, m.now),
        )
        return WriteResult(AppInfo(m.client_id, m.tenant, m.name, m.secret_hash, frozenset()))

    def _set_app_secret(self, conn: sqlite3.Connection, m: SetAppSecret) -> WriteResult:
        cur = conn.execute(
            "UPDATE apps SET secret_hash = ? WHERE client_id = ?", (m.secret_hash, m.client_id)
        )
        if cur.rowcount == 0:
            raise NotFoundError(f"app {m.client_id!r} does not exist")
        return WriteResult(None)

    def _change_grants(self, conn: sqlite3.Connection, m: ChangeGrants) -> WriteResult:
        if not conn.execute("SELECT 1 FROM apps WHERE client_id = ?", (m.client_id,)).fetchone():
            raise NotFoundError(f"app {m.client_id!r} does not exist")
        sql = (
            "INSERT INTO grants (client_id, scope) VALUES (?, ?) ON CONFLICT DO NOTHING"
            if m.grant
            else "DELETE FROM grants WHERE client_id = ? AND scope = ?"
        )
        conn.executemany(sql, [(m.client_id, scope) for scope in m.scopes])
        return WriteResult(None)

    # -- buckets

    def _create_bucket(self, conn: sqlite3.Connection, m: CreateBucket) -> WriteResult:
        tid = tenant_id(conn, m.tenant)
        if conn.execute(
            "SELECT 1 FROM buckets WHERE tenant_id = ? AND name = ?", (tid, m.name)
        ).fetchone():
            raise AlreadyExistsError(f"bucket {m.name!r} already exists")
        conn.execute(
            "INSERT INTO buckets (tenant_id, name, versioning, created) VALUES (?, ?, ?, ?)",
            (tid, m.name, int(m.versioning), m.now),
        )
        return WriteResult(BucketInfo(m.name, m.versioning, m.now))

    def _delete_bucket(self, conn: sqlite3.Connection, m: DeleteBucket) -> WriteResult:
        bid, _ = bucket_row(conn, m.tenant, m.name)
        if conn.execute("SELECT 1 FROM object_versions WHERE bucket_id = ? LIMIT 1", (bid,)).fetchone():
            raise FailedPreconditionError(f"bucket {m.name!r} still holds objects")
        conn.execute("DELETE FROM buckets WHERE id = ?", (bid,))
        return WriteResult(None)

    # -- objects

    def _latest(self, conn: sqlite3.Connection, bid: int, key: bytes) -> tuple | None:
        return conn.execute(
            f"SELECT {OBJECT_COLUMNS} FROM object_versions "
            "WHERE bucket_id = ? AND key = ? AND latest = 1",
            (bid, key),
        ).fetchone()

    def _remove_version(
        self, conn: sqlite3.Connection, tid: int, bid: int, key: bytes, row: tuple,
        zeroed: list[str],
    ) -> None:
        seq, digest, size, latest = row[0], row[5], row[6], row[3]
        conn.execute("DELETE FROM object_versions WHERE seq = ?", (seq,))
        if digest is not None:
            self._unref(conn, digest, zeroed)
            self._charge(conn, tid, -size)
        if latest:
            conn.execute(
                "UPDATE object_versions SET latest = 1 WHERE seq = (SELECT max(seq) "
                "FROM object_versions WHERE bucket_id = ? AND key = ?)",
                (bid, key),
            )

    def _insert_version(
        self, conn: sqlite3.Connection, bucket: str, bid: int, key: bytes, *,
        digest: str | None, size: int, content_type: str, user_metadata: dict[str, str],
        now: float, location: str = "",
    ) -> ObjectInfo:
        conn.execute(
            "UPDATE object_versions SET latest = 0 WHERE bucket_id = ? AND key = ? AND latest = 1",
            (bid, key),
        )
        version_id = secrets.token_hex(16)
        (seq,) = conn.execute(
            "INSERT INTO object_versions (bucket_id, key, version_id, latest, delete_marker, "
            "digest, size, content_type, user_metadata, last_modified) "
            "VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (bid, key, version_id, int(digest is None), digest, size, content_type,
             dump_json(user_metadata), now),
        ).fetchone()
        return ObjectInfo(
            bucket=bucket, key=key.decode("utf-8"), version_id=version_id, size=size,
            etag=digest or "", content_type=content_type, user_metadata=dict(user_metadata),
            last_modified=now, is_latest=True, delete_marker=digest is None, seq=seq,
            location=location,
        )

    def _commit_put(self, conn: sqlite3.Connection, m: CommitPut) -> WriteResult:
        tid = tenant_id(conn, m.tenant)
        bid, versioning = bucket_row(conn, m.tenant, m.bucket)
        latest = self._latest(conn, bid, m.key)
        if m.if_none_match and latest is not None and not latest[4]:
            raise AlreadyExistsError(f"object {m.key.decode()!r} already exists")
        zeroed: list[str] = []
        # Take the new reference first, so replacing content with itself never zeroes it.
        location = self._ref(conn, m.digest, m.size, m.location, m.now)
        if not versioning:
            for row in conn.execute(
                f"SELECT {OBJECT_COLUMNS} FROM object_versions WHERE bucket_id = ? AND key = ?",
                (bid, m.key),
            ).fetchall():
                self._remove_version(conn, tid, bid, m.key, row, zeroed)
        self._charge(conn, tid, m.size)
        info = self._insert_version(
            conn, m.bucket, bid, m.key, digest=m.digest, size=m.size,
            content_type=m.content_type, user_metadata=m.user_metadata, now=m.now,
            location=location,
        )
        return WriteResult(info, tuple(zeroed))

    def _delete_object(self, conn: sqlite3.Connection, m: DeleteObject) -> WriteResult:
        """Returns ``(version_id, delete_marker)``; see the façade for the rules."""
        tid = tenant_id(conn, m.tenant)
        bid, versioning = bucket_row(conn, m.tenant, m.bucket)
        zeroed: list[str] = []
        if m.version_id:
            row = conn.execute(
                f"SELECT {OBJECT_COLUMNS} FROM object_versions "
                "WHERE bucket_id = ? AND key = ? AND version_id = ?",
                (bid, m.key, m.version_id),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"version {m.version_id!r} does not exist")
            self._remove_version(conn, tid, bid, m.key, row, zeroed)
            return WriteResult((m.version_id, bool(row[4])), tuple(zeroed))
        latest = self._latest(conn, bid, m.key)
        if latest is None:
            return WriteResult(("", False))
        if versioning:
            if latest[4]:
                return WriteResult((latest[2], True))
            info = self._insert_version(
                conn, m.bucket, bid, m.key, digest=None, size=0, content_type="",
                user_metadata={}, now=m.now,
            )
            return WriteResult((info.version_id, True))
        for row in conn.execute(
            f"SELECT {OBJECT_COLUMNS} FROM object_versions WHERE bucket_id = ? AND key = ?",
            (bid, m.key),
        ).fetchall():
            self._remove_version(conn, tid, bid, m.key, row, zeroed)
        return WriteResult((latest[2], bool(latest[4])), tuple(zeroed))

    # -- uploads and blobs

    def _start_upload(self, conn: sqlite3.Connection, m: StartUpload) -> WriteResult:
        tid = tenant_id(conn, m.tenant)
        conn.execute(
            "INSERT INTO uploads (upload_id, tenant_id, total_size, received, attributes, "
            "created, expires_at) VALUES (?, ?, ?, 0, ?, ?, ?)",
            (m.upload_id, tid, m.total_size, dump_json(m.attributes), m.now, m.expires_at),
        )
        return WriteResult(None)

    def _upload_tenant_check(self, conn: sqlite3.Connection, tenant: str, upload_id: str) -> int:
        tid = tenant_id(conn, tenant)
        row = conn.execute(
            "SELECT tenant_id FROM uploads WHERE upload_id = ?", (upload_id,)
        ).fetchone()
        if row is None or row[0] != tid:
            raise NotFoundError(f"upload {upload_id!r} does not exist")
        return tid

    def _touch_upload(self, conn: sqlite3.Connection, m: TouchUpload) -> WriteResult:
        self._upload_tenant_check(conn, m.tenant, m.upload_id)
        conn.execute(
            "UPDATE uploads SET received = ?, expires_at = ? WHERE upload_id = ?",
            (m.received, m.expires_at, m.upload_id),
        )
        return WriteResult(None)

    def _complete_upload(self, conn: sqlite3.Connection, m: CompleteUpload) -> WriteResult:
        """Returns ``(BlobInfo, deduplicated)``; the session row is gone either way."""
        tid = self._upload_tenant_check(conn, m.tenant, m.upload_id)
        (attrs_json,) = conn.execute(
            "SELECT attributes FROM uploads WHERE upload_id = ?", (m.upload_id,)
        ).fetchone()
        conn.execute("DELETE FROM uploads WHERE upload_id = ?", (m.upload_id,))
        row = conn.execute(
            "SELECT t.size, t.content_type, t.attributes, t.created, b.location "
            "FROM tenant_blobs t JOIN blobs b ON b.digest = t.digest "
            "WHERE t.tenant_id = ? AND t.digest = ?",
            (tid, m.digest),
        ).fetchone()
        if row is not None:
            info = BlobInfo(m.digest, row[0], row[1], json.loads(row[2]), row[3], location=row[4])
            return WriteResult((info, True))
        attributes = json.loads(attrs_json)
        content_type = attributes.get("content-type", "application/octet-stream")
        self._charge(conn, tid, m.size)
        location = self._ref(conn, m.digest, m.size, m.location, m.now)
        conn.execute(
            "INSERT INTO tenant_blobs (tenant_id, digest, size, attributes, content_type, "
            "created) VALUES (?, ?, ?, ?, ?, ?)",
            (tid, m.digest, m.size, attrs_json, content_type, m.now),
        )
        info = BlobInfo(m.digest, m.size, content_type, attributes, m.now, location=location)
        return WriteResult((info, False))

    def _discard_upload(self, conn: sqlite3.Connection, m: DiscardUpload) -> WriteResult:
        self._upload_tenant_check(conn, m.tenant, m.upload_id)
        conn.execute("DELETE FROM uploads WHERE upload_id = ?", (m.upload_id,))
        return WriteResult(None)

    def _delete_blob(self, conn: sqlite3.Connection, m: DeleteBlob) -> WriteResult:
        tid = tenant_id(conn, m.tenant)
        row = conn.execute(
            "SELECT size FROM tenant_blobs WHERE tenant_id = ? AND digest = ?", (tid, m.digest)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"blob sha256:{m.digest} does not exist")
        conn.execute("DELETE FROM tenant_blobs WHERE tenant_id = ? AND digest = ?", (tid, m.digest))
        zeroed: list[str] = []
        self._unref(conn, m.digest, zeroed)
        self._charge(conn, tid, -row[0])
        return WriteResult(None, tuple(zeroed))

    def _expire_uploads(self, conn: sqlite3.Connection, m: ExpireUploads) -> WriteResult:
        """Returns the ids of the sessions removed (their files are the caller's to discard)."""
        sql = "SELECT upload_id FROM uploads WHERE expires_at <= ? ORDER BY upload_id"
        ids = [r[0] for r in conn.execute(sql, (m.now,))]
        conn.executemany("DELETE FROM uploads WHERE upload_id = ?", [(i,) for i in ids])
        return WriteResult(tuple(ids))
