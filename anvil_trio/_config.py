"""Server configuration: one frozen value.

Invariants:
- A ``Config`` is immutable; the CLI and embedders derive variants with ``attrs.evolve``.
- ``Config.from_mapping`` / ``Config.from_toml`` accept exactly the field names below (unknown keys
  are an error, so a typo never silently falls back to a default); durations are seconds.
- Every size is in bytes; every limit is checked here once so the layers below can trust it.
"""

from __future__ import annotations

import pathlib
import tomllib
from typing import Any, Mapping

import attrs

MiB = 1 << 20


def _positive(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


def _not_below_backoff_max(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not value >= instance.token_backoff_max:
        raise ValueError(f"{attribute.name} must be at least token_backoff_max, got {value!r}")


def _metadata_url(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value and not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError("metadata_url must be a postgresql://USER@HOST:PORT/DB URL "
                          "(or absent for SQLite under the data dir)")


def _blob_url(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value and (not value.startswith("s3://") or len(value) <= len("s3://")):
        raise ConfigError("blob_url must be an s3://BUCKET[/PREFIX] URL "
                          "(or absent for files under the data dir)")


def _path(value: Any) -> pathlib.Path:
    return pathlib.Path(value).expanduser()


def _optional_path(value: Any) -> pathlib.Path | None:
    return None if value is None else _path(value)


class ConfigError(ValueError):
    """A configuration file or mapping is malformed."""


@attrs.frozen(kw_only=True)
class Config:
    """Everything ``serve()`` needs. All fields have defaults that run a local server.

    Attributes:
        data_dir: SQLite database, blobs, keys and upload files live under it (unused when
            both ``metadata_url`` and ``blob_url`` are set).
        metadata_url: ``postgresql://USER@HOST:PORT/DB``: metadata (and the JWT keys) in
            PostgreSQL, shared by every node; empty: SQLite under ``data_dir``.
        blob_url: ``s3://BUCKET[/PREFIX]``: bytes in an S3-compatible bucket shared by every
            node; empty: files under ``data_dir``. Credentials come from the standard AWS
            environment variables or shared credentials file, never from this config.
        s3_endpoint: the S3 endpoint URL (SeaweedFS, MinIO, Ceph RGW); empty: AWS.
        s3_region: the S3 region.
        health_probe_interval: seconds between the checks that the metadata store answers;
            health reports ``NOT_SERVING`` while it does not.
        host, port: where to listen; port 0 picks a free port (reported by ``serve``).
        reuse_port: set SO_REUSEPORT on the listening socket (off by default).
        tls_cert, tls_key: PEM files; both set turns TLS on (ALPN h2).
        tls_client_ca: PEM bundle; when set, clients must present a certificate it signed (mTLS).
        max_message_bytes: largest request message accepted (at least 4 MiB).
        max_concurrent_calls: calls served at once; more get RESOURCE_EXHAUSTED.
        max_upload_sessions: concurrent Upload streams; more get RESOURCE_EXHAUSTED.
        upload_idle_timeout: seconds an Upload stream may wait for its next message; past it
            the call ends with DEADLINE_EXCEEDED and frees its upload slot (what was received
            is kept durably and the upload stays resumable).
        grace_period: seconds in-flight calls get to finish when the server drains.
        max_object_bytes: largest object or blob; None means no limit.
        upload_expiry: seconds an unfinished upload stays resumable after its last activity.
        reaper_interval: seconds between reaper passes.
        temp_max_age: seconds after which what an unfinished write left (part files; with
            ``blob_url``, unfinished multipart uploads and unreferenced objects, which another
            node may still be writing) counts as abandoned and is removed by the reaper.
        direct_io: write new blob files past the page cache (``O_DIRECT``) where the file
            system allows it: far less CPU per byte for large uploads; the first read of a
            fresh blob then comes from the disk.
        ballast_bytes: size of ``data_dir/ballast``, a file of real blocks released when the
            disk runs out, so deletes still have room to run; recreated once there is room
            again. None: ``min(16 MiB, 1% of the file system)``; 0: no ballast.
        min_free_bytes: free space kept on the data dir's file system: writes that add bytes
            (PutObject, Upload, CreateBucket) get RESOURCE_EXHAUSTED below it; reads and
            deletes never do. None: ``min(128 MiB, 2% of the file system)``; 0: no floor.
        token_lifetime: seconds an access token is valid.
        token_leeway: seconds of clock skew tolerated on exp/nbf/iat.
        token_hash_concurrency: client-secret checks (scrypt, ~60 ms of CPU and 16 MiB each)
            run at once by ``GetAccessToken``.
        token_hash_wait: seconds a ``GetAccessToken`` call may wait for a free check slot;
            past it RESOURCE_EXHAUSTED ("too many sign-in attempts at once").
        token_free_failures: consecutive failed sign-ins of one client id before it backs off.
            After the n-th failure the id is refused (RESOURCE_EXHAUSTED, no scrypt) for
            ``0`` seconds while n <= free, then ``min(base * 2**(n - free - 1), max)`` seconds;
            a success clears it (see ``anvil_trio.auth._throttle``).
        token_peer_free_failures: the same for all failures from one address (IPv6: one /64);
            an address's backoff refuses only client ids that have failures on record, never
            an id with a clean record.
        token_backoff_base, token_backoff_max: ``base`` and ``max`` of that formula, seconds.
        token_failures_tracked: most client ids (and, separately, addresses) whose failures
            are remembered; past it the oldest are forgotten.
        token_failures_forget: seconds after its last failure at which a client id's or an
            address's failures are forgotten (at least ``token_backoff_max``).
        jwt_issuer: the ``iss`` claim of issued tokens.
        jwt_key: an HS256 signing key; None generates one into ``data_dir`` (mode 0600).
        key_poll_interval: seconds between checks of the key file in ``data_dir`` for keys the
            admin CLI rotated (unused when ``jwt_key`` is set).
        preface_timeout: seconds a new connection has (after any TLS handshake) to send the
            HTTP/2 client preface and its first SETTINGS; past it the connection is closed.
        idle_timeout: seconds a connection may stay without open calls before the server sends
            GOAWAY(NO_ERROR) and closes it.
        keepalive_interval: seconds without receiving anything on a connection before the
            server sends an HTTP/2 PING.
        keepalive_timeout: seconds after that PING for anything to arrive before the
            connection is taken for dead and closed. ``inf`` disables any of these timers.
        max_connections: connections open at once; ones accepted past it are closed at once.
        max_header_list_bytes: SETTINGS_MAX_HEADER_LIST_SIZE advertised and enforced (frames
            are at most 16 KiB; a header block past the limit ends the connection with
            GOAWAY(ENHANCE_YOUR_CALM)).
        stream_reset_rate: live streams one connection may have reset per second (bursts of
            10x); past it GOAWAY(ENHANCE_YOUR_CALM) (Rapid Reset).
        control_frame_rate: PING/SETTINGS, PRIORITY and empty DATA frames one connection may
            send per second, each kind in bursts of 10x; past it GOAWAY(ENHANCE_YOUR_CALM).
        connection_call_share: share of ``max_concurrent_calls`` one connection may hold; its
            calls past it get RESOURCE_EXHAUSTED.
        health_call_slots: health checks served at once, apart from the data calls' slots.
        stream_stall_timeout: seconds a call may wait for its client without progress (no
            window to send into, no request data, no room to write) before it ends
            (DEADLINE_EXCEEDED); Upload streams use ``upload_idle_timeout`` instead.
        dev_mode: put exception details in INTERNAL errors (never in production).
    """

    data_dir: pathlib.Path = attrs.field(default=pathlib.Path("anvil-data"), converter=_path)
    metadata_url: str = attrs.field(default="", validator=_metadata_url)
    blob_url: str = attrs.field(default="", validator=_blob_url)
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    health_probe_interval: float = attrs.field(default=2.0, validator=_positive)
    host: str = "127.0.0.1"
    port: int = attrs.field(default=50051, validator=attrs.validators.and_(
        attrs.validators.ge(0), attrs.validators.le(65535)))
    reuse_port: bool = False
    tls_cert: pathlib.Path | None = attrs.field(default=None, converter=_optional_path)
    tls_key: pathlib.Path | None = attrs.field(default=None, converter=_optional_path)
    tls_client_ca: pathlib.Path | None = attrs.field(default=None, converter=_optional_path)
    max_message_bytes: int = attrs.field(default=4 * MiB, validator=attrs.validators.ge(4 * MiB))
    max_concurrent_calls: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    max_upload_sessions: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    upload_idle_timeout: float = attrs.field(default=300.0, validator=_positive)
    grace_period: float = attrs.field(default=10.0, validator=_non_negative)
    max_object_bytes: int | None = None
    upload_expiry: float = attrs.field(default=24 * 3600.0, validator=_positive)
    reaper_interval: float = attrs.field(default=60.0, validator=_positive)
    temp_max_age: float = attrs.field(default=3600.0, validator=_non_negative)
    direct_io: bool = True
    ballast_bytes: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0)))
    min_free_bytes: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0)))
    token_lifetime: float = attrs.field(default=15 * 60.0, validator=_positive)
    token_leeway: float = attrs.field(default=30.0, validator=_non_negative)
    token_hash_concurrency: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    token_hash_wait: float = attrs.field(default=1.0, validator=_non_negative)
    token_free_failures: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    token_peer_free_failures: int = attrs.field(default=10, validator=attrs.validators.ge(0))
    token_backoff_base: float = attrs.field(default=0.5, validator=_positive)
    token_backoff_max: float = attrs.field(default=30.0, validator=_positive)
    token_failures_tracked: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
    token_failures_forget: float = attrs.field(default=900.0, validator=_not_below_backoff_max)
    jwt_issuer: str = "anvil-trio"
    jwt_key: str | None = None
    key_poll_interval: float = attrs.field(default=5.0, validator=_positive)
    preface_timeout: float = attrs.field(default=10.0, validator=_positive)
    idle_timeout: float = attrs.field(default=300.0, validator=_positive)
    keepalive_interval: float = attrs.field(default=60.0, validator=_positive)
    keepalive_timeout: float = attrs.field(default=20.0, validator=_positive)
    max_connections: int = attrs.field(default=1024, validator=attrs.validators.ge(1))
    max_header_list_bytes: int = attrs.field(default=16 << 10, validator=attrs.validators.ge(4096))
    stream_reset_rate: float = attrs.field(default=200.0, validator=attrs.validators.ge(1))
    control_frame_rate: float = attrs.field(default=100.0, validator=attrs.validators.ge(1))
    connection_call_share: float = attrs.field(
        default=0.5, validator=[attrs.validators.gt(0), attrs.validators.le(1)])
    health_call_slots: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    stream_stall_timeout: float = attrs.field(default=60.0, validator=_positive)
    dev_mode: bool = False

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key")
        if self.max_object_bytes is not None and self.max_object_bytes < 0:
            raise ConfigError("max_object_bytes must not be negative")

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self.tls_cert is not None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "Config":
        """Build a config from a mapping of field names (a ``listen = "HOST:PORT"`` key is also
        accepted).

        Raises:
            ConfigError: an unknown key or a value that does not validate.
        """
        values = dict(mapping)
        if "listen" in values:
            values["host"], values["port"] = parse_listen(values.pop("listen"))
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_toml(cls, path: str | pathlib.Path) -> "Config":
        """Load a TOML file; its keys may sit at the top level or under ``[server]``.

        Relative ``data_dir`` and TLS paths are taken relative to the file's folder.

        Raises:
            ConfigError: unreadable TOML, unknown keys or invalid values.
        """
        path = pathlib.Path(path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        values = dict(document.get("server", document))
        for key in ("data_dir", "tls_cert", "tls_key", "tls_client_ca"):
            if isinstance(values.get(key), str):
                values[key] = (path.parent / pathlib.Path(values[key]).expanduser())
        return cls.from_mapping(values)


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6).

    Raises:
        ConfigError: no port, or a port that is not a number in 0..65535.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"listen address must be HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"port must be a number, got {port!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"port out of range: {number}")
    return host, number
