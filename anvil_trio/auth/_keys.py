"""JWT signing keys: the key ring and the key file in the data dir.

Invariants:

* A :class:`KeyRing` holds one or more HS256 keys, each with a unique ``kid``, oldest first.
  The *last* (newest) key signs new tokens; every key in the ring verifies tokens carrying its
  ``kid``. A key's secret is at least 32 bytes and never appears in a ``repr``.
* Rotation appends a fresh key; a retired key stays in the ring (and so still verifies) until
  ``retire_after`` seconds after its successor was added, which must exceed the longest token
  lifetime plus the clock leeway, so no token outlives the key that verifies it.
* The key file is JSON, created with mode 0600 and never readable by group or others: loading
  a file with any group/other permission bit set fails (like ssh does with private keys).
  It is written to a temporary file, fsynced and moved into place, so readers see the old or
  the new ring, never half of one. Creating it when absent is atomic (``os.link``): two
  processes starting at once end up with the same ring. Rotations take an exclusive
  ``flock`` on ``<file>.lock``.
* Key secrets may also come from configuration (:meth:`KeyRing.from_secrets`), e.g. shared by
  several server nodes; then no file is involved.
* Functions here do blocking file I/O; call them at startup or via ``trio.to_thread``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from ._errors import KeyFileError

__all__ = [
    "KEY_FILE_NAME",
    "KeyFileMonitor",
    "KeyRing",
    "SharedKeyMonitor",
    "SigningKey",
    "load_keyring",
    "load_or_create_keyring",
    "rotate_keyring",
]

#: Name of the key file inside the data dir (the caller joins it with the data dir).
KEY_FILE_NAME = "jwt-keys.json"
#: Minimum HS256 key length in bytes (the SHA-256 output size, per RFC 7518 section 3.2).
MIN_KEY_BYTES = 32
_FORMAT = "anvil-trio-jwt-keys"
_VERSION = 1
_KID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_MAX_KEY_FILE_BYTES = 1 << 20


def _check_kid(_instance: object, _attribute: object, kid: str) -> None:
    if not isinstance(kid, str) or not 1 <= len(kid) <= 64 or not set(kid) <= _KID_CHARS:
        raise ValueError("a key id is 1-64 characters of letters, digits, '.', '_' or '-'")


def _check_secret(_instance: object, _attribute: object, secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_KEY_BYTES:
        raise ValueError(f"an HS256 key must be at least {MIN_KEY_BYTES} bytes")


@attrs.frozen
class SigningKey:
    """One HS256 key.

    Attributes:
        kid: the key id put in the ``kid`` header of tokens it signs.
        secret: the key bytes (at least 32), hidden from ``repr``.
        created_at: when it was made, seconds since the epoch (informational, and the start of
            its predecessor's retirement).
    """

    kid: str = attrs.field(validator=_check_kid)
    secret: bytes = attrs.field(repr=False, validator=_check_secret)
    created_at: float = 0.0

    @classmethod
    def generate(cls, *, now: float | None = None) -> SigningKey:
        """A fresh random 32-byte key with a random 16-hex-digit ``kid``."""
        return cls(
            kid=secrets.token_hex(8),
            secret=secrets.token_bytes(MIN_KEY_BYTES),
            created_at=time.time() if now is None else float(now),
        )


def _check_keys(_instance: object, _attribute: object, keys: tuple[SigningKey, ...]) -> None:
    if not keys:
        raise ValueError("a key ring needs at least one key")
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise ValueError("key ids in a key ring must be unique")


@attrs.frozen
class KeyRing:
    """HS256 keys, oldest first; the last one signs.

    Attributes:
        keys: the keys (non-empty, unique ``kid`` values).
    """

    keys: tuple[SigningKey, ...] = attrs.field(converter=tuple, validator=_check_keys)

    @classmethod
    def generate(cls, *, now: float | None = None) -> KeyRing:
        """A ring of one fresh key."""
        return cls((SigningKey.generate(now=now),))

    @classmethod
    def from_secrets(cls, items: Iterable[tuple[str, str | bytes]]) -> KeyRing:
        """A ring from configured ``(kid, secret)`` pairs, oldest first; the last one signs.

        Args:
            items: pairs of a key id and a secret; a ``str`` secret is used as its UTF-8 bytes.

        Raises:
            ValueError: no keys, a duplicate or malformed ``kid``, or a secret under 32 bytes.
        """
        return cls(
            tuple(
                SigningKey(kid, secret.encode("utf-8") if isinstance(secret, str) else secret)
                for kid, secret in items
            )
        )

    @classmethod
    def from_secret(cls, secret: str | bytes, *, kid: str | None = None) -> KeyRing:
        """A ring of one configured key (e.g. ``Config.jwt_key``, shared by several nodes).

        Args:
            secret: the key; a ``str`` is used as its UTF-8 bytes; at least 32 bytes.
            kid: its key id; by default ``cfg-`` and 16 hex digits of the key's SHA-256, so
                every node configured with the same key names it the same way.

        Raises:
            ValueError: the secret is shorter than 32 bytes or the ``kid`` is malformed.
        """
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if kid is None:
            kid = "cfg-" + hashlib.sha256(b"anvil-trio-kid\0" + raw).hexdigest()[:16]
        return cls((SigningKey(kid, raw),))

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs new tokens: the newest one."""
        return self.keys[-1]

    def get(self, kid: str) -> SigningKey | None:
        """The key with id ``kid``, or None."""
        for key in self.keys:
            if key.kid == kid:
                return key
        return None

    def rotated(self, *, now: float | None = None, retire_after: float = 3600.0) -> KeyRing:
        """A ring with a fresh signing key added and long-retired keys dropped.

        Args:
            now: the current time (seconds since the epoch); default ``time.time()``.
            retire_after: seconds a replaced key keeps verifying after its successor was
                added; must exceed the longest token lifetime plus the leeway.

        Returns:
            The new ring: the kept old keys, then the new key.
        """
        now = time.time() if now is None else float(now)
        keys = self.keys
        kept = [k for k, succ in zip(keys, keys[1:]) if succ.created_at + retire_after > now]
        return KeyRing((*kept, keys[-1], SigningKey.generate(now=now)))

    def to_json(self) -> str:
        """The key file's text."""
        doc = {
            "format": _FORMAT,
            "version": _VERSION,
            "keys": [
                {
                    "kid": k.kid,
                    "alg": "HS256",
                    "secret": base64.urlsafe_b64encode(k.secret).decode("ascii"),
                    "created_at": k.created_at,
                }
                for k in self.keys
            ],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRing:
        """Parse a key file's text.

        Raises:
            KeyFileError: it is not a well-formed key file.
        """
        try:
            doc = json.loads(text)
            if doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
                raise ValueError("unknown key file format or version")
            keys = []
            for entry in doc["keys"]:
                if entry.get("alg") != "HS256":
                    raise ValueError("only HS256 keys are supported")
                created = entry["created_at"]
                if isinstance(created, bool) or not isinstance(created, (int, float)):
                    raise ValueError("created_at must be a number")
                secret = base64.urlsafe_b64decode(entry["secret"].encode("ascii"))
                keys.append(SigningKey(entry["kid"], secret, float(created)))
            return cls(tuple(keys))
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
            raise KeyFileError(f"malformed JWT key file: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, ring: KeyRing) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        data = ring.to_json().encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_keyring(path: str | os.PathLike[str]) -> KeyRing:
    """Read the key file at ``path``.

    Raises:
        KeyFileError: it is missing or unreadable, not a regular file, readable or writable by
            group or others, or malformed.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(f"cannot open JWT key file {str(path)!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"JWT key file {str(path)!r} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"JWT key file {str(path)!r} has mode {stat.S_IMODE(st.st_mode):04o};"
                " it must not be accessible by group or others (chmod 600)"
            )
        if st.st_size > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"JWT key file {str(path)!r} is too large")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    return KeyRing.from_json(data)


def load_or_create_keyring(path: str | os.PathLike[str], *, now: float | None = None) -> KeyRing:
    """Read the key file, creating it (mode 0600, one fresh key) if it does not exist.

    Creating is atomic: if another process creates it first, its ring is read and returned.

    Args:
        path: the key file, usually ``data_dir / KEY_FILE_NAME``; its directory must exist.
        now: creation time for a new key; default ``time.time()``.

    Raises:
        KeyFileError: as for :func:`load_keyring`.
    """
    path = Path(path)
    if path.exists():
        return load_keyring(path)
    tmp = _write_temp(path, KeyRing.generate(now=now))
    try:
        with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return load_keyring(path)


def rotate_keyring(
    path: str | os.PathLike[str], *, now: float | None = None, retire_after: float = 3600.0
) -> KeyRing:
    """Add a fresh signing key to the key file (creating it if absent); see
    :meth:`KeyRing.rotated`.

    Returns:
        The ring now in the file.

    Raises:
        KeyFileError: as for :func:`load_keyring`.
    """
    path = Path(path)
    with _locked(path):
        ring = load_or_create_keyring(path, now=now).rotated(now=now, retire_after=retire_after)
        tmp = _write_temp(path, ring)
        try:
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    return ring


@attrs.define
class KeyFileMonitor:
    """Notices when the key file changed (e.g. an admin rotated keys while serving).

    Call :meth:`poll` from time to time (say on a ``Schedule``) and hand a new ring to
    ``Authenticator.update_keyring``.

    Attributes:
        path: the key file.
    """

    path: Path = attrs.field(converter=Path)
    _seen: tuple[int, int, int] | None = attrs.field(default=None, init=False)

    def _signature(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def poll(self) -> KeyRing | None:
        """The ring in the file if it changed since the last poll (or on the first poll), else
        None.

        Raises:
            KeyFileError: the file changed and cannot be loaded.
        """
        try:
            signature = self._signature()
        except OSError as exc:
            raise KeyFileError(f"cannot stat JWT key file: {exc.strerror}") from None
        if signature == self._seen:
            return None
        ring = load_keyring(self.path)
        self._seen = signature
        return ring


@attrs.define
class SharedKeyMonitor:
    """The key ring kept in a store every node shares (PostgreSQL's ``settings`` row): what
    :class:`KeyFileMonitor` is for the key file. The store is reached only through the
    callables, so this module needs no storage code.

    Args:
        load: returns the stored ring's JSON bytes (blocking; raises when unreachable).
        load_or_create: the same, storing ``make()`` first if there is none yet, atomically
            (so nodes starting at once share one ring).
    """

    load: Callable[[], bytes]
    load_or_create: Callable[[Callable[[], bytes]], bytes]
    _seen: bytes | None = attrs.field(default=None, init=False)

    def first(self, *, now: float | None = None) -> KeyRing:
        """The ring, created if absent (blocking).

        Raises:
            KeyFileError: the stored ring is malformed.
        """
        raw = self.load_or_create(lambda: KeyRing.generate(now=now).to_json().encode())
        self._seen = raw
        return KeyRing.from_json(raw)

    def poll(self) -> KeyRing | None:
        """The stored ring if it changed since the last look, else None (blocking).

        Raises:
            KeyFileError: the stored ring is malformed. Whatever ``load`` raises.
        """
        raw = self.load()
        if raw == self._seen:
            return None
        ring = KeyRing.from_json(raw)
        self._seen = raw
        return ring
