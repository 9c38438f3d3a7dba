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
        data_dir: SQLite database, blobs, keys and upload files live under it.
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
        direct_io: write new blob files past the page cache (``O_DIRECT``) where the file
            system allows it: far less CPU per byte for large uploads; the first read of a
            fresh blob then comes from the disk.
        token_lifetime: seconds an access token is valid.
        token_leeway: seconds of clock skew tolerated on exp/nbf/iat.
        jwt_issuer: the ``iss`` claim of issued tokens.
        jwt_key: an HS256 signing key; None generates one into ``data_dir`` (mode 0600).
        key_poll_interval: seconds between checks of the key file in ``data_dir`` for keys the
            admin CLI rotated (unused when ``jwt_key`` is set).
        dev_mode: put exception details in INTERNAL errors (never in production).
    """

    data_dir: pathlib.Path = attrs.field(default=pathlib.Path("anvil-data"), converter=_path)
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
    direct_io: bool = True
    token_lifetime: float = attrs.field(default=15 * 60.0, validator=_positive)
    token_leeway: float = attrs.field(default=30.0, validator=_non_negative)
    jwt_issuer: str = "anvil-trio"
    jwt_key: str | None = None
    key_poll_interval: float = attrs.field(default=5.0, validator=_positive)
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
