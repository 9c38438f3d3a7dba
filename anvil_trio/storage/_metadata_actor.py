"""The metadata actor: the storage supervisor's single metadata writer, and the only place
blob files are deleted.

Invariants:

* Writes reach :class:`~._metadata.MetadataWriter` through this actor only, so they are
  serialized; writes already waiting together are committed in one transaction (group commit,
  ``batch_limit``), each still succeeding or failing on its own.
* Bytes are deleted only here, after a write left their location unreferenced (no ``blobs``
  row names it) and only once nothing pins it; the check and the delete never interleave with
  a commit of this actor (they run in ``after_reply``, before the next message), and the slow
  unlink of a file runs in the actor's own worker thread after the file was moved out of
  ``blobs/``. In a shared store a location is never reused (see ``_seams``), so a commit on
  another node cannot bring it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import outcome
import trio

from ..actors import Actor
from ._errors import StorageError
from ._pipeline import Lane
from ._seams import ByteStore, MetadataBackend

__all__ = ["MetadataActor", "ReclaimBlob", "Sync"]


@attrs.frozen
class ReclaimBlob:
    """Ask the metadata actor to delete the bytes at ``location`` (for files: the digest) if
    nothing references or pins them."""

    location: str


@attrs.frozen
class Sync:
    """Reply (``None``) once every message sent before it, and its follow-up work, is done."""


class MetadataActor(Actor):
    """The single metadata writer, plus the only place blob files are deleted.

    Args:
        backend: the metadata store; its writer is opened in ``on_start``.
        blobs: the byte store whose unreferenced bytes it deletes.

    Messages: the write messages of :mod:`._metadata` (reply: their value), :class:`ReclaimBlob`
    (reply: whether a file was deleted) and :class:`Sync`. The files a write left unreferenced
    are deleted right after its reply is sent (``after_reply``), still before the next message,
    so the refcount check and the delete never interleave with another commit. The delete
    there is a rename out of ``blobs/`` (:meth:`BlobStore.delete_if_unpinned` with
    ``defer_unlink``); the unlink itself, tens of milliseconds for a large file, runs in the
    actor's own worker thread (a :class:`~._pipeline.Lane`), so the next commit does not wait
    for it. A :class:`Sync` sent after a write is answered only once that write's files are
    unlinked.

    Group commit: write messages that are already waiting together (up to ``batch_limit``,
    e.g. the commits of many concurrent puts) are applied in one transaction, one fsync for
    all (:meth:`MetadataWriter.apply_many`), each in its own savepoint, so each still succeeds
    or fails on its own, and replies are sent once that transaction is durable. A
    :class:`ReclaimBlob` or :class:`Sync` inside such a batch is handled in its place, after
    the writes before it are committed and their files deleted, as one by one.
    :class:`StorageError` is replied; anything else (a broken connection or disk) crashes the
    actor so the supervisor restarts it (files it had yet to delete are left to the reaper).
    """

    reply_errors = (StorageError,)
    batch_limit = 64

    def __init__(self, backend: MetadataBackend, blobs: ByteStore) -> None:
        self._backend = backend
        self._blobs = blobs
        self._writer: Any = None
        self._zeroed: tuple[str, ...] = ()
        self._unlinker: Lane | None = None

    async def on_start(self) -> None:
        self._writer = await trio.to_thread.run_sync(self._backend.open_writer)
        self._unlinker = Lane("deleting blob files")

    async def on_stop(self) -> None:
        if self._unlinker is not None:
            try:
                await self._unlinker.wait(self._unlinker.submitted)
            finally:
                await self._unlinker.close()  # what is left, the reaper removes
        if self._writer is not None:
            await trio.to_thread.run_sync(self._writer.close)

    def _unlink_later(self, dead: Path) -> None:
        assert self._unlinker is not None
        self._unlinker.submit(self._blobs.purge, dead)

    async def receive(self, message: Any) -> Any:
        assert self._writer is not None
        if isinstance(message, ReclaimBlob):
            return await self._reclaim(message.location)
        if isinstance(message, Sync):
            assert self._unlinker is not None
            await self._unlinker.wait(self._unlinker.submitted)
            return None
        result = await trio.to_thread.run_sync(self._writer.apply, message)
        self._zeroed = tuple(result.zeroed)
        return result.value

    async def receive_batch(self, messages: Sequence[Any]) -> list[outcome.Outcome]:
        results: list[outcome.Outcome] = []
        writes: list[Any] = []
        for message in messages:
            if isinstance(message, (ReclaimBlob, Sync)):
                results.extend(await self._apply_writes(writes))
                writes = []
                await self.after_reply()  # the files of the writes before it go first
                try:
                    results.append(outcome.Value(await self.receive(message)))
                except StorageError as exc:
                    results.append(outcome.Error(exc))
            else:
                writes.append(message)
        results.extend(await self._apply_writes(writes))
        return results

    async def _apply_writes(self, writes: list[Any]) -> list[outcome.Outcome]:
        if not writes:
            return []
        assert self._writer is not None
        done = await trio.to_thread.run_sync(self._writer.apply_many, writes)
        zeroed = list(self._zeroed)
        results: list[outcome.Outcome] = []
        for result in done:
            if isinstance(result, StorageError):
                results.append(outcome.Error(result))
            else:
                zeroed.extend(result.zeroed)
                results.append(outcome.Value(result.value))
        self._zeroed = tuple(zeroed)
        return results

    async def after_reply(self) -> None:
        zeroed, self._zeroed = self._zeroed, ()
        for location in zeroed:
            try:
                await self._reclaim(location, defer_unlink=True)
            except StorageError:
                pass  # committed already; the reaper retries the file later

    async def _reclaim(self, location: str, *, defer_unlink: bool = False) -> bool:
        assert self._writer is not None
        if await trio.to_thread.run_sync(self._writer.location_referenced, location):
            return False
        return await self._blobs.delete_if_unpinned(
            location, defer_unlink=self._unlink_later if defer_unlink else None
        )
