"""Choosing the implementations of the two seams (``_seams``) from a storage configuration.

* ``metadata_url`` absent: SQLite at ``data_dir/meta.sqlite3`` (:class:`SqliteBackend`);
  ``postgresql://...``: PostgreSQL (``_postgres``, imported only then: psycopg is needed only
  past one machine).
* ``blob_url`` absent: files under ``data_dir`` (:class:`~._blobs.BlobStore`);
  ``s3://BUCKET[/PREFIX]``: an S3-compatible bucket (``_s3``, imported only then), at
  ``s3_endpoint`` in ``s3_region``, with credentials from the standard AWS environment.
* Anything local (SQLite or files) means the data dir is this process's alone: it is locked
  (``_lock``) and its disk is metered (``_space``). With both remote, a node keeps nothing on
  local disk and any number of nodes may share the configuration.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import StorageError
from ._metadata import MetadataWriter
from ._queries import MetadataReader, read_setting
from ._seams import ByteStore, MetadataBackend

if TYPE_CHECKING:
    from ._faults import FaultInjector
    from ._store import StorageConfig

__all__ = [
    "DB_NAME",
    "SqliteBackend",
    "is_metadata_url",
    "open_byte_store",
    "open_metadata_backend",
    "redact_url",
    "uses_data_dir",
]

DB_NAME = "meta.sqlite3"


@attrs.frozen
class SqliteBackend:
    """The embedded metadata store: one SQLite file (WAL), one writer, read-only readers."""

    path: pathlib.Path
    shared = False

    def prepare(self) -> bytes:
        """Create or migrate the database (blocking); returns the page-token secret."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = MetadataWriter(self.path)
        try:
            return read_setting(writer.conn, "page_token_secret")
        finally:
            writer.close()

    def open_writer(self) -> MetadataWriter:
        return MetadataWriter(self.path)

    def open_reader(self, *, max_connections: int) -> MetadataReader:
        return MetadataReader(self.path, max_connections=max_connections)

    def reaper_lease(self) -> None:
        """None: one process owns the data dir, so its reaper needs no lease."""
        return None


def is_metadata_url(where: object) -> bool:
    """Whether ``where`` (a data dir, or a URL given instead of one) names PostgreSQL."""
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` with any password (in the authority or a ``password=`` parameter) as ``***``,
    for logs, messages and reprs (``"<unparsable URL>"`` if it cannot be split)."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hosts}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{k}={'***' if k.lower() == 'password' else urllib.parse.quote(v)}" for k, v in pairs
        )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def uses_data_dir(config: StorageConfig) -> bool:
    """Whether either store lives under the data dir (then it is locked and metered)."""
    return not config.metadata_url or not config.blob_url


def open_metadata_backend(config: StorageConfig) -> MetadataBackend:
    """The metadata backend ``config`` names.

    Raises:
        StorageError: ``metadata_url`` is not a PostgreSQL URL.
    """
    url = config.metadata_url
    if not url:
        return SqliteBackend(config.data_dir / DB_NAME)
    if not url.startswith(("postgresql://", "postgres://")):
        raise StorageError("metadata_url must be a postgresql:// URL (or absent for SQLite)")
    from ._postgres import PostgresBackend

    try:
        return PostgresBackend(url)
    except ValueError as exc:
        raise StorageError(f"metadata_url: {exc}") from exc


def open_byte_store(
    config: StorageConfig, *, fault_injector: FaultInjector | None = None, **kwargs: Any
) -> ByteStore:
    """The byte store ``config`` names (``kwargs`` go to the files store only).

    Raises:
        StorageError: ``blob_url`` is not an ``s3://BUCKET[/PREFIX]`` URL.
    """
    url = config.blob_url
    if not url:
        from ._blobs import BlobStore

        return BlobStore(config.data_dir, fsync=config.fsync, direct_io=config.direct_io,
                         fault_injector=fault_injector, **kwargs)
    from ._s3 import S3ByteStore, parse_blob_url

    try:
        bucket, prefix = parse_blob_url(url)
    except ValueError as exc:
        raise StorageError(f"blob_url: {exc}") from exc
    return S3ByteStore(bucket, prefix, endpoint_url=config.s3_endpoint or None,
                       region=config.s3_region or None)
