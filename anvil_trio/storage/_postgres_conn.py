"""Talking to PostgreSQL: the connection adapter that runs the shared SQL, the connection
string, what a psycopg error means, and the one-transaction helpers that the backend
(``_postgres``), the migrations (``_postgres_schema``) and the lease and settings
(``_postgres_shared``) use.

Invariants:

* The handler code (``_metadata``) and read functions (``_queries``) run unchanged on a
  :class:`PgConnection`, which rewrites their ``?`` placeholders to psycopg's ``%s`` (a literal
  ``%`` doubled; the shared SQL never has a ``?`` inside a string literal). psycopg 3 is used
  synchronously, in worker threads (``trio.to_thread``), never through asyncio.
* Connections are autocommit: a transaction is an explicit ``BEGIN`` ... ``COMMIT``, rolled back
  on any error (:func:`_pg_transaction`); a connection that cannot be rolled back is closed and
  never used again (:func:`_rollback`).
* Errors are :class:`StorageError`: a lost or refused connection, a statement or lock timeout
  is :class:`StorageUnavailableError` (the connection is dropped and a new one is made on the
  next call), a full disk on the server :class:`StorageFullError`, a unique violation
  :class:`AlreadyExistsError`. Anything else (a bug: a constraint or SQL error) propagates, as
  ``sqlite3`` errors do (:func:`_classify`, :func:`_storage_error`).
* A malformed URL is refused with a message that never contains its password
  (:func:`_conninfo`); logs and reprs show URLs through ``_backends.redact_url``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg.pq import TransactionStatus

from ._errors import (
    AlreadyExistsError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)

__all__ = ["BUSY", "UNREACHABLE", "PgConnection", "pg_sql"]

UNREACHABLE = "metadata store is unreachable; retry"
BUSY = "metadata is busy; retry"

_SCHEMES = ("postgresql://", "postgres://")
_SQL_CACHE: dict[str, str] = {}
_SQL_CACHE_LIMIT = 4096

_WRITE_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
_READ_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


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
            :attr:`~._postgres.PostgresWriter.conn`). The writer and the readers classify
            errors themselves.
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
