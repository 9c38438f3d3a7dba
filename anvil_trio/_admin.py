"""Administration of a data dir: tenants, apps, client secrets and granted scopes.

These are the operations behind ``anvil-trio admin``, as plain async functions that tests and
embedders can call too. :class:`Admin` holds one metadata writer on a data dir's database;
each ``*_at`` function opens one for a single operation and closes it again.

Invariants:

* A running server may use the same data dir at the same time. The admin never starts storage
  (whose reaper would treat the server's in-flight files as garbage): it opens its own
  :class:`MetadataWriter` and writes only tenant, app and grant rows, never bytes. SQLite's
  write lock (with ``busy_timeout``) serialises it with the server's metadata actor, and a
  write that still finds the database busy is retried a few times. The server reads apps and
  grants afresh at every ``GetAccessToken``, so a change made here takes effect at the next
  one, without a restart.
* Every change is one SQLite transaction; a failed one leaves nothing changed.
* A client secret exists in clear only in the :class:`AppCredentials` returned by
  :meth:`Admin.create_app` and :meth:`Admin.rotate_secret`; the database receives only
  ``hash_secret(secret)``.
* JWT signing keys live in ``data_dir / KEY_FILE_NAME``; :func:`rotate_signing_key_at` adds a
  key under the key file's lock, and a running server picks it up at its next poll of the file.
  The retired key keeps verifying for ``retire_after`` seconds, which must exceed the longest
  token lifetime plus the leeway.
* Input is validated before anything is written: every scope of a grant or revoke parses with
  :func:`parse_scope`, or none is applied.
* The blocking SQLite and scrypt work runs in worker threads; an :class:`Admin` is used by one
  task at a time.

Errors are those of the layers below: :class:`InvalidScopeError` (a scope that does not
parse), and :class:`StorageError` subclasses (:class:`NotFoundError` for an unknown tenant or
app, :class:`AlreadyExistsError` for a duplicate, :class:`InvalidArgumentError` for a bad name
or quota, :class:`StorageUnavailableError` when the database stays busy, plain
:class:`StorageError` when the database cannot be used at all).
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from ._effects import retry
from ._schedule import Schedule
from .auth import (
    DEFAULT_SCRYPT,
    KEY_FILE_NAME,
    KeyRing,
    ScryptParams,
    generate_client_id,
    generate_client_secret,
    hash_secret,
    parse_scope,
    rotate_keyring,
)
from .storage import (
    AppInfo,
    MetadataWriter,
    StorageError,
    StorageUnavailableError,
    TenantInfo,
)
from .storage import _metadata as m
from .storage import _queries as q
from .storage._backends import DB_NAME, is_metadata_url

__all__ = [
    "Admin",
    "AppCredentials",
    "create_app_at",
    "create_tenant_at",
    "get_app_at",
    "grant_scopes_at",
    "revoke_scopes_at",
    "rotate_secret_at",
    "rotate_signing_key_at",
    "run_admin",
    "set_tenant_quota_at",
    "validate_scopes",
]

T = TypeVar("T")

#: Retries of a write that found the database busy even after SQLite's own busy timeout:
#: waits of 0.25, 0.5 and 1 s (``Schedule.exponential(0.25) & Schedule.recurs(3)``).
BUSY_RETRY = Schedule.exponential(0.25) & Schedule.recurs(3)


@attrs.frozen
class AppCredentials:
    """A client id with its secret in clear; the secret is shown once and not stored.

    Attributes:
        client_id: the app's client id (``app_`` and 20 hex digits).
        client_secret: the secret; storage holds only its scrypt hash.
        tenant: the tenant the app belongs to.
        name: the app's name within its tenant.
    """

    client_id: str
    client_secret: str = attrs.field(repr=False)
    tenant: str
    name: str

    def as_json(self) -> dict[str, str]:
        """The ``{"client_id": ..., "client_secret": ...}`` object the CLI prints."""
        return {"client_id": self.client_id, "client_secret": self.client_secret}


def validate_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """Check every scope and drop repeats, keeping the first occurrence's order.

    Args:
        scopes: scope strings (``ACTION:RESOURCE``).

    Returns:
        The distinct scopes, in order, as given (``parse_scope`` round-trips them).

    Raises:
        InvalidScopeError: a scope does not parse (the first one that does not is named);
            ``ValueError`` when ``scopes`` is empty.
    """
    if not scopes:
        raise ValueError("at least one scope is needed")
    distinct: dict[str, None] = {}
    for text in scopes:
        distinct[str(parse_scope(text))] = None
    return tuple(distinct)


def _open_writer(path: pathlib.Path) -> MetadataWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return MetadataWriter(path)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StorageUnavailableError(f"{path} is busy; retry") from exc
        raise StorageError(f"cannot open {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {path}: {exc}") from exc


class Admin:
    """The admin operations on one data dir's metadata database.

    Open one with :meth:`open` (or use :func:`run_admin`) and :meth:`close` it when done.

    Args:
        writer: an open :class:`MetadataWriter` on the data dir's database; owned from now on.
        scrypt: cost of the secret hashes made here (tests may pass cheaper parameters).
        clock: wall-clock seconds for creation times.
    """

    def __init__(
        self, writer: MetadataWriter, *, scrypt: ScryptParams = DEFAULT_SCRYPT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._scrypt = scrypt
        self._clock = clock

    @classmethod
    async def open(
        cls, data_dir: str | os.PathLike[str], *, scrypt: ScryptParams = DEFAULT_SCRYPT,
        clock: Callable[[], float] = time.time,
    ) -> Admin:
        """Open (creating and migrating if needed) the metadata database of ``data_dir``.

        Raises:
            StorageUnavailableError: the database stayed locked. StorageError: it cannot be
            used (not a database, written by a newer version, unreadable).
        """
        if is_metadata_url(data_dir):
            from .storage._postgres import PostgresBackend

            backend = PostgresBackend(str(data_dir))
            await trio.to_thread.run_sync(backend.prepare)
            writer = await trio.to_thread.run_sync(backend.open_writer)
            return cls(writer, scrypt=scrypt, clock=clock)
        path = pathlib.Path(data_dir).expanduser() / DB_NAME
        writer = await retry(BUSY_RETRY, trio.to_thread.run_sync, _open_writer, path,
                             on=StorageUnavailableError)
        return cls(writer, scrypt=scrypt, clock=clock)

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        self._writer.close()

    def _apply_sync(self, message: Any) -> Any:
        try:
            result = self._writer.apply(message)
        except sqlite3.Error as exc:
            raise StorageError(f"metadata database error: {exc}") from exc
        return result.value

    async def _apply(self, message: Any) -> Any:
        return await retry(BUSY_RETRY, trio.to_thread.run_sync, self._apply_sync, message,
                           on=StorageUnavailableError)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            try:
                return self._writer.read(fn, *args)
            except sqlite3.Error as exc:
                raise StorageError(f"metadata database error: {exc}") from exc
        return await trio.to_thread.run_sync(run)

    async def _new_secret(self) -> tuple[str, str]:
        secret = generate_client_secret()
        digest = await trio.to_thread.run_sync(
            lambda: hash_secret(secret, params=self._scrypt)
        )
        return secret, digest

    async def create_tenant(self, name: str, *, quota_bytes: int | None = None) -> TenantInfo:
        """Create a tenant.

        Args:
            name: 1-255 printable characters, unique.
            quota_bytes: total bytes its objects and blobs may use; ``None``: unlimited.

        Raises:
            AlreadyExistsError: the name is taken. InvalidArgumentError: a bad name or a
            negative quota.
        """
        return await self._apply(m.CreateTenant(name, quota_bytes, self._clock()))

    async def set_tenant_quota(self, name: str, quota_bytes: int | None) -> TenantInfo:
        """Change a tenant's quota (``None``: unlimited); usage already over it stays.

        Raises:
            NotFoundError: no such tenant. InvalidArgumentError: a negative quota.
        """
        return await self._apply(m.SetTenantQuota(name, quota_bytes))

    async def get_tenant(self, name: str) -> TenantInfo:
        """A tenant's quota and usage. Raises NotFoundError."""
        return await self._read(q.read_tenant, name)

    async def create_app(self, *, tenant: str, name: str) -> AppCredentials:
        """Register an app in ``tenant`` with a fresh client id and secret and no scopes.

        Returns:
            The credentials; the secret is not recoverable afterwards (only its hash is kept).

        Raises:
            NotFoundError: no such tenant. AlreadyExistsError: the tenant already has an app
            called ``name``. InvalidArgumentError: an empty name.
        """
        secret, digest = await self._new_secret()
        client_id = generate_client_id()
        await self._apply(m.CreateApp(tenant, name, client_id, digest, self._clock()))
        return AppCredentials(client_id, secret, tenant, name)

    async def rotate_secret(self, client_id: str) -> AppCredentials:
        """Give an app a new secret; the old one stops working at once (tokens already issued
        stay valid until they expire).

        Raises:
            NotFoundError: no such app.
        """
        app = await self.get_app(client_id)
        secret, digest = await self._new_secret()
        await self._apply(m.SetAppSecret(client_id, digest))
        return AppCredentials(client_id, secret, app.tenant, app.name)

    async def grant_scopes(self, client_id: str, scopes: Sequence[str]) -> AppInfo:
        """Grant scopes to an app (granting one it holds is a no-op).

        Returns:
            The app afterwards, with all its granted scopes.

        Raises:
            InvalidScopeError: a scope does not parse; nothing is granted. NotFoundError: no
            such app.
        """
        checked = validate_scopes(scopes)
        await self._apply(m.ChangeGrants(client_id, checked, True))
        return await self.get_app(client_id)

    async def revoke_scopes(self, client_id: str, scopes: Sequence[str]) -> AppInfo:
        """Revoke scopes from an app (revoking one it does not hold is a no-op). Tokens
        already issued keep their scopes until they expire.

        Returns:
            The app afterwards, with the scopes it still holds.

        Raises:
            InvalidScopeError: a scope does not parse; nothing is revoked. NotFoundError: no
            such app.
        """
        checked = validate_scopes(scopes)
        await self._apply(m.ChangeGrants(client_id, checked, False))
        return await self.get_app(client_id)

    async def get_app(self, client_id: str) -> AppInfo:
        """An app's tenant, name, secret hash and granted scopes. Raises NotFoundError."""
        return await self._read(q.read_app, client_id)


async def run_admin(
    data_dir: str | os.PathLike[str],
    operation: Callable[[Admin], Awaitable[T]],
    *,
    scrypt: ScryptParams = DEFAULT_SCRYPT,
) -> T:
    """Open an :class:`Admin` on ``data_dir``, run ``operation(admin)``, close it.

    The data dir and its database are created if missing, so tenants and apps can be set up
    before the first ``serve``.

    Args:
        data_dir: the server's data dir.
        operation: an async callable given the :class:`Admin`.
        scrypt: passed to :meth:`Admin.open`.

    Returns:
        What ``operation`` returned.

    Raises:
        Whatever :meth:`Admin.open` or ``operation`` raises.
    """
    admin = await Admin.open(data_dir, scrypt=scrypt)
    try:
        return await operation(admin)
    finally:
        admin.close()


# The operations on a data dir, one database session each.


async def create_tenant_at(
    data_dir: str | os.PathLike[str], name: str, *, quota_bytes: int | None = None
) -> TenantInfo:
    """:meth:`Admin.create_tenant` on ``data_dir`` (see :func:`run_admin`)."""
    return await run_admin(data_dir, lambda a: a.create_tenant(name, quota_bytes=quota_bytes))


async def set_tenant_quota_at(
    data_dir: str | os.PathLike[str], name: str, quota_bytes: int | None
) -> TenantInfo:
    """:meth:`Admin.set_tenant_quota` on ``data_dir`` (see :func:`run_admin`)."""
    return await run_admin(data_dir, lambda a: a.set_tenant_quota(name, quota_bytes))


async def create_app_at(
    data_dir: str | os.PathLike[str], *, tenant: str, name: str,
    scrypt: ScryptParams = DEFAULT_SCRYPT,
) -> AppCredentials:
    """:meth:`Admin.create_app` on ``data_dir`` (see :func:`run_admin`)."""
    return await run_admin(data_dir, lambda a: a.create_app(tenant=tenant, name=name),
                           scrypt=scrypt)


async def rotate_secret_at(
    data_dir: str | os.PathLike[str], client_id: str, *, scrypt: ScryptParams = DEFAULT_SCRYPT
) -> AppCredentials:
    """:meth:`Admin.rotate_secret` on ``data_dir`` (see :func:`run_admin`)."""
    return await run_admin(data_dir, lambda a: a.rotate_secret(client_id), scrypt=scrypt)


async def grant_scopes_at(
    data_dir: str | os.PathLike[str], client_id: str, scopes: Sequence[str]
) -> AppInfo:
    """:meth:`Admin.grant_scopes` on ``data_dir``; scopes are checked before opening it."""
    validate_scopes(scopes)
    return await run_admin(data_dir, lambda a: a.grant_scopes(client_id, scopes))


async def revoke_scopes_at(
    data_dir: str | os.PathLike[str], client_id: str, scopes: Sequence[str]
) -> AppInfo:
    """:meth:`Admin.revoke_scopes` on ``data_dir``; scopes are checked before opening it."""
    validate_scopes(scopes)
    return await run_admin(data_dir, lambda a: a.revoke_scopes(client_id, scopes))


async def get_app_at(data_dir: str | os.PathLike[str], client_id: str) -> AppInfo:
    """:meth:`Admin.get_app` on ``data_dir`` (see :func:`run_admin`)."""
    return await run_admin(data_dir, lambda a: a.get_app(client_id))


def _rotate_shared(url: str, retire_after: float) -> KeyRing:
    """Rotate the ring every node shares in PostgreSQL (one transaction, row locked)."""
    from .storage._postgres import KEYRING_SETTING, PostgresBackend

    backend = PostgresBackend(url)
    backend.prepare()
    backend.load_or_create_setting(KEYRING_SETTING, lambda: KeyRing.generate().to_json().encode())
    raw = backend.update_setting(
        KEYRING_SETTING,
        lambda old: KeyRing.from_json(old).rotated(retire_after=retire_after).to_json().encode(),
    )
    return KeyRing.from_json(raw)


async def rotate_signing_key_at(
    data_dir: str | os.PathLike[str], *, retire_after: float = 3600.0
) -> KeyRing:
    """Add a fresh JWT signing key to ``data_dir``'s key file (creating the file if absent),
    or, given a ``postgresql://`` URL instead, to the ring every node shares there.

    Args:
        retire_after: seconds the previous key still verifies tokens; must exceed the server's
            ``token_lifetime + token_leeway``.

    Returns:
        The key ring now in the file (its ``signing_key`` is the new key).

    Raises:
        KeyFileError: the key file is unreadable, malformed or open to group/others.
        ValueError: ``retire_after`` is not positive.
    """
    if retire_after <= 0:
        raise ValueError("retire_after must be positive")
    if is_metadata_url(data_dir):
        return await trio.to_thread.run_sync(_rotate_shared, str(data_dir), retire_after)
    directory = pathlib.Path(data_dir).expanduser()

    def rotate() -> KeyRing:
        directory.mkdir(parents=True, exist_ok=True)
        return rotate_keyring(directory / KEY_FILE_NAME, retire_after=retire_after)

    return await trio.to_thread.run_sync(rotate)
