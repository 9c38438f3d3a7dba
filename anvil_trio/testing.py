"""Test helpers: a real anvil_trio server in-process, on a free port of 127.0.0.1.

::

    async with open_test_server(tmp_path) as ts:
        await ts.buckets.CreateBucket(bucket_pb2.CreateBucketRequest(bucket_name="b"),
                                      metadata=ts.metadata)

or, in pytest (pytest-trio), with the ``anvil_server`` fixture (import it into the test module
or a ``conftest.py``: ``from anvil_trio.testing import anvil_server``).

Invariants:

* The server is the real one (:class:`~anvil_trio.Server` running ``serve``'s code): real
  SQLite and fsynced files under a temporary data dir (or, inside :func:`backend_overrides`,
  whatever backends it names, e.g. a real PostgreSQL and S3 store), real sockets, the real auth
  service. The only test-specific choices are the address (``127.0.0.1``, port 0), a short
  drain grace (1 s) and cheap scrypt parameters for the secrets of the apps it creates.
* The default token is obtained through ``AuthService.GetAccessToken`` over the wire, like any
  client would; apps and tenants are created through the storage façade, like the admin CLI.
* Leaving the context drains the server and stops storage; a server that failed meanwhile
  makes leaving raise :class:`~anvil_trio.StorageFailedError`.
"""

from __future__ import annotations

import contextlib
import itertools
import pathlib
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import purerpc
import trio
from purerpc import Status, StatusCode
from purerpc.grpclib.exceptions import RpcFailedError

from ._config import Config
from ._proto.anvil.v1 import (
    auth_grpc,
    auth_pb2,
    blob_grpc,
    bucket_grpc,
    object_grpc,
    object_pb2,
    upload_grpc,
)
from ._proto.grpc.health.v1 import health_grpc
from ._server import Server
from .auth import ScryptParams, generate_client_id, generate_client_secret, hash_secret
from .storage import AlreadyExistsError, Storage

__all__ = [
    "TEST_SCRYPT",
    "TestServer",
    "anvil_server",
    "backend_overrides",
    "bearer",
    "code_of",
    "config_for_tests",
    "open_test_server",
    "put_messages",
    "rpc_error",
    "status_of",
]

#: Cheap scrypt parameters for the secrets of test apps (verification reads them from the hash).
TEST_SCRYPT = ScryptParams(n=2**10, r=8, p=1)

#: Drain grace of test servers (seconds); override with ``config_overrides``.
TEST_GRACE_PERIOD = 1.0


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``authorization: Bearer <token>``."""
    return (("authorization", f"Bearer {token}"),)


def rpc_error(exc: BaseException) -> RpcFailedError:
    """The purerpc status error inside what a purerpc client call raised (possibly grouped).

    Raises:
        LookupError: there is none (``exc`` is something else).
    """
    if isinstance(exc, RpcFailedError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            with contextlib.suppress(LookupError):
                return rpc_error(inner)
    raise LookupError(repr(exc))


async def status_of(call: Awaitable[Any]) -> Status:
    """Await a purerpc client call and return its status (``OK`` when it succeeded).

    Raises:
        Whatever the call raised that carries no gRPC status.
    """
    try:
        await call
    except BaseException as exc:  # noqa: BLE001 - sorted out by rpc_error
        try:
            return rpc_error(exc).status
        except LookupError:
            raise exc from None
    return Status(StatusCode.OK)


async def code_of(call: Awaitable[Any]) -> StatusCode:
    """The status code :func:`status_of` ``(call)`` ends with."""
    return (await status_of(call)).status_code


def put_messages(
    bucket: str, key: str, data: bytes = b"", *, chunk_size: int = 64 * 1024, **metadata: Any
) -> AsyncIterator[object_pb2.PutObjectRequest]:
    """A PutObject request stream: ``ObjectMetadata(bucket, key, **metadata)``, then ``data``
    in chunks of ``chunk_size`` bytes."""

    async def messages() -> AsyncIterator[object_pb2.PutObjectRequest]:
        yield object_pb2.PutObjectRequest(
            metadata=object_pb2.ObjectMetadata(bucket_name=bucket, object_key=key, **metadata)
        )
        for offset in range(0, len(data), chunk_size):
            yield object_pb2.PutObjectRequest(chunk=data[offset:offset + chunk_size])

    return messages()


@attrs.define(eq=False)
class TestServer:
    """A running test server and a client connection to it.

    Attributes:
        server: the running :class:`~anvil_trio.Server`.
        config: its configuration.
        port: the port it listens on (on ``127.0.0.1``).
        address: ``(host, port)``.
        storage: its storage façade (for setup and for looking behind the wire).
        tenant: the default tenant.
        client_id, client_secret: the default app's credentials (granted ``scopes``).
        token: an access token for the default app (all its scopes).
        metadata: call metadata carrying ``token``.
        channel: an open purerpc channel to the server.
        objects, buckets, blobs, uploads, auth, health: purerpc stubs on ``channel``.
    """

    __test__ = False  # not a pytest test class

    server: Server
    config: Config
    port: int
    storage: Storage
    tenant: str
    channel: Any
    client_id: str = ""
    client_secret: str = attrs.field(default="", repr=False)
    token: str = attrs.field(default="", repr=False)
    objects: object_grpc.ObjectServiceStub = attrs.field(init=False)
    buckets: bucket_grpc.BucketServiceStub = attrs.field(init=False)
    blobs: blob_grpc.BlobServiceStub = attrs.field(init=False)
    uploads: upload_grpc.UploadServiceStub = attrs.field(init=False)
    auth: auth_grpc.AuthServiceStub = attrs.field(init=False)
    health: health_grpc.HealthStub = attrs.field(init=False)
    _names: Any = attrs.field(factory=itertools.count, init=False)

    def __attrs_post_init__(self) -> None:
        self.objects = object_grpc.ObjectServiceStub(self.channel)
        self.buckets = bucket_grpc.BucketServiceStub(self.channel)
        self.blobs = blob_grpc.BlobServiceStub(self.channel)
        self.uploads = upload_grpc.UploadServiceStub(self.channel)
        self.auth = auth_grpc.AuthServiceStub(self.channel)
        self.health = health_grpc.HealthStub(self.channel)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the server."""
        return (self.config.host, self.port)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the default token."""
        return bearer(self.token)

    async def make_tenant(self, name: str, *, quota_bytes: int | None = None) -> None:
        """Create a tenant (an existing one is left as it is, its quota set if given)."""
        try:
            await self.storage.create_tenant(name, quota_bytes)
        except AlreadyExistsError:
            if quota_bytes is not None:
                await self.storage.set_tenant_quota(name, quota_bytes)

    async def make_app(
        self, scopes: Sequence[str], *, tenant: str | None = None
    ) -> tuple[str, str]:
        """Register an app granted ``scopes`` (creating its tenant if needed).

        Args:
            scopes: the scope strings to grant (may be empty).
            tenant: its tenant; default the server's default tenant.

        Returns:
            ``(client_id, client_secret)``.
        """
        tenant = self.tenant if tenant is None else tenant
        await self.make_tenant(tenant)
        client_id, secret = generate_client_id(), generate_client_secret()
        secret_hash = await trio.to_thread.run_sync(
            lambda: hash_secret(secret, params=TEST_SCRYPT)
        )
        await self.storage.create_app(tenant, f"app-{next(self._names)}", client_id, secret_hash)
        if scopes:
            await self.storage.grant_scopes(client_id, list(scopes))
        return client_id, secret

    async def get_token(
        self, client_id: str, client_secret: str, scopes: Sequence[str] = ()
    ) -> auth_pb2.GetAccessTokenResponse:
        """Call ``GetAccessToken`` over the wire (raises purerpc's status errors)."""
        return await self.auth.GetAccessToken(
            auth_pb2.GetAccessTokenRequest(
                client_id=client_id, client_secret=client_secret, scopes=list(scopes)
            )
        )

    async def token_for(self, scopes: Sequence[str], *, tenant: str | None = None) -> str:
        """A token of a new app granted ``scopes`` (in ``tenant``), obtained over the wire."""
        client_id, secret = await self.make_app(scopes, tenant=tenant)
        return (await self.get_token(client_id, secret)).access_token

    async def metadata_for(
        self, scopes: Sequence[str], *, tenant: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying :meth:`token_for` ``(scopes, tenant=tenant)``."""
        return bearer(await self.token_for(scopes, tenant=tenant))

    async def put(
        self, bucket: str, key: str, data: bytes = b"", *,
        metadata: Sequence[tuple[str, str]] | None = None, chunk_size: int = 64 * 1024,
        **fields: Any,
    ) -> object_pb2.PutObjectResponse:
        """``PutObject`` of ``data`` (``fields`` go into ``ObjectMetadata``), with the default
        token unless ``metadata`` is given."""
        return await self.objects.PutObject(
            put_messages(bucket, key, data, chunk_size=chunk_size, **fields),
            metadata=self.metadata if metadata is None else metadata,
        )

    async def get(
        self, bucket: str, key: str, *, metadata: Sequence[tuple[str, str]] | None = None,
        **fields: Any,
    ) -> tuple[object_pb2.ObjectInfo, bytes, list[int]]:
        """``GetObject`` (``fields`` go into the request, e.g. ``range=ByteRange(...)``).

        Returns:
            The info message, the bytes, and the size of each chunk message.
        """
        request = object_pb2.GetObjectRequest(bucket_name=bucket, object_key=key, **fields)
        info = None
        chunks: list[bytes] = []
        async for reply in self.objects.GetObject(
            request, metadata=self.metadata if metadata is None else metadata
        ):
            if reply.WhichOneof("data") == "info":
                assert info is None and not chunks, "info must come first, once"
                info = reply.info
            else:
                assert info is not None, "a chunk came before the info"
                chunks.append(reply.chunk)
        assert info is not None, "no info message"
        return info, b"".join(chunks), [len(c) for c in chunks]

    @contextlib.asynccontextmanager
    async def open_channel(self) -> AsyncIterator[Any]:
        """Another purerpc channel (connection) to the server."""
        async with purerpc.insecure_channel(self.config.host, self.port) as channel:
            yield channel


_BACKEND_OVERRIDES: dict[str, Any] = {}


@contextlib.contextmanager
def backend_overrides(values: Mapping[str, Any]) -> Iterator[None]:
    """Inside, every :func:`config_for_tests` starts from ``values`` too (e.g.
    ``{"metadata_url": ..., "blob_url": ..., "s3_endpoint": ...}``), so a whole suite runs
    against another backend; the previous values are put back on leaving."""
    saved = dict(_BACKEND_OVERRIDES)
    _BACKEND_OVERRIDES.clear()
    _BACKEND_OVERRIDES.update(values)
    try:
        yield
    finally:
        _BACKEND_OVERRIDES.clear()
        _BACKEND_OVERRIDES.update(saved)


def config_for_tests(tmp_path: str | pathlib.Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """The configuration of a test server: data under ``tmp_path/anvil-data``, 127.0.0.1,
    port 0, a 1 s drain grace, a 1 MiB disk ballast (test suites start many servers), the
    backends of :func:`backend_overrides`; ``overrides`` (Config field names) win."""
    values: dict[str, Any] = {
        "data_dir": pathlib.Path(tmp_path) / "anvil-data",
        "host": "127.0.0.1",
        "port": 0,
        "grace_period": TEST_GRACE_PERIOD,
        "ballast_bytes": 1 << 20,
    }
    values.update(_BACKEND_OVERRIDES)
    values.update(overrides or {})
    return Config(**values)



@contextlib.asynccontextmanager
async def open_test_server(
    tmp_path: str | pathlib.Path,
    scopes: Sequence[str] = ("*:*",),
    *,
    tenant: str = "t1",
    config_overrides: Mapping[str, Any] | None = None,
) -> AsyncIterator[TestServer]:
    """Run a real server on 127.0.0.1 (free port) with one tenant, one app and its token.

    Args:
        tmp_path: a fresh directory (pytest's ``tmp_path``); data goes under ``anvil-data``.
        scopes: granted to the default app; its token carries all of them (with no scopes
            there is no default token: ``token`` is empty).
        tenant: the default tenant's name.
        config_overrides: :class:`~anvil_trio.Config` fields to set (e.g.
            ``{"max_object_bytes": 1024}``).

    Yields:
        The :class:`TestServer`, with an open channel and stubs.

    Raises:
        StorageFailedError: on leaving, if storage failed while the server ran.
    """
    config = config_for_tests(tmp_path, config_overrides)
    server = Server(config)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        try:
            assert server.storage is not None
            async with purerpc.insecure_channel(config.host, port) as channel:
                ts = TestServer(
                    server=server, config=config, port=port, storage=server.storage,
                    tenant=tenant, channel=channel,
                )
                await ts.make_tenant(tenant)
                ts.client_id, ts.client_secret = await ts.make_app(scopes)
                if scopes:
                    reply = await ts.get_token(ts.client_id, ts.client_secret)
                    ts.token = reply.access_token
                yield ts
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is a test dependency only
    pass
else:

    @pytest.fixture
    async def anvil_server(tmp_path: pathlib.Path) -> AsyncIterator[TestServer]:
        """A running test server (tenant ``t1``, an app granted ``*:*`` and its token)."""
        async with open_test_server(tmp_path) as ts:
            yield ts
