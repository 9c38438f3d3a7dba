"""Tests for the metadata layer: migrations, the single writer's transactions, reads.

Every test runs on both implementations of the metadata seam (``store``: SQLite in a temp dir,
PostgreSQL in a fresh database), except those about SQLite's own machinery (inline point
reads, busy handling), marked ``sqlite_only``. Cross-node behaviour is in ``test_postgres``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import attrs
import psycopg
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from anvil_trio.storage import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    QuotaExceededError,
    StorageError,
)
from anvil_trio.storage import _metadata as m
from anvil_trio.storage import _postgres as pg
from anvil_trio.storage._backends import SqliteBackend
from anvil_trio.storage._metadata_actor import MetadataActor, Sync
from anvil_trio.storage import _queries as q

D1 = "1" * 64
D2 = "2" * 64


# -- the two stores -------------------------------------------------------------------------


class SqliteStore:
    """A SQLite metadata file in the test's temp dir."""

    kind = "sqlite"
    migrations = m.MIGRATIONS
    begin_write = "BEGIN IMMEDIATE"
    read_only_error: type[BaseException] = sqlite3.OperationalError

    def __init__(self, path: Path) -> None:
        self.path = path
        self.backend = SqliteBackend(path)

    def writer(self, cls: type | None = None):
        return (cls or m.MetadataWriter)(self.path)

    def reader(self, **kwargs):
        return q.MetadataReader(self.path, **kwargs)

    def connect(self):
        return q.connect(self.path)

    def migrate(self, conn, migrations):
        return m.migrate(conn, migrations)

    def version(self, conn) -> int:
        return conn.execute("PRAGMA user_version").fetchone()[0]

    def set_version(self, conn, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {version}")

    def has_table(self, conn, name: str) -> bool:
        return conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None


class PgStore:
    """A fresh PostgreSQL database."""

    kind = "postgres"
    begin_write = "BEGIN"

    def __init__(self, url: str) -> None:
        self.url = url
        self.backend = pg.PostgresBackend(url)
        self.migrations = pg.PG_MIGRATIONS
        self.read_only_error = psycopg.errors.ReadOnlySqlTransaction

    def writer(self, cls: type | None = None):
        return (cls or pg.PostgresWriter)(self.backend)

    def reader(self, **kwargs):
        return pg.PostgresReader(self.backend, **kwargs)

    def connect(self):
        return self.backend.connect()

    def migrate(self, conn, migrations):
        return pg.pg_migrate(conn, migrations)

    def version(self, conn) -> int:
        return conn.execute("SELECT version FROM anvil_schema").fetchone()[0]

    def set_version(self, conn, version: int) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS anvil_schema (version INTEGER NOT NULL)")
        conn.execute("DELETE FROM anvil_schema")
        conn.execute("INSERT INTO anvil_schema (version) VALUES (%s)", (version,))

    def has_table(self, conn, name: str) -> bool:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    def reset(self) -> None:
        """Empty every table (a database reused between hypothesis examples; DELETE is much
        cheaper than TRUNCATE on tables this small)."""
        raw = self.connect()
        try:
            with raw.transaction():
                for table in ("grants", "apps", "tenant_blobs", "uploads", "object_versions",
                              "blobs", "buckets", "tenants"):
                    raw.execute(f"DELETE FROM {table}")
        finally:
            raw.close()


STORES = ["sqlite", "postgres"]

#: For a test about SQLite's own machinery: run it on the SQLite store only.
sqlite_only = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


@pytest.fixture(params=STORES)
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "meta.sqlite3")
    return PgStore(request.getfixturevalue("pg_url"))


@pytest.fixture
def writer(store):
    w = store.writer()
    w.apply(m.CreateTenant("acme", None, 1.0))
    w.apply(m.CreateBucket("acme", "bkt", True, 1.0))
    w.apply(m.CreateBucket("acme", "flat", False, 1.0))
    yield w
    w.close()


def read(w: m.MetadataWriter, fn, *args, **kwargs):
    """Run a read function on a fresh read-only connection, in one read transaction."""
    backend = getattr(w, "backend", None)
    if backend is not None:  # PostgreSQL: a fresh connection, one read-only snapshot
        return backend.run_read(fn, *args, **kwargs)
    conn = q.connect(Path(w.conn.execute("PRAGMA database_list").fetchone()[2]), read_only=True)
    try:
        with q.transaction(conn, write=False):
            return fn(conn, *args, **kwargs)
    finally:
        conn.close()


def put(w, key: bytes, digest: str, size: int, *, bucket: str = "bkt", **kw) -> q.ObjectInfo:
    msg = m.CommitPut("acme", bucket, key, digest, size, "text/plain", {"a": "b"},
                      kw.get("if_none_match", False), 2.0)
    return w.apply(msg).value


def refcount(w, digest: str) -> int:
    return read(w, q.read_refcount, digest)


def used(w, tenant: str = "acme") -> int:
    return read(w, q.read_tenant, tenant).used_bytes


def test_fresh_database_is_migrated(store) -> None:
    """A new file gets every migration, WAL mode, foreign keys and a 32-byte token secret."""
    w = store.writer()
    conn = w.conn
    if store.kind == "postgres":
        assert store.version(conn) == len(store.migrations)
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"tenants", "apps", "grants", "buckets", "object_versions", "blobs",
                "tenant_blobs", "uploads", "settings"} <= tables
        assert len(read(w, q.read_setting, "page_token_secret")) == 32
        w.close()
        return
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(m.MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"tenants", "apps", "grants", "buckets", "object_versions", "blobs",
            "tenant_blobs", "uploads", "settings"} <= tables
    assert len(read(w, q.read_setting, "page_token_secret")) == 32
    w.close()


def test_existing_database_keeps_data_and_secret(store) -> None:
    """Reopening an up-to-date database migrates nothing and keeps rows and the secret."""
    w = store.writer()
    w.apply(m.CreateTenant("acme", 10, 1.0))
    secret = read(w, q.read_setting, "page_token_secret")
    w.close()
    w2 = store.writer()
    assert read(w2, q.read_tenant, "acme") == q.TenantInfo("acme", 10, 0)
    assert read(w2, q.read_setting, "page_token_secret") == secret
    w2.close()


def test_new_migration_applies_to_existing_database(store) -> None:
    """A later migration runs once on an existing database, in order, keeping its data."""
    w = store.writer()
    w.apply(m.CreateTenant("acme", None, 1.0))
    w.close()
    calls = []

    def add_column(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE tenants ADD COLUMN note TEXT NOT NULL DEFAULT 'x'")

    conn = store.connect()
    migrations = store.migrations
    assert store.migrate(conn, (*migrations, add_column)) == len(migrations) + 1
    assert store.migrate(conn, (*migrations, add_column)) == len(migrations) + 1
    assert calls == [1]
    assert conn.execute("SELECT name, note FROM tenants").fetchall() == [("acme", "x")]
    conn.close()


def test_failed_migration_rolls_back(store) -> None:
    """A migration that fails leaves neither its changes nor a version bump behind."""
    store.writer().close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    conn = store.connect()
    with pytest.raises(RuntimeError):
        store.migrate(conn, (*store.migrations, broken))
    assert store.version(conn) == len(store.migrations)
    assert not store.has_table(conn, "half_done")
    conn.close()


def test_newer_database_is_refused(store) -> None:
    """A database written by a newer schema is refused rather than misread."""
    conn = store.connect()
    store.set_version(conn, len(store.migrations) + 5)
    conn.close()
    with pytest.raises(StorageError, match="newer"):
        store.writer()


def test_tenants_apps_and_grants(writer: m.MetadataWriter) -> None:
    """Apps belong to tenants, store secret hashes opaquely, and collect idempotent grants."""
    with pytest.raises(AlreadyExistsError):
        writer.apply(m.CreateTenant("acme", None, 1.0))
    with pytest.raises(NotFoundError):
        writer.apply(m.CreateApp("nobody", "a", "cid0", "h", 1.0))
    writer.apply(m.CreateApp("acme", "app", "cid1", "hash-1", 1.0))
    with pytest.raises(AlreadyExistsError):
        writer.apply(m.CreateApp("acme", "other", "cid1", "h", 1.0))
    with pytest.raises(AlreadyExistsError):
        writer.apply(m.CreateApp("acme", "app", "cid2", "h", 1.0))
    writer.apply(m.ChangeGrants("cid1", ("read:*", "write:bucket:x"), True))
    writer.apply(m.ChangeGrants("cid1", ("read:*",), True))
    writer.apply(m.ChangeGrants("cid1", ("write:bucket:x", "never:granted"), False))
    writer.apply(m.SetAppSecret("cid1", "hash-2"))
    assert read(writer, q.read_app, "cid1") == q.AppInfo(
        "cid1", "acme", "app", "hash-2", frozenset({"read:*"})
    )
    with pytest.raises(NotFoundError):
        writer.apply(m.SetAppSecret("nope", "h"))


def test_refcounts_follow_versions(writer: m.MetadataWriter) -> None:
    """Each version referencing a digest counts once; the last removal zeroes and drops the row."""
    a = put(writer, b"a", D1, 10)
    put(writer, b"b", D1, 10)
    assert refcount(writer, D1) == 2 and used(writer) == 20
    first = writer.apply(m.DeleteObject("acme", "bkt", b"a", a.version_id, 3.0))
    assert first.zeroed == () and refcount(writer, D1) == 1
    b_version = read(writer, q.read_object, "acme", "bkt", b"b", None).version_id
    last = writer.apply(m.DeleteObject("acme", "bkt", b"b", b_version, 3.0))
    assert last.zeroed == (D1,) and refcount(writer, D1) == 0 and used(writer) == 0


def test_quota_failure_changes_nothing(writer: m.MetadataWriter) -> None:
    """A put over quota commits no version, no reference and no usage."""
    writer.apply(m.SetTenantQuota("acme", 15))
    put(writer, b"a", D1, 10)
    with pytest.raises(QuotaExceededError):
        put(writer, b"b", D2, 6)
    assert refcount(writer, D2) == 0 and used(writer) == 10
    with pytest.raises(NotFoundError):
        read(writer, q.read_object, "acme", "bkt", b"b", None)


def test_unversioned_put_replaces_and_zeroes_old_bytes(writer: m.MetadataWriter) -> None:
    """Without versioning a put removes the old version, its reference and its usage."""
    put(writer, b"k", D1, 10, bucket="flat")
    result = writer.apply(m.CommitPut("acme", "flat", b"k", D2, 4, "", {}, False, 3.0))
    assert result.zeroed == (D1,)
    versions, _ = read(writer, q.read_version_page, "acme", "flat", prefix=b"", max_keys=10,
                       after=None)
    assert [(v.etag, v.is_latest) for v in versions] == [(D2, True)]
    assert used(writer) == 4
    same = writer.apply(m.CommitPut("acme", "flat", b"k", D2, 4, "", {}, False, 4.0))
    assert same.zeroed == () and refcount(writer, D2) == 1


def test_latest_flag_moves_back_when_newest_is_removed(writer: m.MetadataWriter) -> None:
    """Deleting the newest version by id makes the next newest the latest again."""
    v1 = put(writer, b"k", D1, 1)
    v2 = put(writer, b"k", D2, 2)
    writer.apply(m.DeleteObject("acme", "bkt", b"k", v2.version_id, 3.0))
    current = read(writer, q.read_object, "acme", "bkt", b"k", None)
    assert current.version_id == v1.version_id and current.is_latest


def test_delete_markers(writer: m.MetadataWriter) -> None:
    """Versioned deletes add one marker; the marker hides the key; removing it restores it."""
    v1 = put(writer, b"k", D1, 1)
    marker, is_marker = writer.apply(m.DeleteObject("acme", "bkt", b"k", None, 3.0)).value
    assert is_marker and marker != v1.version_id
    again = writer.apply(m.DeleteObject("acme", "bkt", b"k", None, 4.0)).value
    assert again == (marker, True)
    with pytest.raises(NotFoundError):
        read(writer, q.read_object, "acme", "bkt", b"k", None)
    with pytest.raises(NotFoundError):
        read(writer, q.read_object, "acme", "bkt", b"k", marker)
    assert writer.apply(m.DeleteObject("acme", "bkt", b"missing", None, 3.0)).value == ("", False)
    assert writer.apply(m.DeleteObject("acme", "bkt", b"k", marker, 5.0)).value == (marker, True)
    assert read(writer, q.read_object, "acme", "bkt", b"k", None).version_id == v1.version_id


def test_bucket_delete_needs_empty_bucket(writer: m.MetadataWriter) -> None:
    """A bucket holding only a delete marker cannot be deleted; an empty one can."""
    v = put(writer, b"k", D1, 1)
    writer.apply(m.DeleteObject("acme", "bkt", b"k", None, 3.0))
    writer.apply(m.DeleteObject("acme", "bkt", b"k", v.version_id, 3.0))
    with pytest.raises(FailedPreconditionError):
        writer.apply(m.DeleteBucket("acme", "bkt"))
    marker = read(writer, q.read_version_page, "acme", "bkt", prefix=b"", max_keys=5,
                  after=None)[0][0]
    writer.apply(m.DeleteObject("acme", "bkt", b"k", marker.version_id, 3.0))
    writer.apply(m.DeleteBucket("acme", "bkt"))
    with pytest.raises(NotFoundError):
        read(writer, q.read_bucket, "acme", "bkt")


def test_tenants_are_isolated(writer: m.MetadataWriter) -> None:
    """Another tenant may reuse a bucket name and cannot see this tenant's bucket or blobs."""
    writer.apply(m.CreateTenant("other", None, 1.0))
    writer.apply(m.CreateBucket("other", "bkt", False, 1.0))
    put(writer, b"k", D1, 1)
    with pytest.raises(NotFoundError):
        read(writer, q.read_object, "other", "bkt", b"k", None)
    assert [b.name for b in read(writer, q.read_buckets, "other")] == ["bkt"]


def test_upload_sessions_and_blobs(writer: m.MetadataWriter) -> None:
    """Completion removes the session, creates the tenant blob once (dedup), expiry reaps."""
    writer.apply(m.StartUpload("acme", "a" * 32, 5, {"content-type": "text/x"}, 1.0, 100.0))
    writer.apply(m.StartUpload("acme", "b" * 32, 5, {}, 1.0, 100.0))
    writer.apply(m.StartUpload("acme", "c" * 32, 5, {}, 1.0, 50.0))
    blob, dedup = writer.apply(m.CompleteUpload("acme", "a" * 32, D1, 5, 2.0)).value
    assert not dedup and blob.content_type == "text/x"
    _, dedup = writer.apply(m.CompleteUpload("acme", "b" * 32, D1, 5, 2.0)).value
    assert dedup and used(writer) == 5 and refcount(writer, D1) == 1
    with pytest.raises(NotFoundError):
        read(writer, q.read_upload, "acme", "a" * 32)
    assert writer.apply(m.ExpireUploads(60.0)).value == ("c" * 32,)
    assert read(writer, q.read_upload_ids) == set()
    assert writer.apply(m.DeleteBlob("acme", D1)).zeroed == (D1,)
    with pytest.raises(NotFoundError):
        writer.apply(m.DeleteBlob("acme", D1))


def test_list_pages_bytewise_with_delimiter(writer: m.MetadataWriter) -> None:
    """Listing orders keys bytewise and counts common prefixes toward max_keys."""
    for key in ["b", "a/1", "a/2", "Z", "é", "a", "c/d/e"]:
        put(writer, key.encode(), D1, 1)
    page = lambda after, n: read(  # noqa: E731
        writer, q.read_object_page, "acme", "bkt", prefix=b"", delimiter=b"/", max_keys=n,
        after=after,
    )
    seen_objects, seen_prefixes, after = [], [], None
    while True:
        objects, prefixes, after = page(after, 2)
        assert len(objects) + len(prefixes) <= 2
        seen_objects += [o.key for o in objects]
        seen_prefixes += prefixes
        if after is None:
            break
    assert seen_objects == ["Z", "a", "b", "é"]
    assert seen_prefixes == ["a/", "c/"]


async def test_reads_do_not_wait_for_the_writer(store, writer: m.MetadataWriter) -> None:
    """A read completes while the writer holds an open write transaction, and is query_only."""
    reader = store.reader(max_connections=2)
    writer.conn.execute(store.begin_write)
    writer.conn.execute("UPDATE tenants SET used_bytes = 99")
    try:
        with trio.fail_after(5):
            assert (await reader.run(q.read_tenant, "acme")).used_bytes == 0
    finally:
        writer.conn.execute("ROLLBACK")
    with pytest.raises(store.read_only_error):
        await reader.run(lambda conn: conn.execute("DELETE FROM tenants"))
    with pytest.raises(NotFoundError):
        await reader.run(q.read_tenant, "nobody")
    assert (await reader.run(q.read_tenant, "acme")).name == "acme"
    reader.close()


@sqlite_only
async def test_point_reads_run_inline_and_see_each_commit(writer: m.MetadataWriter) -> None:
    """Point reads use the inline connection, see every commit, and keep it on NotFoundError."""
    path = Path(writer.conn.execute("PRAGMA database_list").fetchone()[2])
    reader = q.MetadataReader(path, max_connections=2)
    try:
        assert (await reader.run(q.read_tenant, "acme")).used_bytes == 0
        put(writer, b"k", D1, 10)
        assert (await reader.run(q.read_object, "acme", "bkt", b"k", None)).size == 10
        assert (await reader.run(q.read_tenant, "acme")).used_bytes == 10
        with pytest.raises(NotFoundError):
            await reader.run(q.read_object, "acme", "bkt", b"missing", None)
        assert (await reader.run(q.read_bucket, "acme", "bkt")).versioning
        bucket, current, tenant = await reader.run(q.read_put_context, "acme", "bkt", b"k")
        assert (bucket.name, current.size, tenant.used_bytes) == ("bkt", 10, 10)
        assert (reader.inline_reads, reader.pooled_reads) == (5, 0)
        assert len(await reader.run(q.read_buckets, "acme")) == 2  # a scan: pooled
        assert reader.pooled_reads == 1
        conn = reader._inline_conn
        assert conn is not None and conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        assert conn.execute("PRAGMA query_only").fetchone()[0] == 1
    finally:
        reader.close()
    assert reader._inline_conn is None
    with pytest.raises(StorageError):
        await reader.run(q.read_tenant, "acme")


@sqlite_only
async def test_inline_read_meeting_a_lock_goes_through_the_pool(store, tmp_path: Path) -> None:
    """A point read that meets SQLITE_BUSY never waits inline: it is retried in the pool,
    which waits for the lock and then answers."""
    path = tmp_path / "meta.sqlite3"
    w = m.MetadataWriter(path)
    w.apply(m.CreateTenant("acme", None, 1.0))
    w.close()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    assert blocker.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    reader = q.MetadataReader(path, max_connections=2)
    try:
        assert (await reader.run(q.read_tenant, "acme")).used_bytes == 0
        blocker.execute("BEGIN EXCLUSIVE")
        blocker.execute("UPDATE tenants SET used_bytes = 7")
        results: list[q.TenantInfo] = []

        async def read_it() -> None:
            results.append(await reader.run(q.read_tenant, "acme"))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_it)
                while reader.pooled_reads == 0:
                    await trio.sleep(0.01)
                assert not results
                blocker.execute("COMMIT")
        assert results[0].used_bytes == 7
        assert (reader.inline_reads, reader.pooled_reads) == (1, 1)
        assert (await reader.run(q.read_tenant, "acme")).used_bytes == 7
        assert reader.inline_reads == 2
    finally:
        reader.close()
        blocker.close()


@sqlite_only
async def test_slow_inline_reads_pause_inline_reads(writer: m.MetadataWriter) -> None:
    """Two inline reads in a row over budget send point reads to the pool until the cooldown
    ends; a single slow one (a preempted thread) does not."""
    path = Path(writer.conn.execute("PRAGMA database_list").fetchone()[2])
    now = [0.0]
    step = [0.0]

    def timer() -> float:
        now[0] += step[0]
        return now[0]

    reader = q.MetadataReader(path, inline_budget=0.002, inline_cooldown=1.0, timer=timer)
    try:
        await reader.run(q.read_tenant, "acme")
        step[0] = 0.01  # every timer reading now moves 10 ms: each inline read is "slow"
        await reader.run(q.read_tenant, "acme")
        step[0] = 0.0
        await reader.run(q.read_tenant, "acme")  # one slow read alone changes nothing
        step[0] = 0.01
        await reader.run(q.read_tenant, "acme")
        await reader.run(q.read_tenant, "acme")  # the second slow one in a row
        assert (reader.inline_reads, reader.pooled_reads) == (5, 0)
        step[0] = 0.0
        for _ in range(3):
            await reader.run(q.read_tenant, "acme")
        assert (reader.inline_reads, reader.pooled_reads) == (5, 3)
        now[0] += 1.0
        await reader.run(q.read_tenant, "acme")
        assert (reader.inline_reads, reader.pooled_reads) == (6, 3)
    finally:
        reader.close()


@sqlite_only
async def test_inline_reads_can_be_turned_off(writer: m.MetadataWriter) -> None:
    """inline=False sends every read, point reads included, through the pool."""
    path = Path(writer.conn.execute("PRAGMA database_list").fetchone()[2])
    reader = q.MetadataReader(path, inline=False)
    try:
        assert (await reader.run(q.read_tenant, "acme")).name == "acme"
        assert (reader.inline_reads, reader.pooled_reads) == (0, 1)
        assert reader._inline_conn is None
    finally:
        reader.close()


def test_read_object_names_what_is_missing(writer: m.MetadataWriter) -> None:
    """read_object finds only its own tenant's bucket, key and version, and says which is missing."""
    writer.apply(m.CreateTenant("other", None, 1.0))
    writer.apply(m.CreateBucket("other", "bkt", True, 1.0))
    first = put(writer, b"k", D1, 10)
    put(writer, b"j", D2, 20)
    assert read(writer, q.read_object, "acme", "bkt", b"k", None).version_id == first.version_id
    assert read(writer, q.read_object, "acme", "bkt", b"k", first.version_id).size == 10
    with pytest.raises(NotFoundError, match="bucket"):
        read(writer, q.read_object, "acme", "nope", b"k", None)
    with pytest.raises(NotFoundError, match="object"):
        read(writer, q.read_object, "other", "bkt", b"k", None)
    with pytest.raises(NotFoundError, match="version"):
        read(writer, q.read_object, "acme", "bkt", b"j", first.version_id)
    with pytest.raises(NotFoundError, match="bucket"):
        read(writer, q.read_object, "nobody", "bkt", b"k", None)


# -- group commit -------------------------------------------------------------------------------


def state(w: m.MetadataWriter) -> tuple:
    """Everything a write can change, without the random version ids."""
    conn = w.conn
    return (
        conn.execute(
            "SELECT b.name, o.key, o.latest, o.delete_marker, o.digest, o.size FROM object_versions o"
            " JOIN buckets b ON b.id = o.bucket_id ORDER BY o.seq").fetchall(),
        conn.execute("SELECT digest, size, refcount FROM blobs ORDER BY digest").fetchall(),
        conn.execute("SELECT name, used_bytes FROM tenants ORDER BY name").fetchall(),
        conn.execute("SELECT name FROM buckets ORDER BY name").fetchall(),
    )


def outcome_of(result) -> tuple:
    if isinstance(result, StorageError):
        return ("error", type(result))
    value = result.value
    shape = (value.size, value.etag) if isinstance(value, q.ObjectInfo) else type(value)
    return ("ok", shape, tuple(sorted(result.zeroed)))


_DIGESTS = ["a" * 64, "b" * 64, "c" * 64]
_write_messages = st.one_of(
    st.builds(
        lambda bucket, key, digest, size, inm: m.CommitPut(
            "acme", bucket, key, digest, size, "t", {}, inm, 2.0),
        st.sampled_from(["bkt", "flat", "nope"]), st.sampled_from([b"k1", b"k2"]),
        st.sampled_from(_DIGESTS), st.integers(1, 60), st.booleans(),
    ),
    st.builds(
        lambda bucket, key: m.DeleteObject("acme", bucket, key, None, 3.0),
        st.sampled_from(["bkt", "flat"]), st.sampled_from([b"k1", b"k2"]),
    ),
    st.builds(lambda name: m.CreateBucket("acme", name, False, 1.0),
              st.sampled_from(["flat", "extra"])),
    st.builds(lambda quota: m.SetTenantQuota("acme", quota), st.sampled_from([None, 100])),
)


_scratch_databases: dict[tuple[int, str], str] = {}


def _scratch_store(kind: str, name: str, tmp_path_factory, postgres_server):
    """A fresh store for one hypothesis example: a new SQLite file, or one of two PostgreSQL
    databases made once per session and emptied for each example."""
    if kind == "sqlite":
        return SqliteStore(tmp_path_factory.mktemp(name) / "meta.sqlite3")
    if not postgres_server.running:
        postgres_server.start()
    key = (id(postgres_server), name)
    if key not in _scratch_databases:
        url = postgres_server.create_database()
        raw = psycopg.connect(url, autocommit=True)
        try:  # only speed: no test here is about durability
            raw.execute(f"ALTER DATABASE \"{url.rsplit('/', 1)[1]}\" SET synchronous_commit = off")
        finally:
            raw.close()
        _scratch_databases[key] = url
        store = PgStore(url)
        store.backend.prepare()
        return store
    store = PgStore(_scratch_databases[key])
    store.reset()
    return store


@pytest.mark.parametrize("kind", STORES)
@settings(max_examples=60, deadline=None)
@given(st.lists(_write_messages, min_size=1, max_size=12))
def test_apply_many_equals_one_by_one_in_one_transaction(
    tmp_path_factory, postgres_server, kind, messages,
) -> None:
    """Applying messages together (one transaction, a savepoint each) gives every message the
    result it gets alone, in order, and leaves the same state; one commit for all."""
    writers = []
    for name in ("many", "single"):
        w = _scratch_store(kind, name, tmp_path_factory, postgres_server).writer()
        w.apply(m.CreateTenant("acme", None, 1.0))
        w.apply(m.CreateBucket("acme", "bkt", True, 1.0))
        w.apply(m.CreateBucket("acme", "flat", False, 1.0))
        writers.append(w)
    many, single = writers
    try:
        before = many.transactions
        together = many.apply_many(messages)
        assert many.transactions == before + 1
        alone = []
        for message in messages:
            try:
                alone.append(single.apply(message))
            except StorageError as exc:
                alone.append(exc)
        assert [outcome_of(r) for r in together] == [outcome_of(r) for r in alone]
        assert state(many) == state(single)
    finally:
        many.close()
        single.close()


@attrs.frozen
class HalfDone:
    """A write that changes a row, then fails."""

    op = "half_done"
    tenant: str


def _half_done(self, conn, message):
    conn.execute("UPDATE tenants SET used_bytes = 999 WHERE name = ?", (message.tenant,))
    raise QuotaExceededError("failed after a change")


class FailingHalfway(m.MetadataWriter):
    _half_done = _half_done


def test_apply_many_undoes_a_failed_message_alone(store) -> None:
    """A message that fails after changing rows is rolled back to its own savepoint: its change
    is gone, the messages around it are committed."""
    if store.kind == "sqlite":
        w = store.writer(FailingHalfway)
    else:
        w = store.writer(type("PgFailingHalfway", (pg.PostgresWriter,),
                              {"_half_done": _half_done}))
    try:
        results = w.apply_many([
            m.CreateTenant("acme", None, 1.0), HalfDone("acme"), m.CreateTenant("beta", 5, 1.0),
        ])
        assert isinstance(results[1], QuotaExceededError)
        assert [r.value.name for r in (results[0], results[2])] == ["acme", "beta"]
        assert w.conn.execute("SELECT name, used_bytes FROM tenants ORDER BY name").fetchall() == [
            ("acme", 0), ("beta", 0)]
    finally:
        w.close()


async def test_metadata_actor_commits_a_batch_together_and_keeps_order(
    store, tmp_path: Path,
) -> None:
    """Waiting writes go to the writer as one transaction; a failing one fails alone; a Sync
    in the batch is answered in its place, after the files of the writes before it are gone."""
    from anvil_trio.storage._blobs import BlobStore

    blobs = BlobStore(tmp_path / "data")
    await trio.to_thread.run_sync(store.backend.prepare)
    actor = MetadataActor(store.backend, blobs)
    await actor.on_start()
    try:
        old = await blobs.write(_pieces(b"old"))
        old.release()
        assert len(await actor.receive_batch([
            m.CreateTenant("acme", None, 1.0),
            m.CreateBucket("acme", "flat", False, 1.0),
        ])) == 2
        await actor.receive(m.CommitPut("acme", "flat", b"k", old.digest, 3, "t", {}, False, 2.0))
        new = await blobs.write(_pieces(b"new"))
        new.release()
        before = actor._writer.transactions
        results = await actor.receive_batch([
            m.CommitPut("acme", "flat", b"k", new.digest, 3, "t", {}, False, 3.0),
            m.CreateBucket("acme", "flat", False, 1.0),
            Sync(),
            m.CreateBucket("acme", "other", False, 1.0),
        ])
        assert actor._writer.transactions == before + 2  # the writes before and after Sync
        assert results[0].unwrap().etag == new.digest
        with pytest.raises(AlreadyExistsError):
            results[1].unwrap()
        assert results[2].unwrap() is None
        assert results[3].unwrap().name == "other"
        assert not await blobs.exists(old.digest)  # replaced, and deleted before Sync answered
        assert await blobs.exists(new.digest)
    finally:
        await actor.on_stop()


async def _pieces(data: bytes):
    yield data
