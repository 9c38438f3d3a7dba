"""``AnvilClient``: a Trio client for every anvil_trio RPC, with tokens, retries and resumption.

Invariants:
- The client owns a nursery (``async with AnvilClient.connect(...)``) that runs at most one
  accepting :class:`~._client_wire.Connection` at a time; a broken or GOAWAY'd connection is
  replaced on the next call, and one that no longer accepts is closed when its last call ends.
- Every RPC carries ``authorization: Bearer <token>``. The token is fetched at connect and again
  once ``refresh_fraction`` of its lifetime has passed on the client's clock; a call answered
  UNAUTHENTICATED fetches a new token and is tried once more.
- A call is retried under ``retry_schedule`` only for UNAVAILABLE, DEADLINE_EXCEEDED and
  RESOURCE_EXHAUSTED, and only when its request can be sent again: always for unary calls and
  for sources given as ``bytes`` or a path; for an async-iterable source only while nothing has
  been read from it yet.
- Downloads (``get_object``/``get_blob``) that break mid-stream with a retryable status resume
  from the next byte (pinned to the version being read); uploads resume from the bytes the
  server acknowledged, under the same ``upload_id``.
- Callers see exactly one exception per failure: an :class:`AnvilError` subclass for statuses,
  or their own source's exception; never an exception group from the client's tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from ._client_blobs import BlobMethods, byte_range
from ._client_sources import Source, SourceConsumedError, open_source
from ._client_streams import ByteStream, collapse, replay_guard, with_sender
from ._client_types import (
    Bucket,
    ChecksumMismatchError,
    ClientClosedError,
    DeleteResult,
    InternalError,
    ObjectInfo,
    ObjectPage,
    ObjectVersion,
    PutResult,
    UnauthenticatedError,
    VersionPage,
)
from ._client_wire import Call, Connection, is_transient
from ._effects import retry
from ._proto.anvil.v1 import auth_pb2, bucket_pb2, object_pb2
from ._proto.grpc.health.v1 import health_pb2
from ._schedule import Schedule

__all__ = ["AnvilClient", "ByteStream", "default_retry_schedule"]

MiB = 1 << 20
#: Data per request message: far below the server's 4 MiB message limit.
DEFAULT_CHUNK_SIZE = MiB

_AUTH = "anvil.v1.AuthService"
_BUCKETS = "anvil.v1.BucketService"
_OBJECTS = "anvil.v1.ObjectService"
_HEALTH = "grpc.health.v1.Health"


def default_retry_schedule() -> Schedule:
    """Exponential backoff with jitter, capped, at most 6 retries.

    The k-th retry (k = 1..6) waits ``min(0.1 * 2**(k-1), 3.0) * u`` seconds, ``u`` uniform in
    ``[0.8, 1.2)``: about 0.1, 0.2, 0.4, 0.8, 1.6, 3.0 s (6.1 s in all).
    """
    capped = Schedule.exponential(0.1).modify_delay(lambda _out, delay: min(delay, 3.0))
    return capped.jittered(0.8, 1.2) & Schedule.recurs(6)


@attrs.define
class _Token:
    value: str = ""
    refresh_at: float = -math.inf
    scopes: tuple[str, ...] = ()


class AnvilClient(BlobMethods):
    """A connection to an anvil_trio server. Build it with :meth:`connect`.

    All methods are safe to call from several tasks at once; calls share one HTTP/2 connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        client_secret: str,
        scopes: tuple[str, ...] | list[str] = (),
        ssl_context=None,
        retry_schedule: Schedule | None = None,
        clock: Callable[[], float] | None = None,
        refresh_fraction: float = 0.8,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_message_bytes: int = 32 * MiB,
        nursery: trio.Nursery,
    ) -> None:
        if not 0 < chunk_size <= 4 * MiB - 1024:
            raise ValueError(f"chunk_size must be in 1..{4 * MiB - 1024}, got {chunk_size}")
        if not 0 < refresh_fraction <= 1:
            raise ValueError(f"refresh_fraction must be in (0, 1], got {refresh_fraction}")
        self.host = host
        self.port = port
        self._client_id = client_id
        self._client_secret = client_secret
        self._scopes = tuple(scopes)
        self._ssl_context = ssl_context
        self.retry_schedule = retry_schedule if retry_schedule is not None else default_retry_schedule()
        self._clock = clock if clock is not None else trio.current_time
        self._refresh_fraction = refresh_fraction
        self.chunk_size = chunk_size
        self._max_message_bytes = max_message_bytes
        self._nursery = nursery
        self._connection: Connection | None = None
        self._dial_lock = trio.Lock()
        self._token = _Token()
        self._token_lock = trio.Lock()
        self._closed = False
        #: How many tokens this client has fetched (for monitoring and tests).
        self.tokens_fetched = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        client_secret: str,
        scopes: tuple[str, ...] | list[str] = (),
        ssl_context=None,
        retry_schedule: Schedule | None = None,
        clock: Callable[[], float] | None = None,
        refresh_fraction: float = 0.8,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator["AnvilClient"]:
        """Connect, fetch a token, and yield the client; close everything on exit.

        Args:
            host, port: the server address.
            client_id, client_secret: the app's credentials.
            scopes: scopes to request (empty: everything the app was granted).
            ssl_context: a TLS client context (e.g. ``ssl.create_default_context(cafile=...)``;
                ALPN ``h2`` is set on it), or ``None`` for plaintext.
            retry_schedule: when to retry transient failures (default
                :func:`default_retry_schedule`); its input is the exception.
            clock: seconds, used only to decide when to refresh the token (default
                ``trio.current_time``).
            refresh_fraction: refresh the token after this fraction of its lifetime.
            chunk_size: bytes per request message when streaming (at most ~4 MiB).

        Raises:
            UnauthenticatedError: wrong credentials.
            PermissionDeniedError: none of the requested scopes is granted.
            UnavailableError: the server could not be reached (after retries).
        """
        try:
            async with trio.open_nursery() as nursery:
                client = cls(
                    host, port, client_id=client_id, client_secret=client_secret, scopes=scopes,
                    ssl_context=ssl_context, retry_schedule=retry_schedule, clock=clock,
                    refresh_fraction=refresh_fraction, chunk_size=chunk_size, nursery=nursery,
                )
                try:
                    await client.refresh_token()
                    yield client
                finally:
                    client._close()
        except BaseExceptionGroup as group:
            raise collapse(group) from None

    def _close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()

    async def _connect(self) -> Connection:
        if self._closed:
            raise ClientClosedError("the client is closed")
        current = self._connection
        if current is not None and current.accepting:
            return current
        async with self._dial_lock:
            current = self._connection
            if current is not None and current.accepting:
                return current
            if current is not None:
                current.close_if_idle()
            connection = Connection(
                self.host, self.port, ssl_context=self._ssl_context,
                max_message_bytes=self._max_message_bytes,
            )
            await self._nursery.start(connection.run)
            self._connection = connection
            return connection

    # ------------------------------------------------------------------ plumbing

    async def _start(self, service: str, method: str, request_type, response_type, metadata) -> Call:
        connection = await self._connect()
        return await connection.start_call(service, method, request_type, response_type, metadata)

    async def _unary_once(self, service, method, request, response_type, metadata):
        call = await self._start(service, method, type(request), response_type, metadata)
        async with call:
            await call.send(request)
            await call.done_sending()
            return await call.receive_one()

    async def _authorized(self, op: Callable[[tuple], Awaitable[Any]]) -> Any:
        """Run ``op(metadata)`` with the current token; on UNAUTHENTICATED, refresh once."""
        token = await self._current_token()
        try:
            return await op((("authorization", f"Bearer {token}"),))
        except UnauthenticatedError as rejected:
            if self._token.value == token:
                self._token.refresh_at = -math.inf
            token = await self._current_token()
            try:
                return await op((("authorization", f"Bearer {token}"),))
            except SourceConsumedError:
                raise rejected from None  # an async-iterable source cannot be sent twice

    async def _retrying(self, op: Callable[[tuple], Awaitable[Any]], *, on=is_transient) -> Any:
        return await retry(self.retry_schedule, self._authorized, op, on=on)

    async def _unary(self, service: str, method: str, request, response_type) -> Any:
        async def op(metadata):
            return await self._unary_once(service, method, request, response_type, metadata)

        return await self._retrying(op)

    # ------------------------------------------------------------------ tokens

    @property
    def token(self) -> str:
        """The current access token ("" before the first fetch)."""
        return self._token.value

    @property
    def granted_scopes(self) -> tuple[str, ...]:
        """The scopes the current token carries."""
        return self._token.scopes

    async def refresh_token(self) -> str:
        """Fetch a new access token now (with retries) and return it.

        Raises:
            UnauthenticatedError, PermissionDeniedError, InvalidArgumentError: as the server says.
        """
        async with self._token_lock:
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        request = auth_pb2.GetAccessTokenRequest(
            client_id=self._client_id, client_secret=self._client_secret, scopes=self._scopes
        )
        reply = await retry(
            self.retry_schedule, self._unary_once, _AUTH, "GetAccessToken", request,
            auth_pb2.GetAccessTokenResponse, (), on=is_transient,
        )
        lifetime = max(float(reply.expires_in), 0.0)
        self._token = _Token(
            value=reply.access_token,
            refresh_at=self._clock() + self._refresh_fraction * lifetime,
            scopes=tuple(reply.scopes),
        )
        self.tokens_fetched += 1
        return reply.access_token

    def _fresh(self) -> bool:
        return bool(self._token.value) and self._clock() < self._token.refresh_at

    async def _current_token(self) -> str:
        if self._fresh():
            return self._token.value
        async with self._token_lock:
            if self._fresh():
                return self._token.value
            return await self._fetch_token()

    # ------------------------------------------------------------------ health

    async def health_check(self, service: str = "") -> str:
        """``grpc.health.v1.Health/Check``: ``"SERVING"``, ``"NOT_SERVING"``, ...

        Raises:
            UnavailableError: the server cannot be reached (after retries).
        """
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await retry(
            self.retry_schedule, self._unary_once, _HEALTH, "Check", request,
            health_pb2.HealthCheckResponse, (), on=is_transient,
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ------------------------------------------------------------------ buckets

    async def create_bucket(self, name: str, *, versioning: bool = False) -> Bucket:
        """Create a bucket.

        Raises:
            AlreadyExistsError, InvalidArgumentError, PermissionDeniedError: as the server says.
        """
        request = bucket_pb2.CreateBucketRequest(bucket_name=name, versioning=versioning)
        return Bucket.from_pb(await self._unary(_BUCKETS, "CreateBucket", request, bucket_pb2.Bucket))

    async def delete_bucket(self, name: str) -> None:
        """Delete an empty bucket.

        Raises:
            FailedPreconditionError: it still holds objects. NotFoundError: no such bucket.
        """
        request = bucket_pb2.DeleteBucketRequest(bucket_name=name)
        await self._unary(_BUCKETS, "DeleteBucket", request, bucket_pb2.DeleteBucketResponse)

    async def list_buckets(self) -> list[Bucket]:
        """The buckets the token may list."""
        reply = await self._unary(
            _BUCKETS, "ListBuckets", bucket_pb2.ListBucketsRequest(), bucket_pb2.ListBucketsResponse
        )
        return [Bucket.from_pb(b) for b in reply.buckets]

    # ------------------------------------------------------------------ objects

    async def put_object(
        self,
        bucket: str,
        key: str,
        source: Source,
        *,
        content_type: str = "",
        user_metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        expected_sha256: str = "",
        size: int | None = None,
    ) -> PutResult:
        """Store an object, streaming ``source`` in chunks of ``chunk_size`` bytes.

        Args:
            source: ``bytes``-like, a path (``str``/``os.PathLike``) or an async iterable of
                bytes. Only bytes and paths are retried after a transient failure once sending
                has begun (they can be read again); an async iterable is retried only if the
                failure came before anything was read from it.
            content_type, user_metadata: stored with the object.
            if_none_match: fail with ALREADY_EXISTS if the key exists.
            expected_sha256: lowercase hex SHA-256 the server must see, or "".
            size: the exact size, sent as ``content_length`` (known anyway for bytes/paths).

        Raises:
            AnvilError: the server's status (e.g. ``AlreadyExistsError``,
                ``InvalidArgumentError`` on a checksum mismatch). Whatever an async-iterable
                source raises, as itself.
        """
        src = open_source(source, size=size, chunk_size=self.chunk_size)
        metadata = object_pb2.ObjectMetadata(
            bucket_name=bucket, object_key=key, content_type=content_type,
            user_metadata=dict(user_metadata or {}), expected_sha256=expected_sha256,
            if_none_match=if_none_match,
        )
        if src.size is not None:
            metadata.content_length = src.size

        async def op(call_metadata):
            call = await self._start(_OBJECTS, "PutObject", object_pb2.PutObjectRequest,
                                     object_pb2.PutObjectResponse, call_metadata)
            async with call:
                async def send() -> None:
                    if not await call.send(object_pb2.PutObjectRequest(metadata=metadata)):
                        return
                    async for chunk in src.chunks():
                        if not await call.send(object_pb2.PutObjectRequest(chunk=chunk)):
                            return
                    await call.done_sending()

                return await with_sender(send, call.receive_one)

        reply = await self._retrying(op, on=replay_guard(src))
        return PutResult(etag=reply.etag, version_id=reply.version_id, size=reply.size)

    async def get_object(
        self,
        bucket: str,
        key: str,
        *,
        version_id: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> tuple[ObjectInfo, "ByteStream"]:
        """Start reading an object (or the byte range ``[start, end)`` of it).

        Returns:
            ``(info, chunks)``: ``chunks`` is an async iterator of ``bytes``; read it to the end
            or close it (``async with chunks:`` or ``await chunks.aclose()``). A transient
            failure mid-stream resumes from the next byte of the same version.

        Raises:
            NotFoundError, OutOfRangeError, InvalidArgumentError, ...: as the server says.
        """

        async def open_at(offset: int | None, pinned: str | None):
            request = object_pb2.GetObjectRequest(bucket_name=bucket, object_key=key)
            if pinned:
                request.version_id = pinned
            rng = byte_range(offset, end)
            if rng is not None:
                request.range.CopyFrom(rng)

            async def op(metadata):
                call = await self._start(_OBJECTS, "GetObject", object_pb2.GetObjectRequest,
                                         object_pb2.GetObjectResponse, metadata)
                try:
                    await call.send(request)
                    await call.done_sending()
                    first = await call.receive()
                    if first is None or not first.HasField("info"):
                        raise InternalError("GetObject did not start with the object's info")
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await call.finish()
                    raise
                return call, ObjectInfo.from_pb(first.info)

            return await self._retrying(op)

        call, info = await open_at(start, version_id)
        first = start or 0
        stop = info.size if end is None else min(end, info.size)

        async def reopen(offset: int):
            if offset >= stop:
                return None
            call, _ = await open_at(offset, info.version_id)
            return call

        def data(message) -> bytes:
            if not message.HasField("chunk") and message.HasField("info"):
                raise InternalError("GetObject sent its info twice")
            return message.chunk

        return info, ByteStream(call, reopen, data, offset=first)

    async def read_object(self, bucket: str, key: str, *, version_id: str | None = None) -> bytes:
        """The whole object in memory (for small objects); see :meth:`get_object`."""
        _info, chunks = await self.get_object(bucket, key, version_id=version_id)
        async with chunks:
            return b"".join([chunk async for chunk in chunks])

    async def download_object(
        self, bucket: str, key: str, path: str | os.PathLike, *, version_id: str | None = None
    ) -> ObjectInfo:
        """Write an object to ``path`` (atomically: a temporary file, fsync, rename), checking
        that its SHA-256 equals the etag.

        Raises:
            ChecksumMismatchError: the bytes do not match the etag (nothing is left at ``path``).
            AnvilError: as the server says. OSError: the file cannot be written.
        """
        target = pathlib.Path(path)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
        info, chunks = await self.get_object(bucket, key, version_id=version_id)
        hasher = hashlib.sha256()
        try:
            async with chunks, await trio.open_file(temporary, "wb") as out:
                async for chunk in chunks:
                    hasher.update(chunk)
                    await out.write(chunk)
                await out.flush()
                await trio.to_thread.run_sync(os.fsync, out.fileno())
            if hasher.hexdigest() != info.etag:
                raise ChecksumMismatchError(
                    f"{bucket}/{key}: downloaded sha256 {hasher.hexdigest()} != etag {info.etag}"
                )
            await trio.Path(temporary).replace(target)
        except BaseException:
            with trio.CancelScope(shield=True):
                with contextlib.suppress(OSError):
                    await trio.Path(temporary).unlink()
            raise
        return info

    async def head_object(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo:
        """An object's metadata.

        Raises:
            NotFoundError: no such object or version.
        """
        request = object_pb2.HeadObjectRequest(bucket_name=bucket, object_key=key)
        if version_id is not None:
            request.version_id = version_id
        reply = await self._unary(_OBJECTS, "HeadObject", request, object_pb2.HeadObjectResponse)
        return ObjectInfo.from_pb(reply.info)

    async def delete_object(self, bucket: str, key: str, *, version_id: str | None = None) -> DeleteResult:
        """Delete an object (adds a delete marker in a versioned bucket) or one version."""
        request = object_pb2.DeleteObjectRequest(bucket_name=bucket, object_key=key)
        if version_id is not None:
            request.version_id = version_id
        reply = await self._unary(_OBJECTS, "DeleteObject", request, object_pb2.DeleteObjectResponse)
        return DeleteResult(version_id=reply.version_id, delete_marker=reply.delete_marker)

    async def list_objects(
        self, bucket: str, *, prefix: str = "", delimiter: str = "", max_keys: int = 0,
        page_token: str = "",
    ) -> ObjectPage:
        """One page of keys in ascending order (``max_keys`` 0 means the server's 1000)."""
        request = object_pb2.ListObjectsRequest(
            bucket_name=bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
            page_token=page_token,
        )
        reply = await self._unary(_OBJECTS, "ListObjects", request, object_pb2.ListObjectsResponse)
        return ObjectPage(
            objects=tuple(ObjectInfo.from_pb(o) for o in reply.objects),
            common_prefixes=tuple(reply.common_prefixes),
            next_page_token=reply.next_page_token,
        )

    async def iter_objects(
        self, bucket: str, *, prefix: str = "", delimiter: str = "", page_size: int = 0
    ) -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix``, following page tokens (common prefixes are skipped;
        use :meth:`list_objects` for them)."""
        token = ""
        while True:
            page = await self.list_objects(
                bucket, prefix=prefix, delimiter=delimiter, max_keys=page_size, page_token=token
            )
            for info in page.objects:
                yield info
            token = page.next_page_token
            if not token:
                return

    async def list_object_versions(
        self, bucket: str, *, prefix: str = "", max_keys: int = 0, page_token: str = ""
    ) -> VersionPage:
        """One page of versions and delete markers: keys ascending, newest first per key."""
        request = object_pb2.ListObjectVersionsRequest(
            bucket_name=bucket, prefix=prefix, max_keys=max_keys, page_token=page_token
        )
        reply = await self._unary(
            _OBJECTS, "ListObjectVersions", request, object_pb2.ListObjectVersionsResponse
        )
        versions = tuple(
            ObjectVersion(ObjectInfo.from_pb(v.info), v.is_latest, v.delete_marker)
            for v in reply.versions
        )
        return VersionPage(versions=versions, next_page_token=reply.next_page_token)

    async def iter_object_versions(
        self, bucket: str, *, prefix: str = "", page_size: int = 0
    ) -> AsyncIterator[ObjectVersion]:
        """Every version and delete marker under ``prefix``, following page tokens."""
        token = ""
        while True:
            page = await self.list_object_versions(
                bucket, prefix=prefix, max_keys=page_size, page_token=token
            )
            for version in page.versions:
                yield version
            token = page.next_page_token
            if not token:
                return
