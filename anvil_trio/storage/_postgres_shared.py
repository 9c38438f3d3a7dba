"""What the nodes sharing one PostgreSQL database share besides the metadata: the reaper's
lease (:class:`ReaperLease`) and the ``settings`` rows, such as the JWT key ring
(:data:`KEYRING_SETTING`). Everything here blocks: call it from a worker thread.

Invariants:

* At most one node's reaper runs at a time: the lease is the session advisory lock
  :data:`REAPER_LOCK_KEY`, held on the lease's own connection. A lost connection loses the
  lock with it (the server drops session locks), so :meth:`ReaperLease.acquire` checks the
  session is alive each time and otherwise tries to take the lock afresh.
* A setting, once stored, is the one every node reads: :func:`load_or_create_setting` inserts
  with ``ON CONFLICT DO NOTHING`` and reads back, so nodes creating it at once all get the
  value stored first; :func:`update_setting` holds the row lock (``FOR UPDATE``) from read to
  write, so concurrent updates apply one after the other, none lost.
* Errors as in ``_postgres_conn``: StorageUnavailableError when the server cannot be reached,
  NotFoundError for a missing setting; a lease that cannot be taken is just not held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from ._errors import NotFoundError, StorageError
from ._postgres_conn import _WRITE_BEGIN, _pg_transaction
from ._queries import read_setting

if TYPE_CHECKING:
    from ._postgres import PostgresBackend

__all__ = [
    "KEYRING_SETTING",
    "REAPER_LOCK_KEY",
    "ReaperLease",
    "load_or_create_setting",
    "load_setting",
    "update_setting",
]

#: ``pg_try_advisory_lock`` key of the reaper lease ("anvil_rp").
REAPER_LOCK_KEY = 0x616E76696C5F7270
#: The settings row holding the nodes' shared JWT key ring (``KeyRing.to_json()`` bytes).
KEYRING_SETTING = "jwt_keyring"


def _backend(target: PostgresBackend | str) -> PostgresBackend:
    # Imported here: ``_postgres`` (the backend) imports this module.
    from ._postgres import PostgresBackend

    return target if isinstance(target, PostgresBackend) else PostgresBackend(target)


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
