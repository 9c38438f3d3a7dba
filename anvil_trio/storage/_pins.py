"""Per-digest locks and pins: what keeps a blob file from being deleted while a write or a
read still needs it (used by :class:`~._blobs.BlobStore`).

Invariants:

* :class:`KeyedLocks` holds one ``trio.Lock`` per key while anyone holds or waits for it, and
  none after: memory follows the keys in use, not every key ever locked.
* A :class:`BlobPin` is released at most once, whatever calls ``release``; a
  :class:`WrittenBlob` holds exactly one pin, its write's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import attrs
import trio

__all__ = ["BlobPin", "KeyedLocks", "WrittenBlob"]


@attrs.define
class _LockEntry:
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    users: int = 0


@attrs.define
class KeyedLocks:
    """One ``trio.Lock`` per key, created on demand and dropped when nobody uses it."""

    _entries: dict[str, _LockEntry] = attrs.field(factory=dict)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _LockEntry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]


@attrs.define(eq=False)
class BlobPin:
    """One pin on a digest: while held, :meth:`BlobStore.delete_if_unpinned` keeps the file.

    ``release()`` is idempotent; the pin is also a (sync) context manager that releases on exit.
    """

    digest: str
    _on_release: Callable[[str], None] = attrs.field(repr=False)
    released: bool = attrs.field(default=False, init=False)

    def release(self) -> None:
        """Drop this pin (a second call does nothing)."""
        if not self.released:
            self.released = True
            self._on_release(self.digest)

    def __enter__(self) -> BlobPin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@attrs.frozen
class WrittenBlob:
    """The outcome of a write: ``digest`` (64 lowercase hex), ``size`` in bytes, ``created``
    (False when identical content was already stored), and ``location``, where the byte store
    keeps it (the digest itself for files; a fresh name per write for S3, see ``_seams``).

    The digest stays pinned until :meth:`release` (or leaving ``with written_blob:``); release
    it once the metadata that references it is committed, or the write abandoned.
    """

    digest: str
    size: int
    created: bool
    pin: BlobPin = attrs.field(eq=False, repr=False)
    location: str = attrs.field(default=attrs.Factory(lambda self: self.digest, takes_self=True))

    def release(self) -> None:
        """Release the write's pin (idempotent)."""
        self.pin.release()

    def __enter__(self) -> WrittenBlob:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
