"""``anvil.v1.UploadService``: the resumable, acknowledged bidi upload of a content-addressed blob.

The protocol is split into a pure core, :class:`UploadSession` (which message may come now,
which bytes must be written durably now, what an ack says), and a thin driver,
:meth:`UploadService.Upload`, that awaits the storage calls and yields the acks.

Invariants (the session's state machine)::

    (parse_start) --start--> RECEIVING --chunk*--> RECEIVING --complete--> DONE
                                       \\--end of stream (no complete)--> ENDED

* The first message must be ``StartUpload``; anything else (or nothing) is INVALID_ARGUMENT.
  A later ``StartUpload`` or a message with no ``oneof`` set is INVALID_ARGUMENT too
  ("messages out of order"). After the completion ack the call ends; nothing more is read.
* Empty ``upload_id`` starts a new upload; a known one resumes it (its ``total_size`` must be
  the original one: INVALID_ARGUMENT; an unknown or expired id: NOT_FOUND). The first ack
  carries the upload id and the bytes the server already holds durably (0 when new).
* ``received`` counts the bytes accepted so far, ``durable`` those written and fsynced by
  ``Storage.append_upload``; ``durable <= received <= total_size`` always, and at most
  ``batch_bytes`` (default 1 MiB, never more than 4 MiB) are ever held only in memory.
* A chunk's ``offset`` must equal ``received`` and it must not carry the upload past
  ``total_size`` (INVALID_ARGUMENT). Bytes are written in batches of at most ``batch_bytes``;
  every durable write is followed by an ack whose ``received_bytes`` is the durable count, so
  acks are monotonic, report only durable bytes, and come at least once per ``batch_bytes``
  received. Once ``received`` reaches ``total_size`` everything is written and acked at once.
* ``CompleteUpload`` is accepted only when ``received == total_size`` and its
  ``expected_hash`` is empty or 32 bytes (INVALID_ARGUMENT otherwise). A hash mismatch is
  INVALID_ARGUMENT and storage discards the upload. The completion ack carries
  ``UploadComplete{key, size, deduplicated}`` and ends the call with OK.
* A stream that ends without ``complete`` writes what it accepted, sends one last ack with the
  durable count, and ends with OK: the upload stays resumable. A stream that breaks keeps at
  least the last acked count (the unwritten batch is lost).
* One stream writes an upload at a time: a resume of an upload that another stream of the
  same tenant is still writing (its client dropped and came back before the server noticed)
  ends that stream with ABORTED, waits for its in-flight durable write, and only then acks the
  durable count.
* At most ``ServiceContext.upload_slots`` uploads run at once; one more gets
  RESOURCE_EXHAUSTED at once (it never waits for a slot). The slot is taken after
  authorization and before any storage work, and released when the call ends, however it ends.
* Checks run in API.md's order: authenticate (before reading any message), validate the start,
  authorize (``write:blob:*``), then storage. Everything is inside the token's tenant.
* A client that goes silent does not hold a slot forever: every wait for the next message
  (the start included) is bounded by ``idle_timeout`` seconds (``Config.upload_idle_timeout``,
  default 300). Past it, the bytes accepted are written durably (as at an end of stream
  without ``complete``) and the call ends with DEADLINE_EXCEEDED — a time limit passed before
  the operation could finish, which API.md already lists as retryable; retrying an upload means
  resuming it with its ``upload_id`` (ABORTED is not used: it signals a concurrency conflict).
  No ack is sent then (a silent client may not be reading); the status message carries the
  durable count. The slot is released as the call ends. Time spent in storage or waiting to
  send an ack does not count as idle.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping

import attrs
import purerpc
import trio

from .._proto.anvil.v1 import upload_pb2
from .._proto.anvil.v1.upload_grpc import UploadServiceServicer
from ..storage import InvalidArgumentError
from ._calls import CallContext
from ._common import ServiceContext, call_storage, principal

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_IDLE_TIMEOUT",
    "MAX_BATCH_BYTES",
    "SessionPhase",
    "StartRequest",
    "UploadIdleError",
    "UploadService",
    "UploadSession",
    "parse_start",
]

#: Bytes accepted before they are written durably and acked (one fsync per batch).
DEFAULT_BATCH_BYTES = 1 << 20
#: The contract promises an ack at least once per 4 MiB received.
MAX_BATCH_BYTES = 4 << 20
#: Seconds an Upload stream may wait for its next message (``Config.upload_idle_timeout``).
DEFAULT_IDLE_TIMEOUT = 300.0

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_HASH_BYTES = 32


class UploadIdleError(purerpc.DeadlineExceededError):
    """No message arrived on an Upload stream within the idle timeout (DEADLINE_EXCEEDED).

    Attributes:
        idle_timeout: the timeout that passed, in seconds.
    """

    def __init__(self, idle_timeout: float, detail: str = "") -> None:
        text = f"no upload message for {idle_timeout:g} s; the call was ended"
        super().__init__(f"{text}{'; ' + detail if detail else ''}")
        self.idle_timeout = idle_timeout


class _IdleBounded:
    """``messages`` as they come; :class:`UploadIdleError` when the next one takes longer than
    ``idle_timeout`` seconds to arrive (only the wait for it is timed). A plain iterator, not a
    generator, so nothing is left to finalize when the call ends early."""

    def __init__(
        self, messages: AsyncIterator[upload_pb2.UploadMessage], idle_timeout: float
    ) -> None:
        self._messages = messages
        self._idle_timeout = idle_timeout

    def __aiter__(self) -> _IdleBounded:
        return self

    async def __anext__(self) -> upload_pb2.UploadMessage:
        with trio.move_on_after(self._idle_timeout) as scope:
            message = await anext(self._messages, None)
        if scope.cancelled_caught:
            raise UploadIdleError(self._idle_timeout)
        if message is None:
            raise StopAsyncIteration
        return message


class SessionPhase(enum.Enum):
    """Where an upload stream is in its protocol (see the module docstring)."""

    RECEIVING = "receiving"
    DONE = "done"
    ENDED = "ended"


@attrs.frozen
class StartRequest:
    """A validated ``StartUpload``.

    Attributes:
        total_size: the exact size of the blob (0: empty).
        attributes: the blob's attributes (``content-type`` among them, if given).
        upload_id: the upload to resume, or ``""`` to start a new one.
    """

    total_size: int
    attributes: Mapping[str, str]
    upload_id: str


def _kind(message: upload_pb2.UploadMessage | None) -> str:
    if message is None:
        return "end of stream"
    return message.WhichOneof("message") or "an empty message"


def parse_start(message: upload_pb2.UploadMessage | None) -> StartRequest:
    """Validate the first message of an Upload stream.

    Args:
        message: the first message, or ``None`` if the stream ended before sending one.

    Returns:
        The start request.

    Raises:
        InvalidArgumentError: it is not a ``StartUpload``; ``total_size`` is negative; the
            ``upload_id`` is not one the server could have issued (32 lowercase hex).
    """
    kind = _kind(message)
    if kind != "start":
        raise InvalidArgumentError(f"the first upload message must be start, got {kind}")
    assert message is not None
    start = message.start
    if start.total_size < 0:
        raise InvalidArgumentError("total_size must not be negative")
    if start.upload_id and _UPLOAD_ID.fullmatch(start.upload_id) is None:
        raise InvalidArgumentError("an upload id is 32 lowercase hex characters")
    return StartRequest(start.total_size, dict(start.attributes), start.upload_id)


@attrs.define
class UploadSession:
    """The pure state of one Upload stream: validation, write batching and ack contents.

    It performs no I/O: the driver writes each batch returned by :meth:`on_chunk`,
    :meth:`on_complete` or :meth:`on_end` durably (in order, at offset :attr:`durable`) and
    reports the new durable count with :meth:`wrote`.

    Args:
        upload_id: the server-issued upload id.
        total_size: the exact size of the blob.
        durable: bytes already held durably (when resuming).
        batch_bytes: the most bytes held only in memory (1 B to 4 MiB).

    Raises:
        ValueError: ``batch_bytes`` out of range, or ``durable`` outside ``[0, total_size]``.
    """

    upload_id: str
    total_size: int
    durable: int = 0
    batch_bytes: int = attrs.field(default=DEFAULT_BATCH_BYTES, kw_only=True)
    phase: SessionPhase = attrs.field(default=SessionPhase.RECEIVING, init=False)
    _pending: bytearray = attrs.field(factory=bytearray, init=False, repr=False)
    _in_flight: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"batch_bytes must be 1..{MAX_BATCH_BYTES}")
        if not 0 <= self.durable <= self.total_size:
            raise ValueError("durable must be within [0, total_size]")

    @property
    def received(self) -> int:
        """Bytes accepted so far (durable, being written, or pending in memory)."""
        return self.durable + self._in_flight + len(self._pending)

    @property
    def pending(self) -> int:
        """Bytes accepted but not yet handed out for writing."""
        return len(self._pending)

    def ack(self) -> upload_pb2.UploadAck:
        """An ack reporting the durable count."""
        return upload_pb2.UploadAck(upload_id=self.upload_id, received_bytes=self.durable)

    def _require(self, kind: str) -> None:
        if self.phase is not SessionPhase.RECEIVING:
            raise InvalidArgumentError(f"{kind} is out of order: the upload is {self.phase.value}")

    def _take(self) -> list[bytes]:
        batch = bytes(self._pending)
        self._pending.clear()
        self._in_flight += len(batch)
        return [batch] if batch else []

    def on_chunk(self, offset: int, data: bytes) -> list[bytes]:
        """Accept a chunk.

        Returns:
            The batches to write durably now, in order (each at most ``batch_bytes``); an ack
            follows each write.

        Raises:
            InvalidArgumentError: out of order, ``offset`` is not :attr:`received`, or the
                chunk would carry the upload past ``total_size``.
        """
        self._require("a chunk")
        received = self.received
        if offset != received:
            raise InvalidArgumentError(f"chunk offset {offset} is not the {received} bytes received")
        if received + len(data) > self.total_size:
            raise InvalidArgumentError(
                f"{received + len(data)} bytes would exceed total_size {self.total_size}"
            )
        batches: list[bytes] = []
        if self._pending and len(self._pending) + len(data) > self.batch_bytes:
            batches += self._take()
        view = memoryview(data)
        while len(view) >= self.batch_bytes:
            batches.append(bytes(view[: self.batch_bytes]))
            self._in_flight += self.batch_bytes
            view = view[self.batch_bytes :]
        self._pending += view
        if self.received == self.total_size:
            batches += self._take()
        return batches

    def wrote(self, durable: int) -> None:
        """Record that a batch handed out was written; ``durable`` is storage's new count.

        Raises:
            RuntimeError: ``durable`` does not match the bytes handed out (a storage bug).
        """
        written = durable - self.durable
        if written <= 0 or written > self._in_flight:
            raise RuntimeError(f"storage reported {durable} durable bytes; expected more")
        self._in_flight -= written
        self.durable = durable

    def on_complete(self, expected_hash: bytes) -> list[bytes]:
        """Accept ``CompleteUpload``; the session is DONE afterwards.

        Returns:
            What is left to write durably before storage completes the upload.

        Raises:
            InvalidArgumentError: out of order, fewer than ``total_size`` bytes received, or an
                ``expected_hash`` that is neither empty nor 32 bytes.
        """
        self._require("complete")
        if self.received != self.total_size:
            raise InvalidArgumentError(
                f"complete after {self.received} of {self.total_size} bytes"
            )
        if expected_hash and len(expected_hash) != _HASH_BYTES:
            raise InvalidArgumentError("expected_hash is a raw 32-byte SHA-256 or empty")
        self.phase = SessionPhase.DONE
        return self._take()

    def on_message(self, kind: str) -> None:
        """Reject a message that is neither a chunk nor complete (a second start, an empty one).

        Raises:
            InvalidArgumentError: always.
        """
        raise InvalidArgumentError(f"{kind} is out of order: the upload is {self.phase.value}")

    def on_end(self) -> list[bytes]:
        """The client ended its stream without ``complete``; the session is ENDED afterwards.

        Returns:
            What is left to write durably (the upload stays resumable from there).

        Raises:
            InvalidArgumentError: out of order (after complete).
        """
        self._require("end of stream")
        self.phase = SessionPhase.ENDED
        return self._take()


#: Seconds a resume waits for a superseded stream to finish its in-flight durable write.
_TAKEOVER_WAIT = 30.0


@attrs.define(eq=False)
class _Writer:
    """One Upload call while it owns an upload id."""

    context: CallContext
    key: tuple[str, str] | None = None
    done: trio.Event = attrs.field(factory=trio.Event)


class UploadService(UploadServiceServicer):
    """The UploadService handler (see the module docstring for the protocol it keeps).

    Args:
        ctx: the shared service context; ``ctx.upload_slots`` bounds concurrent uploads.
        batch_bytes: bytes accepted before a durable write and an ack (1 B to 4 MiB).
        idle_timeout: seconds to wait for each message before the call ends with
            DEADLINE_EXCEEDED (positive; ``math.inf`` waits forever).

    Raises:
        ValueError: ``batch_bytes`` out of range, or ``idle_timeout`` not positive.
    """

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        if not 1 <= batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"batch_bytes must be 1..{MAX_BATCH_BYTES}")
        if not idle_timeout > 0:
            raise ValueError("idle_timeout must be positive")
        self._ctx = ctx
        self._batch_bytes = batch_bytes
        self._idle_timeout = idle_timeout
        # (tenant, upload_id) -> the stream currently writing that upload.
        self._writers: dict[tuple[str, str], _Writer] = {}

    async def Upload(  # noqa: N802 - gRPC method name
        self, messages: AsyncIterable[upload_pb2.UploadMessage], request: CallContext
    ) -> AsyncIterator[upload_pb2.UploadAck]:
        """Run one upload stream: start (or resume), chunks, complete.

        Yields:
            The start ack, an ack after every durable write, and the completion ack.

        Raises:
            UnauthenticatedError; InvalidArgumentError (messages out of order, offset or size
            mismatch, total_size differing on resume, bad or mismatching hash);
            PermissionDeniedError (no ``write:blob:*``); NotFoundError (unknown or expired
            upload id); ``purerpc.ResourceExhaustedError`` (no upload slot free);
            ObjectTooLargeError, QuotaExceededError, StorageFullError (RESOURCE_EXHAUSTED);
            UploadIdleError (DEADLINE_EXCEEDED: no message within the idle timeout).
        """
        who = principal(self._ctx, request)
        messages = _IdleBounded(aiter(messages), self._idle_timeout)
        start = parse_start(await anext(messages, None))
        who.require_operation("Upload")
        slots = self._ctx.upload_slots
        holder = object()
        try:
            slots.acquire_on_behalf_of_nowait(holder)
        except trio.WouldBlock:
            raise purerpc.ResourceExhaustedError(
                f"too many concurrent uploads (limit {slots.total_tokens}); retry later"
            ) from None
        me = _Writer(request)
        try:
            if start.upload_id:
                await self._take_over((who.tenant, start.upload_id), me)
            async with contextlib.aclosing(self._run(who.tenant, start, messages)) as acks:
                async for ack in acks:
                    if me.key is None:
                        self._writers.setdefault((who.tenant, ack.upload_id), me)
                        me.key = (who.tenant, ack.upload_id)
                    yield ack
        finally:
            if me.key is not None and self._writers.get(me.key) is me:
                del self._writers[me.key]
            me.done.set()
            slots.release_on_behalf_of(holder)

    # Every wait for a message is bounded by ``idle_timeout`` (upload_idle_timeout), which
    # answers DEADLINE_EXCEEDED as API.md says; the edge's stall timer leaves those waits alone.
    Upload.bounds_own_idle_time = True

    async def _take_over(self, key: tuple[str, str], me: "_Writer") -> None:
        """Make ``me`` the only stream writing upload ``key``: a stream still writing it (its
        client dropped the connection and resumed before the server noticed) is ended with
        ABORTED and waited for, so the resume acks exactly the bytes that are durable and no
        two streams ever append to one upload."""
        for _ in range(8):
            old = self._writers.get(key)
            if old is None or old is me:
                break
            old.context.abort(
                purerpc.StatusCode.ABORTED,
                f"upload {key[1]} was resumed by another stream; this one is superseded",
            )
            with trio.move_on_after(_TAKEOVER_WAIT):
                await old.done.wait()
            if self._writers.get(key) is old:
                del self._writers[key]  # it did not finish in time; later appends fail on offset
        self._writers[key] = me
        me.key = key

    async def _run(
        self,
        tenant: str,
        start: StartRequest,
        messages: AsyncIterable[upload_pb2.UploadMessage],
    ) -> AsyncIterator[upload_pb2.UploadAck]:
        storage = self._ctx.storage
        state = await call_storage(
            self._ctx,
            storage.start_upload,
            tenant,
            start.total_size,
            start.attributes,
            start.upload_id or None,
        )
        session = UploadSession(
            state.upload_id, start.total_size, state.received, batch_bytes=self._batch_bytes
        )
        yield session.ack()

        async def write(batches: list[bytes]) -> None:
            for batch in batches:
                durable = await storage.append_upload(
                    tenant, session.upload_id, session.durable, batch
                )
                session.wrote(durable)

        try:
            async for message in messages:
                kind = _kind(message)
                if kind == "chunk":
                    for batch in session.on_chunk(message.chunk.offset, message.chunk.data):
                        await write([batch])
                        yield session.ack()
                elif kind == "complete":
                    expected = message.complete.expected_hash
                    await write(session.on_complete(expected))
                    done = await storage.complete_upload(
                        tenant, session.upload_id, expected or None
                    )
                    yield upload_pb2.UploadAck(
                        upload_id=session.upload_id,
                        received_bytes=done.size,
                        complete=upload_pb2.UploadComplete(
                            key=done.key.encode("ascii"),
                            size=done.size,
                            deduplicated=done.deduplicated,
                        ),
                    )
                    return
                else:
                    session.on_message(kind)
        except UploadIdleError as idle:
            # Keep what was accepted (as at an end of stream), then end the call; no ack: a
            # silent client may not be reading, and the status carries the count instead.
            await write(session.on_end())
            raise UploadIdleError(
                idle.idle_timeout,
                f"upload {session.upload_id} holds {session.durable} bytes; resume it",
            ) from None
        await write(session.on_end())
        yield session.ack()
