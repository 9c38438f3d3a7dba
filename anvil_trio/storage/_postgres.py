"""Metadata in PostgreSQL, shared by several server nodes: :class:`PostgresBackend` (the
connections to one database), :class:`PostgresWriter` and :class:`PostgresReader`.

The same handler code (``_metadata``) and read functions (``_queries``) run unchanged on a
:class:`~._postgres_conn.PgConnection`, which rewrites their ``?`` placeholders to psycopg's
``%s``. psycopg 3 is used synchronously, in worker threads (``trio.to_thread``), never through
asyncio. The rest lives beside this module, and its names are importable from here:

* ``_postgres_conn``: the connection adapter, the connection string, what a psycopg error
  means (the error invariants) and the one-transaction helpers;
* ``_postgres_schema``: the schema and its migrations (the schema invariants);
* ``_postgres_shared``: the reaper's lease and the settings every node shares.

Invariants:

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
* Errors are :class:`StorageError` (``_postgres_conn``): a lost connection, a timeout or a full
  disk drops the connection, and the next call makes a new one. Anything else (a bug: a
  constraint or SQL error) propagates, as ``sqlite3`` errors do.
* Reads run in one ``REPEATABLE READ READ ONLY`` transaction each (a snapshot), on a small pool
  of connections; they never wait for writers.
* Nothing here logs or reprs a URL's password (:func:`~._backends.redact_url`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import trio

from ._backends import redact_url
from ._errors import StorageError, StorageUnavailableError
from ._metadata import CreateTenant, MetadataWriter, SetTenantQuota, WriteResult
from ._postgres_conn import (
    _LOST,
    _READ_BEGIN,
    _RETRY,
    _UNIQUE,
    _WRITE_BEGIN,
    UNREACHABLE,
    PgConnection,
    _classify,
    _conninfo,
    _pg_transaction,
    _rollback,
    _storage_error,
    _translated,
    _usable,
    pg_sql,
)
from ._postgres_schema import (
    MIGRATION_LOCK_KEY,
    PG_MIGRATIONS,
    _check_schema,
    pg_migrate,
)
from ._postgres_shared import (
    KEYRING_SETTING,
    REAPER_LOCK_KEY,
    ReaperLease,
    load_or_create_setting,
    load_setting,
    update_setting,
)
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
    "pg_sql",
    "redact_url",
    "tenant_of",
    "update_setting",
]

_T = TypeVar("_T")


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
