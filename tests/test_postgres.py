"""The PostgreSQL metadata pg_backend: what must hold when several nodes share one database.

Two writers on separate connections, driven from two threads at once, stand in for two nodes.
A real PostgreSQL runs for the session (``_services.PostgresServer``); each test gets a fresh
database.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from anvil_trio.storage import (
    AlreadyExistsError,
    NotFoundError,
    QuotaExceededError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from anvil_trio.storage import _metadata as m
from anvil_trio.storage import _postgres as pg
from anvil_trio.storage import _queries as q

D1, D2, D3 = "1" * 64, "2" * 64, "3" * 64


# ------------------------------------------------------------------------------ fixtures
# ``postgres_server`` (the session's server) and ``pg_url`` (a fresh database) come from
# conftest.


@pytest.fixture
def pg_backend(pg_url: str) -> pg.PostgresBackend:
    """The backend of a fresh, migrated database whose deadlocks (detected, then retried by
    the writer) are found after 50 ms instead of 1 s."""
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{dbname}\" SET deadlock_timeout = '50ms'")
    b = pg.PostgresBackend(pg_url)
    b.prepare()
    return b


@pytest.fixture
def writers(pg_backend: pg.PostgresBackend):
    """Two writers ("nodes") on one database, with tenants a (quota 100) and b, each with a
    versioned bucket ``v`` and an unversioned one ``u``."""
    one, two = pg.PostgresWriter(pg_backend), pg.PostgresWriter(pg_backend)
    one.apply_many([
        m.CreateTenant("a", 100, 1.0), m.CreateTenant("b", None, 1.0),
        m.CreateBucket("a", "v", True, 1.0), m.CreateBucket("a", "u", False, 1.0),
        m.CreateBucket("b", "v", True, 1.0), m.CreateBucket("b", "u", False, 1.0),
    ])
    yield one, two
    one.close()
    two.close()


def together(*fns: Callable[[], Any], timeout: float = 120) -> list[Any]:
    """Run each function in its own thread, all released at once; their results in order
    (a raised exception is re-raised here)."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException | None] = [None] * len(fns)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fns[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread did not finish"
    for error in errors:
        if error is not None:
            raise error
    return results


def attempt(writer: pg.PostgresWriter, message: Any) -> Any:
    """``apply``'s result, or the StorageError it raised."""
    try:
        return writer.apply(message)
    except StorageError as exc:
        return exc


def put(tenant: str, bucket: str, key: bytes, digest: str, size: int, *, inm: bool = False,
        location: str = "") -> m.CommitPut:
    return m.CommitPut(tenant, bucket, key, digest, size, "t", {}, inm, 2.0, location)


def sql(pg_backend: pg.PostgresBackend, statement: str, params: tuple = ()) -> list[tuple]:
    return pg_backend.run_read(lambda conn: conn.execute(statement, params).fetchall())


def start_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread now; the list gets its result or exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def wait_for_lock_wait(pg_backend: pg.PostgresBackend, timeout: float = 10) -> None:
    """Until some session of this database waits for a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sql(pg_backend, "SELECT count(*) FROM pg_stat_activity "
                   "WHERE wait_event_type = 'Lock' AND datname = current_database()")
        if rows[0][0]:
            return
        time.sleep(0.01)
    raise AssertionError("nobody waited for the lock")


# --------------------------------------------------------------------------- connections


def test_url_is_checked_and_its_password_never_shown() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        pg.PostgresBackend("mysql://u:p@h/db")
    with pytest.raises(ValueError, match="postgresql://"):
        pg.PostgresBackend("/var/lib/meta.sqlite3")
    with pytest.raises(ValueError) as info:
        pg.PostgresBackend("postgresql://u:s3cr3t@h/db?bogus_param=1")
    assert "s3cr3t" not in str(info.value)
    b = pg.PostgresBackend("postgres://alice:s3cr3t@db.example:5433/meta?sslmode=require")
    assert "s3cr3t" not in repr(b) and "alice:***@db.example:5433" in repr(b)
    assert "s3cr3t" not in pg.redact_url("postgresql://h/db?user=a&password=s3cr3t")


def test_pg_connection_runs_the_shared_sql(pg_backend: pg.PostgresBackend) -> None:
    """``?`` becomes a parameter, a literal ``%`` stays one, bytes go and come back as bytes."""
    assert pg.pg_sql("SELECT '5%' || ?") == "SELECT '5%%' || %s"
    assert pg.pg_sql("SELECT '5%' || ?") is pg.pg_sql("SELECT '5%' || ?")  # cached
    raw = pg_backend.connect()
    try:
        conn = pg.PgConnection(raw)
        assert conn.execute("SELECT '5%', ?, ?", ("x", 3)).fetchone() == ("5%", "x", 3)
        value = conn.execute("SELECT ?::bytea", (b"\x00\xff",)).fetchone()[0]
        assert type(value) is bytes and value == b"\x00\xff"
        cur = conn.executemany("INSERT INTO settings (name, value) VALUES (?, ?)",
                               [("s1", b"1"), ("s2", b"\x00")])
        assert cur.rowcount >= 1
        assert [r for r in conn.execute("SELECT value FROM settings WHERE name LIKE 's%' "
                                        "ORDER BY name")] == [(b"1",), (b"\x00",)]
        conn.executemany("DELETE FROM settings WHERE name = ?", [])
    finally:
        raw.close()


def test_unreachable_server_is_unavailable_not_a_crash() -> None:
    from _services import free_port

    b = pg.PostgresBackend(f"postgresql://anvil@127.0.0.1:{free_port()}/x", connect_timeout=2)
    with pytest.raises(StorageUnavailableError, match="unreachable") as info:
        b.prepare()
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    writer = b.open_writer()  # connects lazily
    with pytest.raises(StorageUnavailableError):
        writer.apply(m.CreateTenant("a", None, 1.0))
    assert isinstance(writer.apply_many([m.CreateTenant("a", None, 1.0)] * 2)[1],
                      StorageUnavailableError)
    lease = b.reaper_lease()
    assert not lease.acquire() and not lease.held


def test_error_classification() -> None:
    """A full disk on the server is StorageFullError; timeouts and lost connections are
    retryable unavailability; SQL bugs stay what they are."""
    cases = [
        (psycopg.errors.DiskFull("no space"), StorageFullError),
        (psycopg.errors.QueryCanceled("timeout"), StorageUnavailableError),
        (psycopg.errors.LockNotAvailable("lock"), StorageUnavailableError),
        (psycopg.errors.AdminShutdown("bye"), StorageUnavailableError),
        (psycopg.OperationalError("server closed the connection"), StorageUnavailableError),
        (psycopg.InterfaceError("the connection is closed"), StorageUnavailableError),
    ]
    for exc, expected in cases:
        assert type(pg._storage_error(exc, pg._classify(exc))) is expected
    assert pg._storage_error(psycopg.errors.SyntaxError("x"),
                             pg._classify(psycopg.errors.SyntaxError("x"))) is None


# -------------------------------------------------------------------------------- schema


def _sqlite_schema(tmp_path: Path) -> dict[str, set[str]]:
    m.MetadataWriter(tmp_path / "meta.sqlite3").close()
    conn = sqlite3.connect(tmp_path / "meta.sqlite3")
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        schema = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
        schema["<indexes>"] = indexes
        return schema
    finally:
        conn.close()


def test_schema_matches_sqlite(pg_backend: pg.PostgresBackend, tmp_path: Path) -> None:
    """The same tables, columns and named indexes as SQLite's migrations, in types that keep
    the values: no float4, 64-bit counts, bytea keys and settings, 0/1 integer flags."""
    columns = sql(pg_backend, "SELECT table_name, column_name, data_type FROM "
                  "information_schema.columns WHERE table_schema = 'public'")
    schema: dict[str, set[str]] = {}
    types = {}
    for table, column, data_type in columns:
        schema.setdefault(table, set()).add(column)
        types[table, column] = data_type
    assert schema.pop("anvil_schema") == {"version"}
    schema["<indexes>"] = {r[0] for r in sql(
        pg_backend, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint)")}
    assert schema == _sqlite_schema(tmp_path)
    assert "real" not in set(types.values())
    for column in ("created", "last_modified", "expires_at"):
        for (table, name), data_type in types.items():
            if name == column:
                assert data_type == "double precision", (table, name)
    for key in [("tenants", "id"), ("tenants", "quota_bytes"), ("tenants", "used_bytes"),
                ("object_versions", "seq"), ("object_versions", "size"), ("blobs", "size"),
                ("blobs", "refcount"), ("uploads", "total_size"), ("uploads", "received"),
                ("tenant_blobs", "size"), ("buckets", "id")]:
        assert types[key] == "bigint", key
    for key in [("object_versions", "latest"), ("object_versions", "delete_marker"),
                ("buckets", "versioning")]:
        assert types[key] == "integer", key
    assert types["object_versions", "key"] == types["settings", "value"] == "bytea"
    (partial,) = sql(pg_backend, "SELECT indexdef FROM pg_indexes "
                     "WHERE indexname = 'object_versions_latest'")[0]
    assert "UNIQUE" in partial and "WHERE (latest = 1)" in partial
    assert sql(pg_backend, "SELECT confdeltype FROM pg_constraint "
               "WHERE conrelid = 'grants'::regclass AND contype = 'f'") == [("c",)]
    assert sql(pg_backend, "SELECT version FROM anvil_schema") == [(len(pg.PG_MIGRATIONS),)]
    assert len(pg.load_setting(pg_backend, "page_token_secret")) == 32


def test_concurrent_migrations_migrate_once(pg_url: str) -> None:
    """Nodes starting at once on a fresh database both succeed, with one schema and secret."""
    secrets = together(*[lambda: pg.PostgresBackend(pg_url).prepare() for _ in range(4)])
    assert len(set(secrets)) == 1 and len(secrets[0]) == 32
    b = pg.PostgresBackend(pg_url)
    assert sql(b, "SELECT version FROM anvil_schema") == [(len(pg.PG_MIGRATIONS),)]
    assert sql(b, "SELECT count(*) FROM settings") == [(1,)]


def test_newer_schema_is_refused(pg_backend: pg.PostgresBackend) -> None:
    writer = pg_backend.open_writer()
    writer.apply(m.CreateTenant("a", None, 1.0))
    raw = pg_backend.connect()
    raw.execute("UPDATE anvil_schema SET version = version + 5")
    raw.close()
    with pytest.raises(StorageError, match="newer"):
        pg_backend.prepare()
    with pytest.raises(StorageError, match="newer"):
        pg.PostgresWriter(pg_backend)
    with pytest.raises(StorageError, match="newer"):
        pg_backend.open_writer().apply(m.CreateTenant("b", None, 1.0))
    writer.close()


# ------------------------------------------------------------------------ across nodes


def test_concurrent_puts_never_overshoot_the_quota(writers, pg_backend) -> None:
    """Tenant a may hold 100 bytes: of 2x20 puts of 10 bytes from two nodes (one applying
    them one by one, the other in batches) exactly 10 succeed, and usage matches the rows."""
    one, two = writers

    def singles() -> list[Any]:
        return [attempt(one, put("a", "v", b"one-%d" % i, D1, 10)) for i in range(20)]

    def batches() -> list[Any]:
        out: list[Any] = []
        for start in range(0, 20, 4):
            out += two.apply_many([put("a", "v", b"two-%d" % i, D2, 10)
                                   for i in range(start, start + 4)])
        return out

    results = [r for batch in together(singles, batches) for r in batch]
    ok = [r for r in results if isinstance(r, m.WriteResult)]
    assert len(ok) == 10
    assert all(isinstance(r, QuotaExceededError)
               for r in results if not isinstance(r, m.WriteResult))
    rows = sql(pg_backend, "SELECT count(*), sum(size) FROM object_versions")
    assert rows == [(10, 100)]
    assert pg_backend.run_read(q.read_tenant, "a").used_bytes == 100
    refs = dict(sql(pg_backend, "SELECT digest, refcount FROM blobs"))
    assert sum(refs.values()) == 10


def test_concurrent_create_tenant_one_wins(writers) -> None:
    """The same new tenant (or bucket) created on two nodes at once: one succeeds, the other
    gets AlreadyExistsError (its insert met the winner's row and was retried)."""
    one, two = writers
    for i in range(15):
        tenant, bucket = m.CreateTenant(f"t{i}", None, 1.0), f"k{i}"
        results = together(lambda: attempt(one, tenant), lambda: attempt(two, tenant))  # noqa: B023
        assert sorted(type(r).__name__ for r in results) == ["AlreadyExistsError", "WriteResult"]
        flat = m.CreateBucket("b", bucket, False, 1.0)
        versioned = m.CreateBucket("b", bucket, True, 1.0)
        results = together(lambda: attempt(one, flat),  # noqa: B023
                           lambda: attempt(two, versioned))  # noqa: B023
        assert sorted(type(r).__name__ for r in results) == ["AlreadyExistsError", "WriteResult"]


def test_concurrent_batches_create_each_tenant_once(writers, pg_backend) -> None:
    """Batches creating the same new tenants on two nodes, in opposite orders, create each
    name exactly once: the loser of each name gets AlreadyExistsError. (New names have no row
    to lock in order: the inserts may deadlock, which is detected and retried.)"""
    one, two = writers
    names = [f"n{i}" for i in range(12)]
    left = together(
        lambda: one.apply_many([m.CreateTenant(n, None, 1.0) for n in names]),
        lambda: two.apply_many([m.CreateTenant(n, None, 1.0) for n in reversed(names)]),
    )
    created = [r.value.name for batch in left for r in batch if isinstance(r, m.WriteResult)]
    assert sorted(created) == sorted(names)
    assert all(isinstance(r, AlreadyExistsError)
               for batch in left for r in batch if not isinstance(r, m.WriteResult))
    assert sql(pg_backend, "SELECT count(*) FROM tenants WHERE name LIKE 'n%'") == [(12,)]


def test_if_none_match_race_has_one_winner(writers, pg_backend) -> None:
    one, two = writers
    for i in range(15):
        key = b"k%d" % i
        first, second = put("a", "v", key, D1, 1, inm=True), put("a", "v", key, D2, 1, inm=True)
        results = together(lambda: attempt(one, first), lambda: attempt(two, second))  # noqa: B023
        assert sorted(type(r).__name__ for r in results) == ["AlreadyExistsError", "WriteResult"]
    assert sql(pg_backend, "SELECT count(*), sum(latest) FROM object_versions") == [(15, 15)]


def _check_refcounts(pg_backend: pg.PostgresBackend) -> None:
    """blobs.refcount = versions + tenant blobs naming the digest; no row without a reference;
    every tenant's usage is the sum of its rows."""
    bad = sql(pg_backend, """
        SELECT b.digest, b.refcount,
               (SELECT count(*) FROM object_versions o WHERE o.digest = b.digest)
             + (SELECT count(*) FROM tenant_blobs t WHERE t.digest = b.digest) AS refs
        FROM blobs b""")
    assert all(count == refs for _, count, refs in bad), bad
    orphans = sql(pg_backend, "SELECT digest FROM object_versions WHERE digest IS NOT NULL "
                  "AND digest NOT IN (SELECT digest FROM blobs) UNION SELECT digest FROM "
                  "tenant_blobs WHERE digest NOT IN (SELECT digest FROM blobs)")
    assert orphans == []
    usage = sql(pg_backend, """
        SELECT t.name, t.used_bytes,
               coalesce((SELECT sum(o.size) FROM object_versions o JOIN buckets k
                         ON k.id = o.bucket_id WHERE k.tenant_id = t.id), 0)
             + coalesce((SELECT sum(b.size) FROM tenant_blobs b WHERE b.tenant_id = t.id), 0)
        FROM tenants t""")
    assert all(used == rows for _, used, rows in usage), usage


def test_ref_unref_race_keeps_refcounts_exact(writers, pg_backend) -> None:
    """Two nodes put, replace and delete objects and blobs of two tenants sharing three
    digests. Every write names a fresh location (like S3): a location is zeroed at most once,
    and only once no row references it; refcounts always equal the referencing rows."""
    one, two = writers
    one.apply(m.SetTenantQuota("a", None))
    digests = [D1, D2, D3]

    def node(writer: pg.PostgresWriter, tenant: str, seed: int) -> tuple[set, list]:
        rng = random.Random(seed)
        created: set[str] = set()
        zeroed: list[str] = []
        for step in range(120):
            location = f"{tenant}-{step}-{uuid.uuid4().hex}"
            digest = rng.choice(digests)
            choice = rng.random()
            if choice < 0.45:
                msg: Any = put(tenant, rng.choice(["u", "v"]), b"k%d" % rng.randrange(4),
                               digest, 5, location=location)
            elif choice < 0.7:
                msg = m.DeleteObject(tenant, rng.choice(["u", "v"]), b"k%d" % rng.randrange(4),
                                     None, 3.0)
            elif choice < 0.85:
                upload = uuid.uuid4().hex
                writer.apply(m.StartUpload(tenant, upload, 5, {}, 1.0, 1e12))
                msg = m.CompleteUpload(tenant, upload, digest, 5, 2.0, location)
            else:
                msg = m.DeleteBlob(tenant, digest)
            result = attempt(writer, msg)
            if isinstance(result, NotFoundError):
                continue
            assert isinstance(result, m.WriteResult), result
            value = result.value
            info = value[0] if isinstance(value, tuple) and value and \
                isinstance(value[0], q.BlobInfo) else value
            if getattr(info, "location", "") == location:
                created.add(location)
            zeroed.extend(result.zeroed)
        return created, zeroed

    (created_a, zeroed_a), (created_b, zeroed_b) = together(
        lambda: node(one, "a", 1), lambda: node(two, "b", 2))
    created, zeroed = created_a | created_b, zeroed_a + zeroed_b
    live = {r[0] for r in sql(pg_backend, "SELECT location FROM blobs")}
    assert len(zeroed) == len(set(zeroed)), "a location was zeroed twice"
    assert set(zeroed).isdisjoint(live), "a zeroed location is still referenced"
    assert created == set(zeroed) | live
    _check_refcounts(pg_backend)


def _hold(pg_backend: pg.PostgresBackend, *statements: str) -> psycopg.Connection:
    """A connection with an open transaction that ran ``statements`` (holding their locks)."""
    raw = pg_backend.connect()
    raw.execute("BEGIN")
    for statement in statements:
        raw.execute(statement)
    return raw


def test_unref_waits_for_a_concurrent_unref(writers, pg_backend) -> None:
    """Node B removes its reference to a digest held twice (not committed yet) while node A
    removes the other: A must see B's count, remove the row and report the location zeroed
    (a statement reading its own snapshot would decrement 1 -> 0 instead)."""
    one, _ = writers
    one.apply(put("a", "u", b"k", D1, 5, location="loc-1"))
    one.apply(put("b", "u", b"k", D1, 5, location="loc-2"))
    assert sql(pg_backend, "SELECT refcount, location FROM blobs") == [(2, "loc-1")]
    other = _hold(
        pg_backend,
        "DELETE FROM object_versions WHERE bucket_id = (SELECT k.id FROM buckets k JOIN tenants t"
        " ON t.id = k.tenant_id WHERE t.name = 'b' AND k.name = 'u')",
        f"UPDATE blobs SET refcount = refcount - 1 WHERE digest = '{D1}'",
        "UPDATE tenants SET used_bytes = used_bytes - 5 WHERE name = 'b'",
    )
    thread, out = start_thread(lambda: one.apply(m.DeleteObject("a", "u", b"k", None, 3.0)))
    wait_for_lock_wait(pg_backend)
    other.execute("COMMIT")
    other.close()
    thread.join(30)
    assert out[0].zeroed == ("loc-1",)
    assert sql(pg_backend, "SELECT count(*) FROM blobs") == [(0,)]
    _check_refcounts(pg_backend)


def test_ref_after_a_concurrent_last_unref_makes_a_new_row(writers, pg_backend) -> None:
    """Node B drops the last reference (not committed yet) while node A puts the same
    content: A waits, then finds no row and records its own bytes' location."""
    one, _ = writers
    one.apply(put("b", "u", b"k", D1, 5, location="old-loc"))
    other = _hold(
        pg_backend,
        "DELETE FROM object_versions",
        f"DELETE FROM blobs WHERE digest = '{D1}'",
        "UPDATE tenants SET used_bytes = 0 WHERE name = 'b'",
    )
    thread, out = start_thread(lambda: one.apply(put("a", "u", b"k", D1, 5, location="new-loc")))
    wait_for_lock_wait(pg_backend)
    other.execute("COMMIT")
    other.close()
    thread.join(30)
    assert out[0].value.location == "new-loc"
    assert sql(pg_backend, "SELECT refcount, location FROM blobs") == [(1, "new-loc")]
    _check_refcounts(pg_backend)


def test_expiry_spares_an_upload_touched_meanwhile(writers, pg_backend) -> None:
    """Node B pushes an upload's expiry out while node A expires uploads: the upload stays,
    and A does not report it."""
    one, two = writers
    one.apply(m.StartUpload("a", "u1", 5, {}, 1.0, 50.0))
    one.apply(m.StartUpload("a", "u2", 5, {}, 1.0, 50.0))
    other = _hold(pg_backend, "UPDATE uploads SET expires_at = 1000 WHERE upload_id = 'u1'")
    thread, out = start_thread(lambda: two.apply(m.ExpireUploads(60.0)))
    wait_for_lock_wait(pg_backend)
    other.execute("COMMIT")
    other.close()
    thread.join(30)
    assert out[0].value == ("u2",)
    assert pg_backend.run_read(q.read_upload_ids) == {"u1"}


def test_completing_an_upload_being_expired_fails(writers, pg_backend) -> None:
    """Node A completes an upload that node B's expiry is deleting: A waits and finds it gone."""
    one, _ = writers
    one.apply(m.StartUpload("a", "u1", 5, {}, 1.0, 50.0))
    other = _hold(pg_backend, "DELETE FROM uploads WHERE upload_id = 'u1'")
    thread, out = start_thread(lambda: attempt(one, m.CompleteUpload("a", "u1", D1, 5, 2.0)))
    wait_for_lock_wait(pg_backend)
    other.execute("COMMIT")
    other.close()
    thread.join(30)
    assert isinstance(out[0], NotFoundError)
    assert sql(pg_backend, "SELECT count(*) FROM tenant_blobs") == [(0,)]


def test_writer_reads_on_its_own_connection(writers) -> None:
    """``read`` and ``location_referenced`` (the admin tool's and the metadata actor's reads)
    run in a read-only snapshot on the writer's connection."""
    one, _ = writers
    one.apply(put("a", "v", b"k", D1, 5, location="loc-1"))
    assert one.location_referenced("loc-1") and not one.location_referenced("loc-2")
    assert one.read(q.read_tenant, "a").used_bytes == 5
    with pytest.raises(NotFoundError):
        one.read(q.read_tenant, "nobody")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        one.read(lambda conn: conn.execute("DELETE FROM tenants"))
    assert one.apply(put("a", "v", b"j", D1, 5)).value.location == "loc-1"
    assert one.transactions == 3  # the fixture's batch and two puts; reads are not counted


def test_lock_timeout_is_unavailable_and_the_writer_goes_on(pg_url: str) -> None:
    b = pg.PostgresBackend(pg_url, lock_timeout=0.3)
    b.prepare()
    writer = pg.PostgresWriter(b)
    writer.apply(m.CreateTenant("a", None, 1.0))
    other = _hold(b, "SELECT * FROM tenants WHERE name = 'a' FOR UPDATE")
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="busy"):
        writer.apply(m.CreateBucket("a", "x", False, 1.0))
    assert time.monotonic() - started < 5
    other.execute("ROLLBACK")
    other.close()
    assert writer.apply(m.CreateBucket("a", "x", False, 1.0)).value.name == "x"
    writer.close()


# ------------------------------------------------------------------------- server restarts


def test_writer_survives_a_server_restart(postgres_server, pg_backend) -> None:
    """A restart while idle is invisible (the dead connection is replaced before anything was
    sent); a write in flight when the server dies, and writes while it is down, answer
    StorageUnavailableError; once it is back the same writer goes on."""
    writer = pg_backend.open_writer()
    writer.apply(m.CreateTenant("a", None, 1.0))
    try:
        postgres_server.restart()
        assert writer.apply(m.CreateBucket("a", "one", False, 1.0)).value.name == "one"
        postgres_server.restart()
        assert not writer.location_referenced("nowhere")

        other = _hold(pg_backend, "SELECT * FROM tenants WHERE name = 'a' FOR UPDATE")
        thread, out = start_thread(lambda: attempt(writer, m.CreateBucket("a", "two", False, 1.0)))
        wait_for_lock_wait(pg_backend)
        postgres_server.kill()
        thread.join(30)
        other.close()
        assert isinstance(out[0], StorageUnavailableError)
        assert isinstance(out[0].__cause__, psycopg.Error)
        with pytest.raises(StorageUnavailableError, match="unreachable"):
            writer.apply(m.CreateBucket("a", "two", False, 1.0))
        results = writer.apply_many([m.CreateBucket("a", "two", False, 1.0),
                                     m.CreateBucket("a", "three", False, 1.0)])
        assert all(isinstance(r, StorageUnavailableError) for r in results)
        with pytest.raises(StorageUnavailableError):
            q.read_refcount(writer.conn, D1)
    finally:
        postgres_server.start()
    assert writer.apply(m.CreateBucket("a", "two", False, 1.0)).value.name == "two"
    assert q.read_refcount(writer.conn, D1) == 0
    assert [b.name for b in pg_backend.run_read(q.read_buckets, "a")] == ["one", "two"]
    writer.close()


async def test_reader_survives_a_server_restart(postgres_server, pg_backend) -> None:
    writer = pg_backend.open_writer()
    writer.apply(m.CreateTenant("a", None, 1.0))
    reader = pg_backend.open_reader(max_connections=2)
    try:
        assert (await reader.run(q.read_tenant, "a")).name == "a"
        await reader.ping()
        postgres_server.restart()  # from the main thread: the server dies with the tests
        assert (await reader.run(q.read_tenant, "a")).name == "a"
        postgres_server.kill()
        try:
            with pytest.raises(StorageUnavailableError, match="unreachable"):
                await reader.run(q.read_tenant, "a")
            with pytest.raises(StorageUnavailableError):
                await reader.ping()
        finally:
            postgres_server.start()
        assert (await reader.run(q.read_tenant, "a")).name == "a"
        await reader.ping()
    finally:
        reader.close()
        writer.close()


async def test_reads_are_snapshots_and_read_only(writers, pg_backend) -> None:
    """Each run is one REPEATABLE READ snapshot: a commit made while it runs is not seen;
    writes are refused; a StorageError from the function keeps the connection."""
    one, _ = writers
    reader = pg_backend.open_reader(max_connections=1)

    def twice(conn: pg.PgConnection) -> tuple[int | None, int | None]:
        first = q.read_tenant(conn, "b").quota_bytes
        one.apply(m.SetTenantQuota("b", 7))
        return first, q.read_tenant(conn, "b").quota_bytes

    try:
        assert await reader.run(twice) == (None, None)
        assert (await reader.run(q.read_tenant, "b")).quota_bytes == 7
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await reader.run(lambda conn: conn.execute("DELETE FROM tenants"))
        with pytest.raises(NotFoundError):
            await reader.run(q.read_tenant, "nobody")
        kept = reader._idle[0]
        assert (await reader.run(q.read_tenant, "b")).name == "b"
        assert reader._idle == [kept]
    finally:
        reader.close()
    with pytest.raises(StorageUnavailableError):
        await reader.run(q.read_tenant, "b")


async def test_reader_runs_at_most_max_connections_at_once(writers, pg_backend) -> None:
    reader = pg_backend.open_reader(max_connections=2)
    running, peak = [0], [0]
    lock = threading.Lock()

    def slow(conn: pg.PgConnection) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        conn.execute("SELECT pg_sleep(0.05)").fetchone()
        with lock:
            running[0] -= 1
        return 1

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(reader.run, slow)
        assert peak[0] == 2 and len(reader._idle) == 2
    finally:
        reader.close()


# ------------------------------------------------------------------ reaper lease, settings


def test_reaper_lease_is_held_by_one_node(postgres_server, pg_backend) -> None:
    first, second = pg_backend.reaper_lease(), pg_backend.reaper_lease()
    try:
        assert first.acquire() and first.held
        assert not second.acquire() and not second.held
        assert first.acquire()  # still ours
        first.release()
        assert not first.held
        assert second.acquire()
        assert not first.acquire()
        # The session holding it dies: the lock goes with it, and whoever asks next gets it.
        (pid,) = second._raw.execute("SELECT pg_backend_pid()").fetchone()
        sql(pg_backend, "SELECT pg_terminate_backend(?, 5000)", (pid,))
        assert first.acquire()
        assert not second.acquire()
    finally:
        first.release()
        second.release()


def test_shared_settings_created_once_and_updated_in_turn(pg_backend, pg_url) -> None:
    """Nodes starting at once share one key ring; concurrent rotations are applied one after
    another (the ring grows by exactly the number of rotations)."""
    from anvil_trio.auth._keys import KeyRing

    def create() -> bytes:
        return pg.load_or_create_setting(
            pg_url, pg.KEYRING_SETTING, lambda: KeyRing.generate().to_json().encode())

    values = together(*[create for _ in range(6)])
    assert len(set(values)) == 1
    ring = KeyRing.from_json(values[0])
    assert len(ring.keys) == 1

    def rotate_three() -> None:
        for _ in range(3):
            pg_backend.update_setting(
                pg.KEYRING_SETTING,
                lambda old: KeyRing.from_json(old).rotated(retire_after=1e9).to_json().encode())

    together(rotate_three, rotate_three)
    rotated = KeyRing.from_json(pg_backend.load_setting(pg.KEYRING_SETTING))
    assert len(rotated.keys) == 7 and len({k.kid for k in rotated.keys}) == 7
    assert rotated.keys[0] == ring.keys[0]
    with pytest.raises(NotFoundError):
        pg.load_setting(pg_backend, "nothing")
    with pytest.raises(NotFoundError):
        pg.update_setting(pg_backend, "nothing", lambda old: old)
    def broken(old: bytes) -> bytes:
        raise ValueError("no")

    with pytest.raises(ValueError):
        pg_backend.update_setting(pg.KEYRING_SETTING, broken)
    assert pg_backend.load_setting(pg.KEYRING_SETTING) == rotated.to_json().encode()
