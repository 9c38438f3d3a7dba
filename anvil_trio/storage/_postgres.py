"""Metadata in PostgreSQL, shared by several server nodes: the schema, the writer, the readers,
the reaper's lease and the settings every node shares.

The same handler code (``_metadata``) and read functions (``_queries``) run unchanged on a
:class:`PgConnection`, which rewrites their ``?`` placeholders to psycopg's ``%s``. psycopg 3 is
used synchronously, in worker threads (``trio.to_thread``), never through asyncio.

Invariants:

* Schema: :data:`PG_MIGRATIONS` gives the tables, columns, constraints and indexes of SQLite's
  migrations combined (``DOUBLE PRECISION`` for SQLite's ``REAL``, ``BIGINT`` identities for
  ``INTEGER PRIMARY KEY``, ``BYTEA`` for ``BLOB``, 0/1 ``INTEGER`` flags, text compared bytewise:
  ``COLLATE "C"``). The version is the one row of ``anvil_schema``; each migration runs in the
  transaction that bumps it, after ``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)``, so nodes
  starting at once migrate once. A schema newer than this code is refused.
* Writes: each ``apply`` is one READ COMMITTED transaction (``apply_many``: one for several, a
  savepoint each) that first locks the ``tenants`` row of every tenant it touches, in name
  order (``SELECT ... ORDER BY name FOR UPDATE``). So the writes of one tenant are serialized
  across nodes (quota, ``if_none_match``, one latest version, bucket-not-empty), and
  transactions taking several tenant locks take them in one global order. Rows shared across
  tenants are locked before they are read and changed: a ``blobs`` row before an unref (its
  ``refcount = 1`` test must see the latest count, not the statement's snapshot) and an
  ``uploads`` row before an upload is checked (the expiry may be deleting it).
* Retries: a serialization failure, a deadlock or a unique violation (another node committed
  the same name first; on retry the handler's own check raises AlreadyExistsError) rolls the
  whole transaction back and runs it again, a bounded number of times with short jittered
  sleeps. A connection found dead when a transaction begins (a server restart while the
  writer was idle) is replaced and the transaction run on the new one; nothing had been sent.
* Errors are :class:`StorageError`: a lost or refused connection, a statement or lock timeout
  is :class:`StorageUnavailableError` (the connection is dropped and a new one is made on the
  next call), a full disk on the server :class:`StorageFullError`. Anything else (a bug: a
  constraint or SQL error) propagates, as ``sqlite3`` errors do.
* Reads run in one ``REPEATABLE READ READ ONLY`` transaction each (a snapshot), on a small pool
  of connections; they never wait for writers.
* Nothing here logs or reprs a URL's password (:func:`redact_url`).
"""

from __future__ import annotations

import random
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.errors
import trio
from psycopg.pq import TransactionStatus

from ._errors import (
    AlreadyExistsError,
    NotFoundError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from ._metadata import CreateTenant, MetadataWriter, SetTenantQuota, WriteResult
from ._queries import read_location_referenced, read_setting

__all__ = [
    "KEYRING_SETTING",
    "MIGRATION_LOCK_KEY",
    "PG_MIGRATIONS",
    "REAPER_LOCK_KEY",
    "PgConnection",
    "PostgresBackend",
    "PostgresReader",
    "PostgresWriter",
    "ReaperLease",
    "load_or_create_setting",
    "load_setting",
    "pg_migrate",
    "redact_url",
    "tenant_of",
    "update_setting",
]

_T = TypeVar("_T")

#: ``pg_advisory_xact_lock`` key taken by every migration transaction ("anvil_mg").
MIGRATION_LOCK_KEY = 0x616E76696C5F6D67
#: ``pg_try_advisory_lock`` key of the reaper lease ("anvil_rp").
REAPER_LOCK_KEY = 0x616E76696C5F7270
#: The settings row holding the nodes' shared JWT key ring (``KeyRing.to_json()`` bytes).
KEYRING_SETTING = "jwt_keyring"

UNREACHABLE = "metadata store is unreachable; retry"
BUSY = "metadata is busy; retry"

_SCHEMES = ("postgresql://", "postgres://")
_SQL_CACHE: dict[str, str] = {}
_SQL_CACHE_LIMIT = 4096


# ---------------------------------------------------------------------------- connections


def pg_sql(sql: str) -> str:
    """``sql`` with psycopg placeholders: a literal ``%`` doubled, each ``?`` made ``%s``
    (the shared SQL never has a ``?`` inside a string literal). Cached."""
    rewritten = _SQL_CACHE.get(sql)
    if rewritten is None:
        rewritten = sql.replace("%", "%%").replace("?", "%s")
        if len(_SQL_CACHE) < _SQL_CACHE_LIMIT:
            _SQL_CACHE[sql] = rewritten
    return rewritten


class PgConnection:
    """A psycopg connection that runs the shared ``?``-placeholder SQL of ``_metadata`` and
    ``_queries``: ``execute`` returns the psycopg cursor (``fetchone``, ``fetchall``,
    iteration, ``rowcount``); ``bytes`` parameters are ``bytea`` and ``bytea`` comes back as
    ``bytes``.

    Args:
        raw: the psycopg connection.
        translate_errors: turn connection loss, timeouts and a full disk into StorageErrors
            (for statements run outside the writer's transactions, e.g. through
            :attr:`PostgresWriter.conn`). The writer and the readers classify errors themselves.
    """

    __slots__ = ("_translate", "raw")

    def __init__(self, raw: psycopg.Connection, *, translate_errors: bool = False) -> None:
        self.raw = raw
        self._translate = translate_errors

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        try:
            return self.raw.execute(pg_sql(sql), params)
        except psycopg.Error as exc:
            self._reraise(exc)
            raise

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor:
        cur = self.raw.cursor()
        try:
            cur.executemany(pg_sql(sql), list(seq))
        except psycopg.Error as exc:
            self._reraise(exc)
            raise
        return cur

    def _reraise(self, exc: psycopg.Error) -> None:
        if not self._translate:
            return
        error = _storage_error(exc, _classify(exc))
        if error is not None:
            raise error from exc


def redact_url(url: str) -> str:
    """``url`` with any password (in the authority or a ``password=`` parameter) as ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hosts}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{k}={'***' if k.lower() == 'password' else urllib.parse.quote(v)}" for k, v in pairs
        )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _password_of(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).password
    except ValueError:
        return None


def _conninfo(
    url: str, *, connect_timeout: float, application_name: str
) -> str:
    """Check ``url`` and build the libpq connection string we connect with.

    Raises:
        ValueError: not a ``postgresql://`` / ``postgres://`` URL, or malformed (the message
            never contains the password).
    """
    if not isinstance(url, str) or not url.startswith(_SCHEMES):
        raise ValueError("a PostgreSQL URL must start with postgresql:// or postgres://")
    if connect_timeout <= 0:
        raise ValueError("connect_timeout must be positive")
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        detail = str(exc).strip()
        password = _password_of(url)
        if password:
            detail = detail.replace(password, "***")
        raise ValueError(f"malformed PostgreSQL URL: {detail}") from None
    params["connect_timeout"] = str(max(1, round(connect_timeout)))
    params.setdefault("application_name", application_name)
    # A dead server host (no RST) is noticed within about a minute instead of never.
    params.setdefault("keepalives", "1")
    params.setdefault("keepalives_idle", "15")
    params.setdefault("keepalives_interval", "5")
    params.setdefault("keepalives_count", "3")
    return psycopg.conninfo.make_conninfo("", **params)


# ------------------------------------------------------------------------- error handling

_RETRY, _UNIQUE, _FULL, _BUSY, _LOST, _OTHER = range(6)


def _classify(exc: BaseException) -> int:
    """What a psycopg error means for the transaction that met it."""
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return _UNIQUE
    if isinstance(exc, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)):
        return _RETRY
    if isinstance(exc, psycopg.errors.DiskFull):
        return _FULL
    if isinstance(exc, (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)):
        return _BUSY  # statement_timeout or lock_timeout
    if isinstance(exc, (
        psycopg.OperationalError, psycopg.InterfaceError,
        psycopg.errors.IdleInTransactionSessionTimeout, psycopg.errors.TransactionTimeout,
    )):
        return _LOST
    return _OTHER


def _storage_error(exc: BaseException, kind: int) -> StorageError | None:
    """The StorageError a psycopg error of ``kind`` becomes (None: it stays what it is)."""
    if kind == _UNIQUE:
        return AlreadyExistsError("a record of that name already exists")
    if kind in (_RETRY, _BUSY):
        return StorageUnavailableError(BUSY)
    if kind == _FULL:
        return StorageFullError("metadata disk is full")
    if kind == _LOST:
        return StorageUnavailableError(UNREACHABLE)
    return None


@contextmanager
def _translated() -> Iterator[None]:
    """Turn psycopg errors that have a StorageError meaning into it (cause kept)."""
    try:
        yield
    except psycopg.Error as exc:
        error = _storage_error(exc, _classify(exc))
        if error is None:
            raise
        raise error from exc


def _usable(raw: psycopg.Connection | None) -> bool:
    return raw is not None and not raw.closed and not raw.broken


def _rollback(raw: psycopg.Connection) -> bool:
    """End any transaction on ``raw``; returns whether the connection is still usable (if not,
    it is closed)."""
    if not _usable(raw):
        raw.close()
        return False
    try:
        if raw.info.transaction_status != TransactionStatus.IDLE:
            raw.execute("ROLLBACK")
    except psycopg.Error:
        raw.close()
        return False
    return True


@contextmanager
def _pg_transaction(raw: psycopg.Connection, begin: str) -> Iterator[PgConnection]:
    """One transaction on an autocommit connection; rolled back on any exception."""
    raw.execute(begin)
    try:
        yield PgConnection(raw)
    except BaseException:
        _rollback(raw)
        raise
    raw.execute("COMMIT")


# ------------------------------------------------------------------------------ migrations


def _pg_migration_1(conn: PgConnection) -> None:
    """Everything SQLite's migrations 1 and 2 make, in PostgreSQL's types."""
    statements = [
        'CREATE TABLE settings (name TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL)',
        """CREATE TABLE tenants (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            name TEXT COLLATE "C" NOT NULL UNIQUE, quota_bytes BIGINT,
            used_bytes BIGINT NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
            created DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE apps (
            client_id TEXT COLLATE "C" PRIMARY KEY,
            tenant_id BIGINT NOT NULL REFERENCES tenants(id),
            name TEXT COLLATE "C" NOT NULL, secret_hash TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            UNIQUE (tenant_id, name))""",
        """CREATE TABLE grants (
            client_id TEXT COLLATE "C" NOT NULL REFERENCES apps(client_id) ON DELETE CASCADE,
            scope TEXT COLLATE "C" NOT NULL, PRIMARY KEY (client_id, scope))""",
        """CREATE TABLE buckets (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            tenant_id BIGINT NOT NULL REFERENCES tenants(id),
            name TEXT COLLATE "C" NOT NULL, versioning INTEGER NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            UNIQUE (tenant_id, name))""",
        """CREATE TABLE blobs (
            digest TEXT COLLATE "C" PRIMARY KEY, size BIGINT NOT NULL,
            refcount BIGINT NOT NULL CHECK (refcount > 0), created DOUBLE PRECISION NOT NULL,
            location TEXT COLLATE "C" NOT NULL)""",
        "CREATE INDEX blobs_by_location ON blobs (location)",
        """CREATE TABLE object_versions (
            seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            bucket_id BIGINT NOT NULL REFERENCES buckets(id),
            key BYTEA NOT NULL, version_id TEXT COLLATE "C" NOT NULL UNIQUE,
            latest INTEGER NOT NULL, delete_marker INTEGER NOT NULL,
            digest TEXT COLLATE "C" REFERENCES blobs(digest), size BIGINT NOT NULL,
            content_type TEXT NOT NULL, user_metadata TEXT NOT NULL,
            last_modified DOUBLE PRECISION NOT NULL,
            CHECK ((delete_marker = 1) = (digest IS NULL)))""",
        "CREATE INDEX object_versions_by_key ON object_versions (bucket_id, key, seq)",
        """CREATE UNIQUE INDEX object_versions_latest ON object_versions (bucket_id, key)
            WHERE latest = 1""",
        "CREATE INDEX object_versions_by_digest ON object_versions (digest)",
        """CREATE TABLE tenant_blobs (
            tenant_id BIGINT NOT NULL REFERENCES tenants(id),
            digest TEXT COLLATE "C" NOT NULL REFERENCES blobs(digest), size BIGINT NOT NULL,
            attributes TEXT NOT NULL, content_type TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant_id, digest))""",
        """CREATE TABLE uploads (
            upload_id TEXT COLLATE "C" PRIMARY KEY,
            tenant_id BIGINT NOT NULL REFERENCES tenants(id),
            total_size BIGINT NOT NULL, received BIGINT NOT NULL DEFAULT 0,
            attributes TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX uploads_by_expiry ON uploads (expires_at)",
    ]
    for statement in statements:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO settings (name, value) VALUES ('page_token_secret', ?)",
        (secrets.token_bytes(32),),
    )


#: Ordered migrations; migration ``i`` (0-based) brings ``anvil_schema.version`` from ``i``
#: to ``i + 1``.
PG_MIGRATIONS: tuple[Callable[[PgConnection], None], ...] = (_pg_migration_1,)


def _schema_version(conn: PgConnection) -> int | None:
    """The schema version, or None when there is no ``anvil_schema`` table (yet)."""
    (table,) = conn.execute("SELECT to_regclass('anvil_schema') IS NOT NULL").fetchone()
    if not table:
        return None
    row = conn.execute("SELECT version FROM anvil_schema").fetchone()
    return 0 if row is None else row[0]


def _newer_error(version: int, known: int) -> StorageError:
    return StorageError(f"metadata schema version {version} is newer than this code ({known})")


def pg_migrate(
    raw: psycopg.Connection,
    migrations: Sequence[Callable[[PgConnection], None]] = PG_MIGRATIONS,
) -> int:
    """Bring the schema up to date, one transaction per migration, each under the migration
    advisory lock (another node migrating at the same time waits, then finds it done).

    Args:
        raw: an autocommit psycopg connection outside any transaction.

    Returns:
        The schema version after migrating.

    Raises:
        StorageError: the database was written by a newer version of this code. psycopg
            errors propagate (callers translate them).
    """
    while True:
        with _pg_transaction(raw, "BEGIN ISOLATION LEVEL READ COMMITTED") as conn:
            # A migration may run long (no statement timeout), and another node's may hold
            # the migration lock a while; its DDL waits for table locks no longer than usual.
            (lock_timeout,) = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
            conn.execute("SELECT set_config('statement_timeout', '0', true), "
                         "set_config('lock_timeout', '300s', true)")
            conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))
            conn.execute("SELECT set_config('lock_timeout', ?, true)", (lock_timeout,))
            version = _schema_version(conn)
            if version is None:
                conn.execute("CREATE TABLE anvil_schema (version INTEGER NOT NULL)")
                version = 0
            if conn.execute("SELECT 1 FROM anvil_schema").fetchone() is None:
                conn.execute("INSERT INTO anvil_schema (version) VALUES (0)")
            if version > len(migrations):
                raise _newer_error(version, len(migrations))
            if version == len(migrations):
                return version
            migrations[version](conn)
            conn.execute("UPDATE anvil_schema SET version = ?", (version + 1,))


def _check_schema(raw: psycopg.Connection) -> None:
    """Refuse a database whose schema is not this code's (on every new writer connection)."""
    version = _schema_version(PgConnection(raw))
    if version is not None and version > len(PG_MIGRATIONS):
        raise _newer_error(version, len(PG_MIGRATIONS))
    if version != len(PG_MIGRATIONS):
        raise StorageError(
            f"metadata schema version {version or 0} is older than this code "
            f"({len(PG_MIGRATIONS)}); it has not been migrated"
        )


# --------------------------------------------------------------------------------- backend


class PostgresBackend:
    """The metadata store in one PostgreSQL database, shared by every node.

    Args:
        url: ``postgresql://user[:password]@host[:port]/db[?params]`` (or ``postgres://``).
        connect_timeout: seconds to wait for a connection (libpq counts whole seconds).
        lock_timeout, statement_timeout: seconds a statement may wait for a lock / run; past
            that it fails with StorageUnavailableError instead of hanging.
        idle_in_transaction_timeout: seconds the server lets a transaction sit idle (a stuck
            client) before it ends the session and frees its locks.

    Raises:
        ValueError: the URL is not a PostgreSQL URL or is malformed (the message names the
            problem, never the password).
    """

    shared = True

    def __init__(
        self, url: str, *, connect_timeout: float = 5.0, lock_timeout: float = 10.0,
        statement_timeout: float = 30.0, idle_in_transaction_timeout: float = 60.0,
        application_name: str = "anvil_trio",
    ) -> None:
        self._conninfo = _conninfo(
            url, connect_timeout=connect_timeout, application_name=application_name
        )
        self.display_url = redact_url(url)
        self.connect_timeout = connect_timeout
        self._session = (
            str(int(lock_timeout * 1000)),
            str(int(statement_timeout * 1000)),
            str(int(idle_in_transaction_timeout * 1000)),
        )

    def __repr__(self) -> str:
        return f"PostgresBackend({self.display_url!r})"

    def connect(self) -> psycopg.Connection:
        """A new autocommit connection with the session timeouts set (blocking).

        Raises:
            StorageUnavailableError: the server cannot be reached (the cause says why).
        """
        try:
            raw = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StorageUnavailableError(UNREACHABLE) from exc
        try:
            raw.execute(
                "SELECT set_config('lock_timeout', %s, false), "
                "set_config('statement_timeout', %s, false), "
                "set_config('idle_in_transaction_session_timeout', %s, false)",
                self._session,
            )
        except psycopg.Error as exc:
            raw.close()
            raise StorageUnavailableError(UNREACHABLE) from exc
        return raw

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A short-lived connection, closed afterwards; psycopg errors translated."""
        raw = self.connect()
        try:
            with _translated():
                yield raw
        finally:
            raw.close()

    def prepare(self) -> bytes:
        """Create or migrate the schema (blocking); returns the page-token secret.

        Raises:
            StorageError: the schema is newer than this code; StorageUnavailableError when
                the server cannot be reached.
        """
        with self._connection() as raw:
            pg_migrate(raw)
            return read_setting(PgConnection(raw), "page_token_secret")

    def open_writer(self) -> PostgresWriter:
        """A writer that connects on first use (so a server that is down does not fail the
        metadata actor's start; its writes answer StorageUnavailableError until it is back)."""
        return PostgresWriter(self, migrate=False)

    def open_reader(self, *, max_connections: int) -> PostgresReader:
        return PostgresReader(self, max_connections=max_connections)

    def reaper_lease(self) -> ReaperLease:
        """The lease that lets one node's reaper at a time run."""
        return ReaperLease(self)

    def run_read(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(conn, *args, **kwargs)`` in one read-only snapshot on a fresh connection
        (blocking; for the admin tools and tests)."""
        with self._connection() as raw, _pg_transaction(raw, _READ_BEGIN) as conn:
            return fn(conn, *args, **kwargs)

    # shared settings (see the module functions)
    def load_setting(self, name: str) -> bytes:
        return load_setting(self, name)

    def load_or_create_setting(self, name: str, make_value: Callable[[], bytes]) -> bytes:
        return load_or_create_setting(self, name, make_value)

    def update_setting(self, name: str, fn: Callable[[bytes], bytes]) -> bytes:
        return update_setting(self, name, fn)


def _backend(target: PostgresBackend | str) -> PostgresBackend:
    return target if isinstance(target, PostgresBackend) else PostgresBackend(target)


# ---------------------------------------------------------------------------------- writer


def tenant_of(message: Any) -> str | None:
    """The tenant whose row a write message's transaction locks: ``name`` for CreateTenant
    (not created yet: nothing to lock, the unique name decides) and SetTenantQuota,
    ``tenant`` for the others, None for writes of no tenant (app secrets and grants, upload
    expiry)."""
    if isinstance(message, (CreateTenant, SetTenantQuota)):
        return message.name
    return getattr(message, "tenant", None)


_LOCK_TENANTS = "SELECT id FROM tenants WHERE name = ANY(%s) ORDER BY name FOR UPDATE"
_WRITE_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
_READ_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


class PostgresWriter(MetadataWriter):
    """The metadata writer of one node on PostgreSQL: :class:`~._metadata.MetadataWriter`'s
    API and handlers, run on a :class:`PgConnection` under tenant row locks (module docstring).

    Args:
        target: the backend, or its URL.
        migrate: connect and migrate now (raising StorageError, e.g. for a newer schema);
            otherwise connect on the first call and only check the schema version.
        attempts: how many times a transaction runs before a serialization failure, deadlock
            or unique violation is given up (StorageUnavailableError / AlreadyExistsError).

    Every ``apply`` commits fully or raises with nothing changed (but a connection lost during
    COMMIT leaves the outcome unknown, as with any database client). Domain errors are
    :class:`StorageError`; so are a lost connection, timeouts and a full disk, after which the
    next call reconnects.
    """

    def __init__(
        self, target: PostgresBackend | str, *, migrate: bool = True, attempts: int = 8
    ) -> None:
        # MetadataWriter.__init__ opens SQLite: not called.
        self.backend = _backend(target)
        self._raw: psycopg.Connection | None = None
        self._needs_migrate = migrate
        self._attempts = max(1, attempts)
        #: Transactions committed (or attempted) by apply and apply_many (retries not counted).
        self.transactions = 0
        #: Transaction attempts run again after a conflict (for tests and metrics).
        self.retries = 0
        if migrate:
            self._connection()

    # -- the connection

    def _connection(self) -> tuple[psycopg.Connection, bool]:
        """The live connection and whether it was just made (connecting, migrating or checking
        the schema on a new one). Raises StorageError."""
        if _usable(self._raw):
            return self._raw, False  # type: ignore[return-value]
        self._drop()
        raw = self.backend.connect()
        try:
            with _translated():
                if self._needs_migrate:
                    pg_migrate(raw)
                    self._needs_migrate = False
                else:
                    _check_schema(raw)
        except BaseException:
            raw.close()
            raise
        self._raw = raw
        return raw, True

    def _drop(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()

    @property
    def conn(self) -> PgConnection:
        """The writer's connection (reconnecting if needed) for statements outside its
        transactions, each in its own autocommit transaction; errors become StorageErrors."""
        raw, _ = self._connection()
        return PgConnection(raw, translate_errors=True)

    def close(self) -> None:
        """Close the connection."""
        self._drop()

    # -- transactions

    def _transact(
        self, tenants: Iterable[str | None], body: Callable[[PgConnection], _T], *,
        begin: str = _WRITE_BEGIN,
    ) -> _T:
        """Run ``body`` in one transaction (READ COMMITTED unless ``begin`` says otherwise)
        after locking ``tenants``' rows in name order; retried on conflicts; errors
        translated (class docstring)."""
        names = sorted({t for t in tenants if t is not None})
        attempt = 0
        while True:
            attempt += 1
            raw, fresh = self._connection()
            stage = "begin"
            try:
                raw.execute(begin)
                stage = "body"
                if names:
                    raw.execute(_LOCK_TENANTS, (names,))
                result = body(PgConnection(raw))
                stage = "commit"
                raw.execute("COMMIT")
                return result
            except StorageError:
                if not _rollback(raw):
                    self._drop()
                raise
            except psycopg.Error as exc:
                kind = _classify(exc)
                if not _rollback(raw) or kind == _LOST:
                    self._drop()
                if attempt < self._attempts:
                    if kind == _RETRY or (kind == _UNIQUE and attempt < 3):
                        self.retries += 1
                        time.sleep(random.uniform(0.001, min(0.1, 0.004 * 2**attempt)))
                        continue
                    if kind == _LOST and stage == "begin" and not fresh:
                        # A connection that died while idle: nothing was sent; use a new one.
                        continue
                error = _storage_error(exc, kind)
                if error is None:
                    raise
                raise error from exc
            except BaseException:
                if not _rollback(raw):
                    self._drop()
                raise

    def read(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(conn, *args)`` (a read function of ``_queries``) in one read-only snapshot
        on the writer's own connection (the admin tool's reads)."""
        return self._transact((), lambda conn: fn(conn, *args), begin=_READ_BEGIN)

    def location_referenced(self, location: str) -> bool:
        """Whether any ``blobs`` row names ``location`` (a read of the committed state)."""
        return self.read(read_location_referenced, location)

    def apply(self, message: Any) -> WriteResult:
        """Apply one write message in one transaction and return its :class:`WriteResult`."""
        handler = getattr(self, "_" + message.op)
        self.transactions += 1
        return self._transact((tenant_of(message),), lambda conn: handler(conn, message))

    def apply_many(self, messages: Sequence[Any]) -> list[WriteResult | StorageError]:
        """Apply write messages in order in one transaction, a savepoint each, exactly like
        :meth:`MetadataWriter.apply_many`; the tenants of all of them are locked first. If the
        transaction fails as a whole (lost connection, conflicts past the retries), every
        message gets that error.

        Raises:
            Anything but a :class:`StorageError` (nothing is kept).
        """
        if len(messages) == 1:
            try:
                return [self.apply(messages[0])]
            except StorageError as exc:
                return [exc]
        self.transactions += 1

        def body(conn: PgConnection) -> list[WriteResult | StorageError]:
            results: list[WriteResult | StorageError] = []
            for message in messages:
                handler = getattr(self, "_" + message.op)
                conn.execute("SAVEPOINT message")
                try:
                    results.append(handler(conn, message))
                except StorageError as exc:
                    conn.execute("ROLLBACK TO SAVEPOINT message")
                    results.append(exc)
                conn.execute("RELEASE SAVEPOINT message")
            return results

        try:
            return self._transact([tenant_of(m) for m in messages], body)
        except StorageError as exc:
            return [exc] * len(messages)

    # -- rows shared across tenants: lock before read-modify-write

    def _unref(self, conn: Any, digest: str, zeroed: list[str]) -> None:
        # Under READ COMMITTED a statement's WHERE sees its snapshot: two unrefs of a count of
        # 2 would both miss "refcount = 1" and both decrement (to 0, a CHECK violation). With
        # the row locked first, the shared statements see the latest committed count.
        conn.execute("SELECT 1 FROM blobs WHERE digest = ? FOR UPDATE", (digest,))
        super()._unref(conn, digest, zeroed)

    def _upload_tenant_check(self, conn: Any, tenant: str, upload_id: str) -> int:
        # The expiry (no tenant lock) may be deleting the session: wait for it, then look.
        conn.execute("SELECT 1 FROM uploads WHERE upload_id = ? FOR UPDATE", (upload_id,))
        return super()._upload_tenant_check(conn, tenant, upload_id)

    def _expire_uploads(self, conn: Any, m: Any) -> WriteResult:
        """Returns the ids of the sessions removed: one statement, so a session another node
        touched (its expiry pushed out) or completed meanwhile is neither removed nor
        reported."""
        rows = conn.execute(
            "DELETE FROM uploads WHERE expires_at <= ? RETURNING upload_id", (m.now,)
        ).fetchall()
        return WriteResult(tuple(sorted(r[0] for r in rows)))


# ---------------------------------------------------------------------------------- reader


class PostgresReader:
    """Read transactions on a small pool of connections: each :meth:`run` is one
    ``REPEATABLE READ READ ONLY`` transaction (a snapshot) in a worker thread.

    Args:
        target: the backend, or its URL.
        max_connections: at most this many reads run at once (and as many connections are
            kept); more wait their turn.
    """

    def __init__(self, target: PostgresBackend | str, *, max_connections: int = 4) -> None:
        self.backend = _backend(target)
        self._limiter = trio.CapacityLimiter(max(1, max_connections))
        self._idle: list[psycopg.Connection] = []
        self._closed = False
        self.reads = 0

    def _call(
        self, raw: psycopg.Connection | None, fn: Callable[..., _T], args: Sequence[Any]
    ) -> tuple[psycopg.Connection | None, _T | None, BaseException | None, bool]:
        """``(connection to keep, result, error, lost)`` of one read (in a worker thread)."""
        for _ in range(2):
            fresh = raw is None
            if raw is None:
                try:
                    raw = self.backend.connect()
                except StorageError as exc:
                    return None, None, exc, True
            stage = "begin"
            try:
                raw.execute(_READ_BEGIN)
                stage = "body"
                result = fn(PgConnection(raw), *args)
                stage = "end"
                raw.execute("COMMIT")
                return raw, result, None, False
            except StorageError as exc:
                return (raw if _rollback(raw) else None), None, exc, False
            except psycopg.Error as exc:
                kind = _classify(exc)
                kept = _rollback(raw) and kind != _LOST
                if not kept:
                    raw.close()
                    if kind == _LOST and stage == "begin" and not fresh:
                        raw = None  # died while idle: a read is safe to run again
                        continue
                error = _storage_error(exc, kind)
                if error is None:
                    return (raw if kept else None), None, exc, False
                error.__cause__ = exc
                return (raw if kept else None), None, error, kind == _LOST
            except BaseException:
                raw.close()
                raise
        raise AssertionError("unreachable")

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(conn, *args)`` in one read-only snapshot, in a worker thread.

        Raises:
            StorageError: whatever ``fn`` raises; StorageUnavailableError when the server
                cannot be reached (the broken connection is dropped, and with it the idle
                ones, which are likely broken too). Other errors (SQL bugs) propagate.
        """
        if self._closed:
            raise StorageUnavailableError("metadata reads are closed")
        async with self._limiter:
            raw = self._idle.pop() if self._idle else None
            raw, result, error, lost = await trio.to_thread.run_sync(self._call, raw, fn, args)
            self.reads += 1
            if lost:
                stale, self._idle = self._idle, []
                for conn in stale:
                    conn.close()
            if raw is not None:
                if self._closed:
                    raw.close()
                else:
                    self._idle.append(raw)
            if error is not None:
                raise error
            return result  # type: ignore[return-value]

    async def ping(self, timeout: float = 2.0) -> None:
        """Check that the database answers (``SELECT 1``, at most ``timeout`` seconds once
        connected). Raises StorageUnavailableError."""
        await self.run(_ping, str(max(1, int(timeout * 1000))))

    def close(self) -> None:
        """Close the idle connections; connections in use close when their read ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


def _ping(conn: PgConnection, timeout_ms: str) -> None:
    conn.execute("SELECT set_config('statement_timeout', ?, true)", (timeout_ms,))
    conn.execute("SELECT 1").fetchone()


# ----------------------------------------------------------------------------- reaper lease


class ReaperLease:
    """Lets one node's reaper run at a time: a session advisory lock held on the lease's own
    connection until :meth:`release` (blocking; use from a worker thread).

    A lost connection loses the lock with it (the server drops session locks): :meth:`acquire`
    checks the session is alive each time and otherwise tries to take the lock afresh.
    """

    def __init__(self, target: PostgresBackend | str) -> None:
        self.backend = _backend(target)
        self._raw: psycopg.Connection | None = None

    @property
    def held(self) -> bool:
        """Whether the lease was held when last checked."""
        return self._raw is not None

    def acquire(self) -> bool:
        """Take (or confirm) the lease; False if another node holds it or the database cannot
        be reached."""
        if self._raw is not None:
            try:
                self._raw.execute("SELECT 1").fetchone()
                return True
            except psycopg.Error:
                self._close()
        try:
            raw = self.backend.connect()
        except StorageError:
            return False
        try:
            (got,) = raw.execute(
                "SELECT pg_try_advisory_lock(%s)", (REAPER_LOCK_KEY,)
            ).fetchone()
        except psycopg.Error:
            raw.close()
            return False
        if not got:
            raw.close()
            return False
        self._raw = raw
        return True

    def release(self) -> None:
        """Give the lease up (closing its session drops the lock)."""
        raw = self._raw
        if raw is None:
            return
        try:
            raw.execute("SELECT pg_advisory_unlock(%s)", (REAPER_LOCK_KEY,))
        except psycopg.Error:
            pass
        self._close()

    def _close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()

    close = release


# ---------------------------------------------------------------------------- shared settings


def load_setting(target: PostgresBackend | str, name: str) -> bytes:
    """A ``settings`` value (blocking). Raises NotFoundError, StorageUnavailableError."""
    return _backend(target).run_read(read_setting, name)


def load_or_create_setting(
    target: PostgresBackend | str, name: str, make_value: Callable[[], bytes]
) -> bytes:
    """The ``settings`` value ``name``, created from ``make_value()`` if there is none yet
    (blocking). Nodes calling this at once all get the one value that was stored first
    (``INSERT ... ON CONFLICT DO NOTHING``, then read it back).

    E.g. the shared JWT key ring: ``KeyRing.from_json(load_or_create_setting(backend,
    KEYRING_SETTING, lambda: KeyRing.generate().to_json().encode()))``.
    """
    backend = _backend(target)
    with backend._connection() as raw, _pg_transaction(raw, _WRITE_BEGIN) as conn:
        row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return bytes(row[0])
        conn.execute(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, bytes(make_value())),
        )
        return read_setting(conn, name)


def update_setting(
    target: PostgresBackend | str, name: str, fn: Callable[[bytes], bytes]
) -> bytes:
    """Replace the ``settings`` value ``name`` by ``fn(old)`` in one transaction, holding the
    row lock throughout, so concurrent updates (key rotations on several nodes) apply one
    after the other, none lost (blocking). Returns the new value.

    Raises:
        NotFoundError: there is no such setting. Whatever ``fn`` raises (nothing changes).
    """
    backend = _backend(target)
    with backend._connection() as raw, _pg_transaction(raw, _WRITE_BEGIN) as conn:
        row = conn.execute(
            "SELECT value FROM settings WHERE name = ? FOR UPDATE", (name,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"setting {name!r} is missing")
        value = bytes(fn(bytes(row[0])))
        conn.execute("UPDATE settings SET value = ? WHERE name = ?", (value, name))
        return value
