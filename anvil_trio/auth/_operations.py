"""Concrete resources and the scope each RPC operation needs (API.md's operation table).

Invariants:

* A concrete resource is built only from a *valid* bucket name, object key or blob key, so an
  untrusted name can never reshape the resource string (a bucket name has no ``/``, a blob key
  is ``sha256:`` + 64 hex). Anything else raises :class:`InvalidResourceError`
  (INVALID_ARGUMENT), which is what the client would get from storage anyway; and since
  INVALID_ARGUMENT outranks PERMISSION_DENIED, checking names here keeps the order of
  API.md's status codes.
* The scopes returned are *literal* (their resource text is compared character for character)
  except for the two whole-store blob operations, which need the wildcard ``write:blob:*`` and
  ``list:blob:*``.

=====================  ==========================
operation              scope it needs
=====================  ==========================
CreateBucket           ``write:bucket:NAME``
DeleteBucket           ``delete:bucket:NAME``
ListBuckets            ``list:bucket:NAME`` per bucket returned (a filter, not a gate)
ListObjects            ``list:bucket:NAME``
ListObjectVersions     ``list:bucket:NAME``
PutObject              ``write:bucket:NAME/KEY``
GetObject, HeadObject  ``read:bucket:NAME/KEY``
DeleteObject           ``delete:bucket:NAME/KEY``
Upload                 ``write:blob:*``
GetBlob, StatBlob      ``read:blob:KEY``
DeleteBlob             ``delete:blob:KEY``
ListBlobs              ``list:blob:*``
=====================  ==========================
"""

from __future__ import annotations

from types import MappingProxyType

from ._errors import InvalidResourceError
from ._scopes import Scope, is_valid_blob_key, is_valid_bucket_name, is_valid_object_key

__all__ = [
    "OPERATIONS",
    "blob_resource",
    "bucket_resource",
    "object_resource",
    "required_scope_for",
]

_BUCKET, _OBJECT, _BLOB, _ALL_BLOBS = "bucket", "object", "blob", "all blobs"

#: operation name -> (action, what it acts on); see the module docstring.
OPERATIONS = MappingProxyType(
    {
        "CreateBucket": ("write", _BUCKET),
        "DeleteBucket": ("delete", _BUCKET),
        "ListBuckets": ("list", _BUCKET),
        "ListObjects": ("list", _BUCKET),
        "ListObjectVersions": ("list", _BUCKET),
        "PutObject": ("write", _OBJECT),
        "GetObject": ("read", _OBJECT),
        "HeadObject": ("read", _OBJECT),
        "DeleteObject": ("delete", _OBJECT),
        "Upload": ("write", _ALL_BLOBS),
        "GetBlob": ("read", _BLOB),
        "StatBlob": ("read", _BLOB),
        "DeleteBlob": ("delete", _BLOB),
        "ListBlobs": ("list", _ALL_BLOBS),
    }
)


def bucket_resource(bucket: str) -> str:
    """The resource ``bucket:NAME`` for a bucket itself.

    Raises:
        InvalidResourceError: ``bucket`` is not a valid bucket name.
    """
    if not is_valid_bucket_name(bucket):
        raise InvalidResourceError(f"invalid bucket name {bucket!r}")
    return f"bucket:{bucket}"


def object_resource(bucket: str, key: str) -> str:
    """The resource ``bucket:NAME/KEY`` for one object; the key is kept verbatim (it may hold
    ``*``, ``:``, ``/`` or whitespace and is still compared literally).

    Raises:
        InvalidResourceError: ``bucket`` is not a valid bucket name or ``key`` is not a valid
            object key (1-1024 bytes of UTF-8, no NUL).
    """
    if not is_valid_object_key(key):
        raise InvalidResourceError("invalid object key")
    return f"{bucket_resource(bucket)}/{key}"


def blob_resource(blob_key: str | bytes) -> str:
    """The resource ``blob:KEY`` for one blob.

    Args:
        blob_key: ``sha256:<64 lowercase hex>``, as text or as the ASCII bytes of the wire.

    Raises:
        InvalidResourceError: the key is not of that form.
    """
    if isinstance(blob_key, (bytes, bytearray)):
        try:
            blob_key = bytes(blob_key).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidResourceError("invalid blob key") from None
    if not is_valid_blob_key(blob_key):
        raise InvalidResourceError("invalid blob key")
    return f"blob:{blob_key}"


def required_scope_for(
    operation: str,
    *,
    bucket: str | None = None,
    key: str | None = None,
    blob_key: str | bytes | None = None,
) -> Scope:
    """The scope a token must cover to run ``operation`` (API.md's table).

    For ``ListBuckets`` call it once per bucket (with ``bucket=``) and return only the buckets
    whose scope the token covers.

    Args:
        operation: an RPC name from :data:`OPERATIONS`, e.g. ``"GetObject"``.
        bucket: the bucket name, for bucket and object operations.
        key: the object key, for object operations.
        blob_key: the blob key, for ``GetBlob``, ``StatBlob`` and ``DeleteBlob``.

    Returns:
        A literal :class:`Scope` (or ``write:blob:*`` / ``list:blob:*``); test it with
        ``Grants.allows`` or ``Principal.require_scope``.

    Raises:
        InvalidResourceError: a name or key is invalid (maps to INVALID_ARGUMENT).
        TypeError: ``operation`` is unknown, or an argument it needs is missing or one it does
            not take is given (a programming error).
    """
    try:
        action, target = OPERATIONS[operation]
    except KeyError:
        raise TypeError(f"unknown operation {operation!r}") from None
    given = {
        name
        for name, value in (("bucket", bucket), ("key", key), ("blob_key", blob_key))
        if value is not None
    }
    needed = {
        _BUCKET: {"bucket"},
        _OBJECT: {"bucket", "key"},
        _BLOB: {"blob_key"},
        _ALL_BLOBS: set(),
    }[target]
    if given != needed:
        raise TypeError(f"{operation} takes {sorted(needed)}, got {sorted(given)}")
    if target == _BUCKET:
        assert bucket is not None
        return Scope(action, bucket_resource(bucket))
    if target == _OBJECT:
        assert bucket is not None and key is not None
        return Scope(action, object_resource(bucket, key))
    if target == _BLOB:
        assert blob_key is not None
        return Scope(action, blob_resource(blob_key))
    return Scope(action, "blob:", wildcard=True)
