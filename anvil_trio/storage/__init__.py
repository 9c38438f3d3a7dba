"""Storage layer (layer 3): metadata, content-addressed bytes and the façade the RPC layer calls.

Invariants of the layer:

* Exactly one writer of metadata: the metadata actor, started under the storage supervisor.
  Reads go through separate read-only SQLite connections, so they never queue behind writes.
* Bytes are content-addressed (SHA-256) and shared by objects and blobs; a blob file is
  referenced by ``blobs.refcount`` rows and is reclaimed by the reaper once unreferenced.
* An object or blob becomes visible only in the one metadata transaction that records it,
  after its bytes are durable; a failure before that leaves nothing visible.
* A reaper (a supervised actor on a ``Schedule``) removes stale temp files, expired and
  orphan uploads and unreferenced blob files, always deleting blobs through the metadata actor;
  its start-up pass runs before storage reports ready.
* Everything is tenant-scoped: another tenant's buckets, objects and blobs do not exist.
* A full disk never blocks deletes: writes are refused below a free-space floor, and a
  ballast file is released when space runs out anyway (``_space``).

Errors raised here all derive from :class:`StorageError`; the RPC layer maps them to status
codes in one table.
"""

from ._blobs import BlobPin, BlobReader, BlobStore, WrittenBlob
from ._errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    DataDirInUseError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    OutOfRangeError,
    QuotaExceededError,
    StorageError,
    StorageFullError,
    StorageIOError,
    StorageUnavailableError,
)
from ._faults import FaultInjector
from ._lock import DataDirLock
from ._metadata import MIGRATIONS, MetadataWriter, migrate
from ._metadata_actor import MetadataActor
from ._queries import (
    AppInfo,
    BlobInfo,
    BucketInfo,
    MetadataReader,
    ObjectInfo,
    TenantInfo,
    UploadInfo,
)
from ._reaper import ReaperActor, ReapReport
from ._store import (
    CompletedUpload,
    DeleteResult,
    ListObjectsResult,
    ListVersionsResult,
    PutResult,
    Storage,
    StorageConfig,
    UploadState,
)
from ._run import run_storage
from ._space import SpaceStats
from ._validation import (
    PageTokenCodec,
    format_blob_key,
    parse_blob_key,
    validate_bucket_name,
    validate_object_key,
)

__all__ = [
    "MIGRATIONS",
    "AlreadyExistsError",
    "AppInfo",
    "BlobInfo",
    "BlobPin",
    "BlobReader",
    "BlobStore",
    "BucketInfo",
    "ChecksumMismatchError",
    "DataDirInUseError",
    "DataDirLock",
    "CompletedUpload",
    "DeleteResult",
    "FailedPreconditionError",
    "FaultInjector",
    "InvalidArgumentError",
    "ListObjectsResult",
    "ListVersionsResult",
    "MetadataActor",
    "MetadataReader",
    "MetadataWriter",
    "NotFoundError",
    "ObjectInfo",
    "ObjectTooLargeError",
    "OutOfRangeError",
    "PageTokenCodec",
    "PutResult",
    "QuotaExceededError",
    "ReapReport",
    "ReaperActor",
    "SpaceStats",
    "Storage",
    "StorageConfig",
    "StorageError",
    "StorageFullError",
    "StorageIOError",
    "StorageUnavailableError",
    "TenantInfo",
    "UploadInfo",
    "UploadState",
    "WrittenBlob",
    "format_blob_key",
    "migrate",
    "parse_blob_key",
    "run_storage",
    "validate_bucket_name",
    "validate_object_key",
]
