"""The server (layer 6): storage, auth and the gRPC edge for one :class:`Config`, supervised.

``port = await nursery.start(anvil_trio.serve, config)`` embeds a whole server in any Trio
program; cancelling that task drains it and stops it.

Supervision (DESIGN.md)::

    Server.run()'s nursery
    ├── storage (run_storage: its supervisor, the metadata actor and the reaper) — shielded:
    │   stopped by the server, in order, only after the edge has drained
    └── edge nursery
        ├── EdgeServer.serve (purerpc servicers holding refs, never actors)
        └── key-file watcher (picks up keys the admin CLI rotated; on a Schedule)

Invariants:

* Start order: storage is ready (migrated, metadata actor started), then the JWT key ring is
  loaded, then the edge listens, then health turns ``SERVING``, then ``task_status.started(port)``.
  Nothing is served before storage is ready, so health never says ``SERVING`` too early.
* Stop order: the edge drains first (health ``NOT_SERVING``, new calls ``UNAVAILABLE``, running
  calls get ``grace_period`` seconds), then storage stops in order. Cancelling ``run``/``serve``
  does exactly this and then re-raises the cancellation; :meth:`Server.stop` does it and lets
  ``run`` return.
* A server must exit rather than serve wrong answers: if storage fails (its supervisor
  escalates) or stops while serving, the edge is drained at once (grace 0) and ``run`` raises
  :class:`StorageFailedError` chained to the cause. Nothing here hangs: every wait is bounded by
  the grace period or by the storage supervisor's own shutdown timeout.
* A key file that cannot be re-read while serving keeps the current keys (logged); a key file
  that cannot be read at start-up fails the start.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs
import trio

from ._config import Config
from ._schedule import Done, Schedule
from .actors import SupervisorEscalationError
from .auth import (
    KEY_FILE_NAME,
    Authenticator,
    KeyFileError,
    KeyFileMonitor,
    SharedKeyMonitor,
    KeyRing,
    SignInThrottle,
    load_or_create_keyring,
)
from .rpc import EdgeConfig, EdgeServer, HealthState, TLSConfig
from .rpc._auth_service import StorageAppStore
from .rpc._common import ServiceContext, bearer_authenticator
from .rpc._status import exception_leaves
from .rpc._services import build_servicers
from .storage import Storage, StorageConfig, StorageError, run_storage

__all__ = [
    "Server",
    "ServerError",
    "StorageFailedError",
    "edge_config",
    "serve",
    "storage_config",
]

log = logging.getLogger("anvil_trio.server")

#: Seconds storage gets to finish the metadata writes already queued when the server stops.
STORAGE_STOP_GRACE = 5.0


class ServerError(RuntimeError):
    """Base of the errors :func:`serve` raises itself."""


class StorageFailedError(ServerError):
    """Storage failed (or stopped) while the server was serving; the server stopped.

    ``__cause__`` is the storage supervisor's escalation (with the last crash as its cause),
    or ``None`` when storage returned without having been asked to stop.
    """


def storage_config(config: Config) -> StorageConfig:
    """The embedded storage's configuration derived from the server's.

    ``data_dir`` is shared; ``max_object_bytes`` (None: no limit), ``upload_expiry``,
    ``reaper_interval`` and ``direct_io`` carry over, and so do ``ballast_bytes`` and
    ``min_free_bytes``; blob files are always fsynced (this is a real server).
    """
    return StorageConfig(
        data_dir=config.data_dir,
        metadata_url=config.metadata_url,
        blob_url=config.blob_url,
        s3_endpoint=config.s3_endpoint,
        s3_region=config.s3_region,
        max_object_size=config.max_object_bytes,
        upload_ttl=config.upload_expiry,
        reaper_interval=config.reaper_interval,
        temp_max_age=config.temp_max_age,
        direct_io=config.direct_io,
        ballast_bytes=config.ballast_bytes,
        min_free_bytes=config.min_free_bytes,
        fsync=True,
    )


def edge_config(config: Config) -> EdgeConfig:
    """The gRPC edge's configuration derived from the server's.

    TLS is on when ``tls_cert``/``tls_key`` are set; with ``tls_client_ca`` clients must
    present a certificate that CA signed (mTLS).
    """
    tls = None
    if config.tls_cert is not None and config.tls_key is not None:
        tls = TLSConfig(
            certfile=config.tls_cert,
            keyfile=config.tls_key,
            client_ca_file=config.tls_client_ca,
            require_client_cert=config.tls_client_ca is not None,
        )
    return EdgeConfig(
        host=config.host,
        port=config.port,
        reuse_port=config.reuse_port,
        tls=tls,
        max_request_message_bytes=config.max_message_bytes,
        max_concurrent_calls=config.max_concurrent_calls,
        drain_grace=config.grace_period,
        preface_timeout=config.preface_timeout,
        idle_timeout=config.idle_timeout,
        keepalive_interval=config.keepalive_interval,
        keepalive_timeout=config.keepalive_timeout,
        max_connections=config.max_connections,
        max_header_list_bytes=config.max_header_list_bytes,
        stream_reset_rate=config.stream_reset_rate,
        control_frame_rate=config.control_frame_rate,
        connection_call_share=config.connection_call_share,
        health_call_slots=config.health_call_slots,
        stream_stall_timeout=config.stream_stall_timeout,
        dev_mode=config.dev_mode,
    )


@attrs.define(eq=False)
class Server:
    """One server for one :class:`Config`; :meth:`run` it once (see the module docstring).

    The attributes are filled in while :meth:`run` starts, for embedders and tests.

    Attributes:
        config: the configuration.
        health: the ``grpc.health.v1`` status this server reports.
        storage: the storage façade, once storage is ready.
        auth: the authenticator, once the key ring is loaded.
        edge: the gRPC edge, once built.
        port: the bound port, once listening.
    """

    config: Config
    health: HealthState = attrs.field(factory=HealthState, kw_only=True)
    storage: Storage | None = attrs.field(default=None, init=False)
    auth: Authenticator | None = attrs.field(default=None, init=False)
    edge: EdgeServer | None = attrs.field(default=None, init=False)
    port: int | None = attrs.field(default=None, init=False)
    _stopping: bool = attrs.field(default=False, init=False)
    _started: bool = attrs.field(default=False, init=False)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Start storage, auth and the edge; report the port; serve until stopped.

        Args:
            task_status: ``started(port)`` once listening and storage is ready.

        Raises:
            StorageFailedError: storage escalated or stopped while serving.
            StorageError: the data dir cannot be used (raised before ``started``).
            KeyFileError: the JWT key file cannot be read or created (before ``started``).
            OSError: the address cannot be bound (before ``started``).
            RuntimeError: ``run`` was called twice.
        """
        if self._started:
            raise RuntimeError("a Server runs once; build a new one")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                storage = await nursery.start(self._run_storage)
                try:
                    await self._serve(storage, task_status)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._shut_down(storage)
        except BaseExceptionGroup as group:
            # One failure (besides the cancellations it caused) is raised as itself.
            errors = [e for e in exception_leaves(group) if not isinstance(e, trio.Cancelled)]
            if len(errors) == 1:
                raise errors[0] from errors[0].__cause__
            raise

    async def stop(self) -> None:
        """Drain the edge and stop storage; :meth:`run` then returns. Safe to call any number of
        times; returns once the edge has drained (called during start-up, the server stops
        right after it started)."""
        self._stopping = True
        if self.edge is not None:
            await self.edge.drain()

    async def _run_storage(self, *, task_status: trio.TaskStatus[Storage]) -> None:
        cause: BaseException | None = None
        # Shielded: cancelling the server must not stop storage under calls still draining;
        # _shut_down stops it, in order, after the edge.
        with trio.CancelScope(shield=True):
            try:
                await run_storage(storage_config(self.config), task_status=task_status)
            except SupervisorEscalationError as exc:
                cause = exc
        if self._stopping and cause is None:
            return
        log.critical("storage failed while serving; the server stops", exc_info=cause)
        if self.edge is not None:
            with trio.CancelScope(shield=True):
                await self.edge.drain(grace=0)
        error = StorageFailedError("storage failed; the server stopped")
        raise error from cause

    async def _serve(self, storage: Storage, task_status: trio.TaskStatus[int]) -> None:
        config = self.config
        self.storage = storage
        keyring, monitor = await _load_keys(config, storage)
        auth = Authenticator(
            keyring,
            StorageAppStore(storage),
            issuer=config.jwt_issuer,
            token_lifetime=config.token_lifetime,
            leeway=config.token_leeway,
            hash_concurrency=config.token_hash_concurrency,
            hash_wait=config.token_hash_wait,
            throttle=SignInThrottle.from_settings(
                base=config.token_backoff_base,
                cap=config.token_backoff_max,
                free=config.token_free_failures,
                peer_free=config.token_peer_free_failures,
                max_keys=config.token_failures_tracked,
                forget_after=config.token_failures_forget,
            ),
        )
        self.auth = auth
        ctx = ServiceContext(
            storage=storage,
            auth=auth,
            upload_slots=trio.CapacityLimiter(config.max_upload_sessions),
        )
        # Tokens are checked at HEADERS time, before a request decodes or takes a call slot.
        edge = EdgeServer(build_servicers(ctx, config), config=edge_config(config),
                          health=self.health, authenticate=bearer_authenticator(ctx))
        self.edge = edge
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(_serve_then_cancel, edge, nursery.cancel_scope)
            if monitor is not None:
                nursery.start_soon(_watch_key_file, monitor, auth, config.key_poll_interval)
            self.health.set_serving(True)
            nursery.start_soon(_probe_metadata, storage, self.health,
                               config.health_probe_interval)
            log.info("serving on %s port %d", config.host, self.port)
            task_status.started(self.port)
            if self._stopping:  # stop() came while starting: honour it now
                nursery.start_soon(edge.drain)

    async def _shut_down(self, storage: Storage) -> None:
        if self.edge is not None:
            await self.edge.drain()
        self._stopping = True
        await storage.stop(grace=STORAGE_STOP_GRACE)


async def _serve_then_cancel(
    edge: EdgeServer, scope: trio.CancelScope, *, task_status: trio.TaskStatus[int]
) -> None:
    """Run the edge; once it has drained (stopped), end its sibling tasks too."""
    await edge.serve(task_status=task_status)
    scope.cancel()


async def _load_keys(
    config: Config, storage: Storage
) -> tuple[KeyRing, KeyFileMonitor | SharedKeyMonitor | None]:
    """The configured key (nothing to watch); with ``metadata_url``, the ring every node
    shares in PostgreSQL (created if absent; ``admin keys rotate`` changes it for all); else
    the data dir's key file (created if absent). Either comes with a monitor primed with its
    current state."""
    if config.jwt_key is not None:
        return KeyRing.from_secret(config.jwt_key), None
    if config.metadata_url:
        from .storage._postgres import KEYRING_SETTING

        backend: Any = storage.backend
        shared = SharedKeyMonitor(
            load=lambda: backend.load_setting(KEYRING_SETTING),
            load_or_create=lambda make: backend.load_or_create_setting(KEYRING_SETTING, make),
        )
        return await trio.to_thread.run_sync(shared.first), shared
    monitor = KeyFileMonitor(config.data_dir / KEY_FILE_NAME)

    def load() -> KeyRing:
        load_or_create_keyring(monitor.path)
        ring = monitor.poll()
        assert ring is not None  # the first poll always returns the ring
        return ring

    return await trio.to_thread.run_sync(load), monitor


async def _probe_metadata(storage: Storage, health: HealthState, interval: float) -> None:
    """Every ``interval`` seconds (``Schedule.spaced``), one round trip to the metadata store,
    bounded by the same interval: health says ``NOT_SERVING`` while it fails (a node that
    cannot reach PostgreSQL cannot serve), ``SERVING`` again once it answers."""
    driver = Schedule.spaced(interval).driver()
    reachable = True
    while True:
        decision = driver.next(None, now=trio.current_time())
        if isinstance(decision, Done) or not math.isfinite(decision.at):
            return
        await trio.sleep_until(decision.at)
        try:
            with trio.fail_after(interval):
                await storage.ping()
            ok = True
        except (StorageError, trio.TooSlowError) as exc:
            ok = False
            if reachable:
                log.warning("metadata store unreachable; health is NOT_SERVING: %s", exc)
        if ok and not reachable:
            log.info("metadata store reachable again; health is SERVING")
        if ok != reachable:
            health.set_serving(ok)
        reachable = ok


async def _watch_key_file(
    monitor: KeyFileMonitor | SharedKeyMonitor, auth: Authenticator, interval: float
) -> None:
    """Poll the key file (or the shared ring) every ``interval`` seconds
    (``Schedule.spaced``, driven with ``trio.sleep_until``) and hand a changed ring to the
    authenticator. A ring that cannot be read keeps the current keys (logged)."""
    driver = Schedule.spaced(interval).driver()
    while True:
        decision = driver.next(None, now=trio.current_time())
        if isinstance(decision, Done) or not math.isfinite(decision.at):
            return
        await trio.sleep_until(decision.at)
        try:
            ring = await trio.to_thread.run_sync(monitor.poll)
        except (KeyFileError, StorageError) as exc:
            log.error("cannot re-read the JWT keys; keeping the current keys: %s", exc)
            continue
        if ring is not None:
            auth.update_keyring(ring)
            log.info("JWT key ring reloaded (%d key(s))", len(ring.keys))


async def serve(config: Config, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Run an anvil_trio server for ``config`` until cancelled.

    Use as ``port = await nursery.start(serve, config)``; cancel the nursery (or the scope
    around this call) to drain and stop: running calls get ``config.grace_period`` seconds, then
    storage stops in order, then the cancellation propagates.

    Args:
        config: the server's configuration.
        task_status: ``started(port)`` once listening and storage is ready (health
            ``SERVING``).

    Raises:
        StorageFailedError: storage failed while serving (the server drained and stopped).
        StorageError: the data dir cannot be used (before ``started``).
        KeyFileError: the JWT key file cannot be read or created (before ``started``).
        OSError: the address cannot be bound (before ``started``).
    """
    await Server(config).run(task_status=task_status)
